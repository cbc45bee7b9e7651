//! OpenTelemetry traces, made with the opentelemetry API in the layers that know what
//! happened: one `SERVER` span per request (observe), one `CLIENT` span per upstream attempt
//! (retry), a span per wait on a rate-limit token (rate limit, coalescing), and one `CLIENT`
//! span of its own trace for a merged call (coalescing), linked both ways with its callers'.
//!
//! Without `[tracing]` (and no `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing here exists: the
//! observe layer holds `None` and the request path does no more than test it. A request that
//! is not sampled carries nothing either; only a sampled one carries a [`Traced`] extension,
//! which the lower layers look for.
//!
//! No span carries the secret key, a UserSig, the upstream query, a body or a header value.

pub mod export;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanContext, SpanKind, TraceContextExt, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span, SpanExporter as _};
use opentelemetry_sdk::Resource;

use crate::config::TraceSettings;
use crate::metrics::Metrics;

/// Links a merged call's span takes, at most (the rest of its callers are counted only).
pub const MAX_LINKS: usize = 128;

/// What can stop tracing from starting.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("tracing: {0}")]
    Client(#[from] crate::upstream::ClientSetupError),
    #[error("tracing: started outside the runtime")]
    NoRuntime,
    /// The exporter refused its settings (the endpoint, or an `OTEL_EXPORTER_OTLP_*`
    /// variable it reads itself, such as a compression it was not built with).
    #[error("tracing: the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The gateway's tracer: where spans are made, sampled and queued for export.
pub struct Tracing {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// Kept so that the processor lives as long as the gateway.
    _provider: SdkTracerProvider,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Starts tracing: spawns the task that sends spans, which ends once this tracer and
    /// every request holding it are gone. Must be called within the runtime.
    pub fn start(
        settings: &TraceSettings,
        metrics: &Metrics,
    ) -> Result<Arc<Tracing>, TraceSetupError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TraceSetupError::NoRuntime)?;
        let client = crate::upstream::build_client(None, std::time::Duration::from_secs(2), 2)?;
        // Headers (OTEL_EXPORTER_OTLP_HEADERS) are read by the exporter itself.
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(export::CollectorClient { client })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.clone())
            .with_timeout(export::EXPORT_TIMEOUT)
            // A failed batch is dropped and counted: retrying would hold the queue longer.
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()?;
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let dropped = metrics.trace_spans_dropped().clone();
        let (processor, queue) = export::QueueProcessor::new(dropped.clone());
        runtime.spawn(export::send_batches(exporter, queue, dropped));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(export::sampler(settings.sample_ratio))
            .with_max_links_per_span(MAX_LINKS as u32)
            .with_resource(resource)
            .build();
        Ok(Arc::new(Tracing {
            tracer: provider.tracer("chat-gateway"),
            propagator: TraceContextPropagator::new(),
            _provider: provider,
        }))
    }

    /// The `SERVER` span of one request, the child of the caller's `traceparent` if it sent
    /// one (named when it ends, after its API: a name never holds a caller's path). The returned [`Traced`] (for the request's extensions) exists only when the span
    /// is sampled.
    pub fn request_span(
        self: &Arc<Self>,
        headers: &HeaderMap,
        method: &http::Method,
        path: &str,
    ) -> (Span, Option<Traced>) {
        let parent = self
            .propagator
            .extract(&opentelemetry_http::HeaderExtractor(headers));
        let mut span = self.tracer.build_with_context(
            SpanBuilder::from_name("request").with_kind(SpanKind::Server),
            &parent,
        );
        if !span.span_context().is_sampled() {
            return (span, None);
        }
        span.set_attribute(KeyValue::new("http.request.method", method.to_string()));
        span.set_attribute(KeyValue::new("url.path", path.to_string()));
        let traced = Traced {
            tracing: self.clone(),
            cx: Context::new().with_remote_span_context(span.span_context().clone()),
            late: Arc::new(Mutex::new(Late::default())),
        };
        (span, Some(traced))
    }

    /// The `CLIENT` span of a call merged from `n` callers, of which `callers` are sampled:
    /// the root of a trace of its own, sampled when any caller is, linked to each sampled
    /// caller's span (up to [`MAX_LINKS`]); each of their spans is told to link back.
    pub fn batch_span(
        self: &Arc<Self>,
        api: &str,
        callers: &[&Traced],
        n: usize,
        started: SystemTime,
    ) -> Traced {
        let links = callers
            .iter()
            .take(MAX_LINKS)
            .map(|c| Link::with_context(c.span_context()))
            .collect();
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(format!("coalesced {api}"))
                .with_kind(SpanKind::Client)
                .with_start_time(started)
                .with_links(links)
                .with_attributes([
                    KeyValue::new("chat.api", api.to_string()),
                    KeyValue::new("chat.batch.callers", n as i64),
                ]),
            &Context::new(),
        );
        let batch = span.span_context().clone();
        for c in callers {
            c.link_back(batch.clone());
        }
        let cx = Context::new().with_span(span);
        Traced {
            tracing: self.clone(),
            cx,
            late: Arc::new(Mutex::new(Late::default())),
        }
    }
}

/// Request extension of a sampled request: its span's context (the parent of the spans
/// made below it), and what lower layers learn for its span after the fact.
#[derive(Clone)]
pub struct Traced {
    tracing: Arc<Tracing>,
    cx: Context,
    late: Arc<Mutex<Late>>,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("span", &self.span_context())
            .finish_non_exhaustive()
    }
}

/// What the request's span gets when it ends: attributes and links added below it.
#[derive(Default)]
struct Late {
    attributes: Vec<KeyValue>,
    links: Vec<SpanContext>,
}

impl Traced {
    /// The context of the span this request's spans are children of.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// A span below this request's, started now (or at `started`).
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        started: Option<SystemTime>,
    ) -> Span {
        let mut builder = SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_attributes(attributes);
        builder.start_time = started;
        self.tracing.tracer.build_with_context(builder, &self.cx)
    }

    /// An attribute for the request's span, learnt below it.
    pub fn annotate(&self, attribute: KeyValue) {
        if let Ok(mut late) = self.late.lock() {
            late.attributes.push(attribute);
        }
    }

    /// A link from the request's span (to the merged call that carried it).
    pub fn link_back(&self, to: SpanContext) {
        if let Ok(mut late) = self.late.lock() {
            late.links.push(to);
        }
    }

    /// Ends a merged call's own span (the one [`Tracing::batch_span`] made).
    pub fn end_batch(&self, attributes: Vec<KeyValue>) {
        let span = self.cx.span();
        span.set_attributes(attributes);
        span.end();
    }

    /// Gives `span` (the request's own) what was learnt below it.
    pub fn settle(&self, span: &mut Span) {
        let Ok(mut late) = self.late.lock() else {
            return;
        };
        for attribute in late.attributes.drain(..) {
            span.set_attribute(attribute);
        }
        for link in late.links.drain(..) {
            span.add_link(link, Vec::new());
        }
    }

    /// The trace id as logs show it (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.span_context().trace_id().to_string()
    }

    pub fn tracing(&self) -> &Arc<Tracing> {
        &self.tracing
    }
}

/// The `CLIENT` span of one upstream attempt.
pub struct AttemptSpan(Span);

impl AttemptSpan {
    /// Starts attempt `n` (from 1) to `base` (`https://host[:port]`), below `traced`.
    pub fn start(traced: &Traced, base: &str, n: i64, failover: bool) -> AttemptSpan {
        let uri = base.parse::<http::Uri>().ok();
        let host = uri
            .as_ref()
            .and_then(|u| u.host())
            .unwrap_or("-")
            .to_string();
        let mut attributes = vec![
            KeyValue::new("server.address", host),
            KeyValue::new("chat.attempt", n),
        ];
        if let Some(port) = uri.as_ref().and_then(http::Uri::port_u16) {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if failover {
            attributes.push(KeyValue::new("chat.failover", true));
        }
        AttemptSpan(traced.child("upstream attempt", SpanKind::Client, attributes, None))
    }

    /// Ends it with what the attempt got: the answer's status and ErrorCode, or the reason
    /// of the failure (never its text).
    pub fn end(
        mut self,
        result: &Result<crate::exchange::GatewayResponse, crate::error::GatewayError>,
    ) {
        let span = &mut self.0;
        match result {
            Ok(response) => {
                let status = i64::from(response.status().as_u16());
                span.set_attribute(KeyValue::new("http.response.status_code", status));
                let report = response
                    .extensions()
                    .get::<crate::exchange::UpstreamReport>();
                if let Some(code) = report.and_then(|r| r.error_code) {
                    span.set_attribute(KeyValue::new("chat.error_code", code));
                }
            }
            Err(e) => {
                span.set_attribute(KeyValue::new("error.type", e.reason().as_str()));
                span.set_status(opentelemetry::trace::Status::error(e.reason().as_str()));
            }
        }
        span.end();
    }
}
