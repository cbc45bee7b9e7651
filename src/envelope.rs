//! Tencent's answer envelope and the gateway's own answers.
//!
//! Every answer the gateway gives itself looks like one of Tencent's, so a client written against
//! Tencent handles it unchanged; `X-Chat-Gateway-Rejected` tells it never reached Tencent.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Marks an answer the gateway gave itself; its value is the reason.
pub const REJECTED_HEADER: &str = "x-chat-gateway-rejected";

/// Marks a rejection whose request may have reached Tencent (a timeout, a connection broken
/// after the request was written): an `Increase` answered so may or may not have been applied.
pub const IN_DOUBT_HEADER: &str = "x-chat-gateway-in-doubt";

/// Why the gateway answered by itself. The names are the contract's reason header values and
/// the `outcome` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NotAllowed,
    InvalidJson,
    BodyTooLarge,
    Validation,
    RateLimitGroup,
    RateLimitApp,
    Unauthorized,
    UpstreamUnavailable,
    UpstreamTimeout,
    Draining,
    Overloaded,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::NotAllowed,
        Reason::InvalidJson,
        Reason::BodyTooLarge,
        Reason::Validation,
        Reason::RateLimitGroup,
        Reason::RateLimitApp,
        Reason::Unauthorized,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::Draining,
        Reason::Overloaded,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::InvalidJson => "invalid_json",
            Reason::BodyTooLarge => "body_too_large",
            Reason::Validation => "validation",
            Reason::RateLimitGroup => "rate_limit_group",
            Reason::RateLimitApp => "rate_limit_app",
            Reason::Unauthorized => "unauthorized",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::Draining => "draining",
            Reason::Overloaded => "overloaded",
            Reason::Internal => "internal",
        }
    }

    pub fn from_header(value: &[u8]) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str().as_bytes() == value)
    }
}

/// On an answer the gateway gave itself: its ErrorCode (for the request's trace span; an
/// answer from Tencent carries its own in the upstream report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionCode(pub u32);

/// Builds `{"ActionStatus":"FAIL","ErrorCode":N,"ErrorInfo":"..."}` with the reason header.
pub fn rejection(
    status: StatusCode,
    error_code: u32,
    reason: Reason,
    info: &str,
) -> Response<Full<Bytes>> {
    let body = fail_body(error_code, info);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REJECTED_HEADER, HeaderValue::from_static(reason.as_str()));
    response.extensions_mut().insert(RejectionCode(error_code));
    response
}

/// The FAIL envelope as bytes (serde_json does the escaping of `info`).
pub fn fail_body(error_code: u32, info: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Fail<'a> {
        #[serde(rename = "ActionStatus")]
        action_status: &'static str,
        #[serde(rename = "ErrorCode")]
        error_code: u32,
        #[serde(rename = "ErrorInfo")]
        error_info: &'a str,
    }
    serde_json::to_vec(&Fail {
        action_status: "FAIL",
        error_code,
        error_info: info,
    })
    // Serialising a struct of strings and integers cannot fail; keep a valid envelope anyway.
    .unwrap_or_else(|_| br#"{"ActionStatus":"FAIL","ErrorCode":10002,"ErrorInfo":""}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn rejection_is_tencents_envelope_with_reason_header() {
        let response = rejection(StatusCode::OK, 60009, Reason::NotAllowed, "say \"why\"");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[REJECTED_HEADER], "not_allowed");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let value: serde_json::Value =
            serde_json::from_slice(&body.expect("full body")).expect("json");
        assert_eq!(value["ActionStatus"], "FAIL");
        assert_eq!(value["ErrorCode"], 60009);
        assert_eq!(value["ErrorInfo"], "say \"why\"");
    }

    #[test]
    fn reason_names_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(
                Reason::from_header(reason.as_str().as_bytes()),
                Some(reason)
            );
        }
        assert_eq!(Reason::from_header(b"nope"), None);
    }
}
