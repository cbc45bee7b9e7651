//! Observe: the outermost layer. It gives each request an id, and when the final answer is
//! known (rejections included) records the metrics and writes the one log event per request.
//! Never logs a URI with its query, a body, or a header value.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, Request};
use opentelemetry::trace::Span as _;
use opentelemetry::KeyValue;
use tower::{Layer, Service};

use crate::api::{ApiTable, Label};
use crate::envelope::{Reason, RejectionCode, REJECTED_HEADER};
use crate::exchange::{GatewayResponse, RequestId, UpstreamReport};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, Outcome};
use crate::traces::{Traced, Tracing};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    table: Arc<ApiTable>,
    /// Tells a request the gateway cut at the end of the shutdown grace from one whose caller
    /// hung up.
    lifecycle: Arc<Lifecycle>,
    /// Request ids are `{prefix}-{counter}`: unique within the process, and across restarts
    /// thanks to the random prefix.
    prefix: u32,
    next: AtomicU64,
    /// `None`: no traces, and nothing more to do per request.
    tracing: Option<Arc<Tracing>>,
}

impl ObserveLayer {
    pub fn new(
        metrics: Metrics,
        table: Arc<ApiTable>,
        lifecycle: Arc<Lifecycle>,
        tracing: Option<Arc<Tracing>>,
    ) -> Self {
        ObserveLayer {
            shared: Arc::new(Shared {
                metrics,
                table,
                lifecycle,
                prefix: rand::random(),
                next: AtomicU64::new(1),
                tracing,
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = std::convert::Infallible>,
{
    type Response = GatewayResponse;
    type Error = std::convert::Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let api = self.shared.table.label(req.uri().path());
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::new(self.shared.prefix, n);
        req.extensions_mut().insert(id.clone());
        let trace = match &self.shared.tracing {
            Some(tracing) => RequestTrace::start(tracing, &mut req, &id),
            None => None,
        };
        let inner = match &trace {
            // Log events of a traced request carry its trace id.
            Some(t) => t.log_span.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ObserveFuture {
            inner,
            started,
            api,
            id: Some(id),
            trace,
            shared: self.shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// When dropped before its answer, it still records the request, as `client_closed` (the
    /// caller hung up) or `shutdown` (the gateway cut it when the grace period was over): an
    /// `Increase` in flight may have been applied, so it must leave a trace.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        api: Label,
        id: Option<RequestId>,
        trace: Option<Box<RequestTrace>>,
        shared: Arc<Shared>,
    }

    impl<F> PinnedDrop for ObserveFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(id) = this.id.take() {
                let elapsed = this.started.elapsed();
                let (outcome, message) = if this.shared.lifecycle.is_cutting() {
                    (Outcome::Shutdown, "cut by the gateway: the shutdown grace period was over")
                } else {
                    (Outcome::ClientClosed, "the caller closed the connection before the answer")
                };
                let api = this.shared.table.settle(this.api);
                api.metrics(&this.shared.metrics)
                    .unanswered(outcome, elapsed.as_secs_f64());
                let trace_id = this.trace.take().map(|t| t.end(&api.name, outcome, None));
                tracing::info!(
                    target: "chat_gateway::access",
                    request_id = id.as_str(),
                    api = &*api.name,
                    outcome = outcome.as_str(),
                    trace_id = trace_id.as_deref(),
                    duration_us = elapsed.as_micros() as u64,
                    "{message}"
                );
            }
        }
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<GatewayResponse, std::convert::Infallible>>,
{
    type Output = Result<GatewayResponse, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let entered = this.trace.as_ref().map(|t| t.log_span.enter());
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        drop(entered);
        let elapsed = this.started.elapsed();
        let report = response.extensions().get::<UpstreamReport>().copied();
        let rejected = response
            .headers()
            .get(REJECTED_HEADER)
            .and_then(|v| Reason::from_header(v.as_bytes()));
        let outcome = match (rejected, report) {
            (Some(reason), _) => Outcome::Rejected(reason),
            (None, Some(r)) if r.error_code == Some(0) && response.status().is_success() => {
                Outcome::Ok
            }
            _ => Outcome::UpstreamError,
        };
        let upstream = report.map(|r| r.elapsed).unwrap_or_default();
        let overhead = elapsed.saturating_sub(upstream);
        let api = this.shared.table.settle(this.api);
        api.metrics(&this.shared.metrics).request(
            outcome,
            elapsed.as_secs_f64(),
            overhead.as_secs_f64(),
        );
        let id = this.id.take();
        let error_code = report.and_then(|r| r.error_code);
        let trace_id = this.trace.take().map(|t| {
            // The span's code: Tencent's, or the gateway's own when it answered itself.
            let own = response
                .extensions()
                .get::<RejectionCode>()
                .map(|c| i64::from(c.0));
            t.end(
                &api.name,
                outcome,
                Some((response.status().as_u16(), error_code.or(own))),
            )
        });
        tracing::info!(
            target: "chat_gateway::access",
            request_id = id.as_ref().map_or("-", RequestId::as_str),
            api = &*api.name,
            status = response.status().as_u16(),
            error_code,
            outcome = outcome.as_str(),
            trace_id = trace_id.as_deref(),
            duration_us = elapsed.as_micros() as u64,
            upstream_us = upstream.as_micros() as u64,
        );
        if let Some(id) = id {
            response
                .headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), id.0);
        }
        Poll::Ready(Ok(response))
    }
}

/// The `SERVER` span of a sampled request, and the log span that puts its trace id on the
/// request's log events.
pub struct RequestTrace {
    span: opentelemetry_sdk::trace::Span,
    method: http::Method,
    traced: Traced,
    log_span: tracing::Span,
}

impl RequestTrace {
    /// Starts the request's span; `None` when it is not sampled (then nothing is kept, and
    /// the layers below see no [`Traced`]).
    fn start<B>(tracing: &Arc<Tracing>, req: &mut Request<B>, id: &RequestId) -> Option<Box<Self>> {
        let (mut span, traced) =
            tracing.request_span(req.headers(), req.method(), req.uri().path());
        let traced = traced?;
        span.set_attribute(KeyValue::new("chat.request_id", id.as_str().to_string()));
        req.extensions_mut().insert(traced.clone());
        let log_span = tracing::info_span!("request", trace_id = %traced.trace_id());
        Some(Box::new(RequestTrace {
            span,
            method: req.method().clone(),
            traced,
            log_span,
        }))
    }

    /// Ends the span with what the answer was (`None`: there was none); returns the trace id
    /// for the access log.
    fn end(mut self, api: &str, outcome: Outcome, answer: Option<(u16, Option<i64>)>) -> String {
        let span = &mut self.span;
        span.update_name(format!("{} {api}", self.method));
        span.set_attribute(KeyValue::new("chat.api", api.to_string()));
        span.set_attribute(KeyValue::new("chat.outcome", outcome.as_str()));
        if let Some((status, error_code)) = answer {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if let Some(code) = error_code {
                span.set_attribute(KeyValue::new("chat.error_code", code));
            }
        }
        self.traced.settle(span);
        span.end();
        self.traced.trace_id()
    }
}
