//! A shared call's answer, taken apart once for its callers; and the answer owed to callers
//! of a call that was abandoned.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, Full};

use super::group::Member;
use super::COALESCED_HEADER;
use crate::error::{GatewayError, UpstreamFailure};
use crate::exchange::{GatewayResponse, UpstreamReport};

/// Tencent's ErrorCodes for a merged call it refused whole for a reason that may belong to only
/// some of its callers: 10063 (the group would hold more than 20 keys) and 10004 (an invalid
/// parameter, such as a key's new value leaving the signed 64-bit range). Nothing was applied.
const REFUSED_WHOLE: [i64; 2] = [10063, 10004];

pub(super) struct SharedAnswer {
    status: http::StatusCode,
    content_type: Option<HeaderValue>,
    /// Only when the upstream layer could not decode a compressed answer: the body is then
    /// handed to every caller whole, as it came.
    content_encoding: Option<HeaderValue>,
    report: Option<UpstreamReport>,
    pub body: Bytes,
}

impl SharedAnswer {
    pub async fn split(response: GatewayResponse) -> SharedAnswer {
        let (parts, body) = response.into_parts();
        // A `Full` body is already in memory: collecting it cannot fail or wait.
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        SharedAnswer {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            content_encoding: parts.headers.get(header::CONTENT_ENCODING).cloned(),
            report: parts.extensions.get::<UpstreamReport>().copied(),
            body,
        }
    }

    /// Tencent said OK (so each caller gets its own keys' latest values).
    pub fn ok(&self) -> bool {
        self.status.is_success() && self.error_code() == Some(0)
    }

    /// Tencent refused the call whole, for a reason that may be only some callers'.
    pub fn refused_whole(&self) -> bool {
        self.status.is_success()
            && self
                .error_code()
                .is_some_and(|c| REFUSED_WHOLE.contains(&c))
    }

    fn error_code(&self) -> Option<i64> {
        self.report.and_then(|r| r.error_code)
    }

    /// One caller's answer. Each carries the call's report, so that it is counted as the
    /// outcome it is; the upstream metrics were counted once, when the call was made.
    pub fn answer(&self, body: Bytes, callers: usize) -> GatewayResponse {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(ct) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        if let Some(coding) = &self.content_encoding {
            headers.insert(header::CONTENT_ENCODING, coding.clone());
        }
        headers.insert(COALESCED_HEADER, HeaderValue::from(callers));
        if let Some(report) = self.report {
            response.extensions_mut().insert(report);
        }
        response
    }
}

/// Callers of a sealed batch not yet answered. Should the driver stop before answering them
/// (the runtime shutting down), each still gets an answer that says what may have happened.
pub(super) struct Pending {
    pub members: Vec<Member>,
    pub sent: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.members.is_empty() {
            return;
        }
        tracing::warn!(
            callers = self.members.len(),
            sent = self.sent,
            "a coalesced call was abandoned before its answer"
        );
        for m in self.members.drain(..) {
            let error = if self.sent {
                GatewayError::UpstreamUnavailable {
                    failure: UpstreamFailure::Io,
                    elapsed: Duration::ZERO,
                }
            } else {
                GatewayError::Draining
            };
            let _ = m.tx.send(Err(error));
        }
    }
}
