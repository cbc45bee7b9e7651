//! The spans of a batch's call: a batch of one is its caller's own call (the caller's span is
//! its parent); a merged call gets a `CLIENT` span that starts a trace of its own, linked
//! both ways with its sampled callers' spans. The wait for the batch's tokens is a span below
//! whichever of the two the call belongs to.

use std::time::SystemTime;

use http::request::Parts;
use opentelemetry::trace::Span as _;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::group::Member;
use super::layer::DriverCtx;
use crate::error::GatewayError;
use crate::exchange::{GatewayResponse, UpstreamReport};
use crate::traces::Traced;

/// When a batch waited for its tokens.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenWait {
    pub from: SystemTime,
    pub until: SystemTime,
}

/// Gives the call the span context it belongs to (replacing the first caller's, which the
/// template carries), and records the token wait below it. Returns the merged call's own
/// span, to be ended with [`end`].
pub(super) fn begin(
    ctx: &DriverCtx,
    members: &[Member],
    template: &mut Parts,
    wait: Option<TokenWait>,
) -> Option<Traced> {
    template.extensions.remove::<Traced>();
    let (parent, batch) = match members {
        [only] => (only.trace.clone(), None),
        _ => {
            let callers: Vec<&Traced> = members.iter().filter_map(|m| m.trace.as_ref()).collect();
            let first = callers.first()?;
            let started = wait.map_or_else(SystemTime::now, |w| w.from);
            let batch = first
                .tracing()
                .batch_span(&ctx.api.name, &callers, members.len(), started);
            (Some(batch.clone()), Some(batch))
        }
    };
    let parent = parent?;
    if let Some(wait) = wait {
        let mut span = parent.child(
            "rate limit token",
            SpanKind::Internal,
            vec![KeyValue::new("chat.api", ctx.api.name.to_string())],
            Some(wait.from),
        );
        span.end_with_timestamp(wait.until);
    }
    template.extensions.insert(parent);
    batch
}

/// Ends a merged call's span with what the call got.
pub(super) fn end(batch: Option<Traced>, result: &Result<GatewayResponse, GatewayError>) {
    let Some(batch) = batch else {
        return;
    };
    let attributes = match result {
        Ok(response) => {
            let mut a = vec![KeyValue::new(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            )];
            let report = response.extensions().get::<UpstreamReport>();
            if let Some(code) = report.and_then(|r| r.error_code) {
                a.push(KeyValue::new("chat.error_code", code));
            }
            a
        }
        Err(e) => vec![KeyValue::new("error.type", e.reason().as_str())],
    };
    batch.end_batch(attributes);
}

/// A read's wait for its tokens (from `from` until now), below the request it belongs to
/// when that one is traced.
pub(super) fn read_token_wait(
    req: &http::Request<bytes::Bytes>,
    api: &str,
    from: SystemTime,
    taken: bool,
) {
    if let Some(traced) = req.extensions().get::<Traced>() {
        let result = if taken { "granted" } else { "refused" };
        let attributes = vec![
            KeyValue::new("chat.api", api.to_string()),
            KeyValue::new("chat.rate_limit.result", result),
        ];
        let mut span = traced.child(
            "rate limit token",
            SpanKind::Internal,
            attributes,
            Some(from),
        );
        span.end();
    }
}
