//! The one error type of the request pipeline.
//!
//! Layers fail with a `GatewayError`; the rescue layer turns it into Tencent's envelope. Display
//! texts become `ErrorInfo`, so none of them may carry a URI, a UserSig or the secret key.

use std::time::Duration;

use http::StatusCode;

use crate::envelope::Reason;

/// `Clone`: one failed coalesced call is every caller's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    NotAllowed(String),
    /// A `CONNECT` request: refused like any wrong method, but never with a 2xx status, which
    /// would tell the client a tunnel was opened.
    #[error("CONNECT is not allowed; Chat REST APIs take POST")]
    Connect,
    #[error("{0}")]
    InvalidJson(String),
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{info}")]
    Validation { code: u32, info: String },
    #[error("GroupId {group} is over its rate limit; retry after {retry_after_secs}s")]
    RateLimitedGroup {
        group: String,
        retry_after_secs: u64,
    },
    #[error("{api} is over the app-wide rate limit; retry after {retry_after_secs}s")]
    RateLimitedApp { api: String, retry_after_secs: u64 },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("upstream unavailable: {failure}")]
    UpstreamUnavailable {
        failure: UpstreamFailure,
        /// Time spent on the attempt(s), for the overhead metric.
        elapsed: Duration,
    },
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the gateway is shutting down")]
    Draining,
    #[error("too many requests in flight; retry later")]
    Overloaded,
    /// A state that should never happen (a bug): answered as such, so that it shows on
    /// dashboards as a failure of the gateway, never as load or limits.
    #[error("the gateway failed ({0}); this is a bug, please report it")]
    Internal(&'static str),
}

/// What went wrong on the way to the upstream, in words safe to show a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("could not connect")]
    Connect,
    #[error("the connection failed after the request was sent")]
    Io,
    #[error("the answer could not be read")]
    BadResponse,
    #[error("the answer is larger than the gateway accepts")]
    ResponseTooLarge,
    #[error("no UserSig could be made")]
    NoCredentials,
}

impl GatewayError {
    pub fn reason(&self) -> Reason {
        match self {
            GatewayError::NotAllowed(_) | GatewayError::Connect => Reason::NotAllowed,
            GatewayError::InvalidJson(_) => Reason::InvalidJson,
            GatewayError::BodyTooLarge { .. } => Reason::BodyTooLarge,
            GatewayError::Validation { .. } => Reason::Validation,
            GatewayError::RateLimitedGroup { .. } => Reason::RateLimitGroup,
            GatewayError::RateLimitedApp { .. } => Reason::RateLimitApp,
            GatewayError::Unauthorized => Reason::Unauthorized,
            GatewayError::UpstreamUnavailable { .. } => Reason::UpstreamUnavailable,
            GatewayError::UpstreamTimeout(_) => Reason::UpstreamTimeout,
            GatewayError::Draining => Reason::Draining,
            GatewayError::Overloaded => Reason::Overloaded,
            GatewayError::Internal(_) => Reason::Internal,
        }
    }

    /// HTTP status and Tencent ErrorCode, as the contract's table says.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            GatewayError::NotAllowed(_) => (StatusCode::OK, 60009),
            GatewayError::Connect => (StatusCode::METHOD_NOT_ALLOWED, 60009),
            GatewayError::InvalidJson(_) => (StatusCode::OK, 60003),
            GatewayError::BodyTooLarge { .. } => (StatusCode::OK, 10004),
            GatewayError::Validation { code, .. } => (StatusCode::OK, *code),
            GatewayError::RateLimitedGroup { .. } => (StatusCode::OK, 10006),
            GatewayError::RateLimitedApp { .. } => (StatusCode::OK, 60007),
            GatewayError::Unauthorized => (StatusCode::UNAUTHORIZED, 60004),
            GatewayError::UpstreamUnavailable { .. } => (StatusCode::BAD_GATEWAY, 10002),
            GatewayError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, 60008),
            GatewayError::Draining => (StatusCode::SERVICE_UNAVAILABLE, 10002),
            GatewayError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 60018),
            GatewayError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 10002),
        }
    }

    /// Whether this failure provably never reached Tencent (nothing was written to it), so that
    /// sending the same request again, to this host or another, cannot apply it twice. Only a
    /// connect-class failure (DNS, TCP connect, TLS handshake) qualifies: a timeout or a broken
    /// connection after the request was written may have been applied.
    pub fn never_reached_upstream(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnavailable {
                failure: UpstreamFailure::Connect,
                ..
            }
        )
    }

    /// Time spent waiting on the upstream before this error, if it got that far.
    /// Whether the request may have reached Tencent although the gateway answers it itself: a
    /// failure after the request was (or may have been) written. The caller cannot know if an
    /// `Increase` answered so was applied; the answer says so (`X-Chat-Gateway-In-Doubt`).
    pub fn in_doubt(&self) -> bool {
        match self {
            GatewayError::UpstreamTimeout(_) => true,
            GatewayError::UpstreamUnavailable { failure, .. } => matches!(
                failure,
                UpstreamFailure::Io
                    | UpstreamFailure::BadResponse
                    | UpstreamFailure::ResponseTooLarge
            ),
            _ => false,
        }
    }

    pub fn upstream_elapsed(&self) -> Option<Duration> {
        match self {
            GatewayError::UpstreamUnavailable { elapsed, .. }
            | GatewayError::UpstreamTimeout(elapsed) => Some(*elapsed),
            _ => None,
        }
    }

    /// `Retry-After` in whole seconds, for the answers that carry one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimitedGroup {
                retry_after_secs, ..
            }
            | GatewayError::RateLimitedApp {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_table() {
        let cases: Vec<(GatewayError, u16, u32, &str)> = vec![
            (
                GatewayError::NotAllowed("x".into()),
                200,
                60009,
                "not_allowed",
            ),
            (
                GatewayError::InvalidJson("x".into()),
                200,
                60003,
                "invalid_json",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                200,
                10004,
                "body_too_large",
            ),
            (
                GatewayError::Validation {
                    code: 10063,
                    info: "x".into(),
                },
                200,
                10063,
                "validation",
            ),
            (
                GatewayError::RateLimitedGroup {
                    group: "g".into(),
                    retry_after_secs: 0,
                },
                200,
                10006,
                "rate_limit_group",
            ),
            (
                GatewayError::RateLimitedApp {
                    api: "a".into(),
                    retry_after_secs: 3,
                },
                200,
                60007,
                "rate_limit_app",
            ),
            (GatewayError::Connect, 405, 60009, "not_allowed"),
            (GatewayError::Unauthorized, 401, 60004, "unauthorized"),
            (
                GatewayError::UpstreamUnavailable {
                    failure: UpstreamFailure::Connect,
                    elapsed: Duration::ZERO,
                },
                502,
                10002,
                "upstream_unavailable",
            ),
            (
                GatewayError::UpstreamTimeout(Duration::from_secs(5)),
                504,
                60008,
                "upstream_timeout",
            ),
            (GatewayError::Draining, 503, 10002, "draining"),
            (GatewayError::Overloaded, 503, 60018, "overloaded"),
            (GatewayError::Internal("x"), 500, 10002, "internal"),
        ];
        for (error, status, code, reason) in cases {
            assert_eq!(
                error.status_and_code(),
                (StatusCode::from_u16(status).expect("status"), code)
            );
            assert_eq!(error.reason().as_str(), reason);
        }
    }

    #[test]
    fn only_connect_failures_never_reached_upstream() {
        let unavailable = |failure| GatewayError::UpstreamUnavailable {
            failure,
            elapsed: Duration::ZERO,
        };
        assert!(unavailable(UpstreamFailure::Connect).never_reached_upstream());
        for failure in [
            UpstreamFailure::Io,
            UpstreamFailure::BadResponse,
            UpstreamFailure::ResponseTooLarge,
            UpstreamFailure::NoCredentials,
        ] {
            assert!(
                !unavailable(failure).never_reached_upstream(),
                "{failure:?}"
            );
        }
        assert!(!GatewayError::UpstreamTimeout(Duration::ZERO).never_reached_upstream());
    }

    #[test]
    fn answers_after_the_request_may_have_been_written_are_in_doubt() {
        let unavailable = |failure| GatewayError::UpstreamUnavailable {
            failure,
            elapsed: Duration::ZERO,
        };
        assert!(GatewayError::UpstreamTimeout(Duration::ZERO).in_doubt());
        for failure in [
            UpstreamFailure::Io,
            UpstreamFailure::BadResponse,
            UpstreamFailure::ResponseTooLarge,
        ] {
            assert!(unavailable(failure).in_doubt(), "{failure:?}");
        }
        // Never sent: safe to send again.
        for failure in [UpstreamFailure::Connect, UpstreamFailure::NoCredentials] {
            assert!(!unavailable(failure).in_doubt(), "{failure:?}");
        }
        for never_sent in [
            GatewayError::Overloaded,
            GatewayError::Draining,
            GatewayError::RateLimitedGroup {
                group: "g".into(),
                retry_after_secs: 1,
            },
        ] {
            assert!(!never_sent.in_doubt(), "{never_sent:?}");
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let e = GatewayError::RateLimitedGroup {
            group: "g".into(),
            retry_after_secs: 0,
        };
        assert_eq!(e.retry_after_secs(), Some(1));
        let e = GatewayError::RateLimitedApp {
            api: "a".into(),
            retry_after_secs: 7,
        };
        assert_eq!(e.retry_after_secs(), Some(7));
        assert_eq!(GatewayError::Overloaded.retry_after_secs(), None);
    }
}
