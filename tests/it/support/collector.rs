//! A test OTLP/HTTP collector: accepts `POST /v1/traces`, keeps each body as it came (for
//! searching the raw bytes) and decodes the spans with `opentelemetry-proto`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::*;

pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;

pub struct Collector {
    upstream: RecordingUpstream,
}

/// A collector that answers each export after `delay`.
pub async fn spawn_collector(delay: Duration) -> Collector {
    let script: Script = std::sync::Arc::new(move |_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        (delay, r)
    });
    Collector {
        upstream: spawn_recording(None, script).await,
    }
}

/// The `[tracing]` section that sends to `endpoint` with `ratio`.
pub fn tracing_section(endpoint: &str, ratio: &str) -> String {
    format!("[tracing]\notlp_endpoint = \"{endpoint}\"\nsample_ratio = {ratio}\n")
}

impl Collector {
    pub fn endpoint(&self) -> String {
        self.upstream.endpoint()
    }

    /// Every export body as it came.
    pub fn raw(&self) -> Vec<Recorded> {
        self.upstream.requests()
    }

    /// Every span received so far, in the order received.
    pub fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::new();
        for r in self.upstream.requests() {
            assert_eq!(r.path, "/v1/traces", "spans go to <endpoint>/v1/traces");
            assert_eq!(r.method, http::Method::POST);
            let request = ExportTraceServiceRequest::decode(r.body.as_ref())
                .unwrap_or_else(|e| panic!("not an OTLP protobuf export: {e}"));
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
        }
        spans
    }

    /// The spans once `done` says they are all there; fails after 10 seconds.
    pub async fn wait_for(&self, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "spans not exported in time; got {}: {:#?}",
                spans.len(),
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The service name the exports carry.
    pub fn service_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for r in self.upstream.requests() {
            let request = ExportTraceServiceRequest::decode(r.body.as_ref()).expect("decode");
            for resource in request.resource_spans {
                for kv in resource.resource.map(|r| r.attributes).unwrap_or_default() {
                    if kv.key == "service.name" {
                        if let Some(Value::StringValue(s)) = kv.value.and_then(|v| v.value) {
                            names.push(s);
                        }
                    }
                }
            }
        }
        names
    }
}

fn attr<'s>(span: &'s Span, key: &str) -> Option<&'s Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn str_attr<'s>(span: &'s Span, key: &str) -> Option<&'s str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(n)) => Some(*n),
        _ => None,
    }
}

pub fn bool_attr(span: &Span, key: &str) -> Option<bool> {
    match attr(span, key) {
        Some(Value::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

/// Lowercase hex, as `traceparent` and logs write ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
