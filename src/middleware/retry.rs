//! Retry, only where it is safe: a request is sent again only when it provably never reached
//! Tencent. A connect-class failure (DNS, TCP connect, TLS handshake) on the primary host fails
//! over once to the backup host; a 70001 answer (UserSig expired: refused at authentication)
//! renews the sig and resends once. Nothing else is resent: a timeout or a reset after the
//! request was written may have applied an `Increase`, so it is answered, never repeated.
//!
//! Which host an attempt goes to, and the circuit, live in [`crate::upstream::targets`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::credentials::{unix_now, Credentials};
use crate::error::GatewayError;
use crate::exchange::{GatewayResponse, RequestId, UpstreamReport};
use crate::metrics::Metrics;
use crate::traces::{AttemptSpan, Traced};
use crate::upstream::targets::{Targets, UpstreamBase};

/// Tencent's "UserSig expired".
const USERSIG_EXPIRED: i64 = 70001;

#[derive(Debug, Clone)]
pub struct RetryLayer {
    targets: Arc<Targets>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
}

impl RetryLayer {
    pub fn new(targets: Arc<Targets>, credentials: Arc<Credentials>, metrics: Metrics) -> Self {
        RetryLayer {
            targets,
            credentials,
            metrics,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            targets: self.targets.clone(),
            credentials: self.credentials.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    targets: Arc<Targets>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
}

/// What a second attempt needs of the request (method, path, body, the API, the request id),
/// kept as plain fields and made into a request only if a second attempt happens: the body
/// is shared, not copied, and the common case allocates nothing for it. Headers are not
/// kept: the sign layer sends only the gateway's own.
struct Spare {
    method: http::Method,
    uri: http::Uri,
    body: Bytes,
    api: Option<crate::api::Api>,
    id: Option<RequestId>,
    trace: Option<Traced>,
}

impl Spare {
    fn of(req: &Request<Bytes>) -> Self {
        Spare {
            method: req.method().clone(),
            uri: req.uri().clone(),
            body: req.body().clone(),
            api: req.extensions().get::<crate::api::Api>().cloned(),
            id: req.extensions().get::<RequestId>().cloned(),
            trace: req.extensions().get::<Traced>().cloned(),
        }
    }

    fn into_request(self) -> Request<Bytes> {
        let mut req = Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        if let Some(api) = self.api {
            req.extensions_mut().insert(api);
        }
        if let Some(id) = self.id {
            req.extensions_mut().insert(id);
        }
        if let Some(trace) = self.trace {
            req.extensions_mut().insert(trace);
        }
        req
    }
}

/// Points an attempt at `base`. The sign layer sends to the primary unless told otherwise,
/// so only other hosts cost an extension.
fn to(mut req: Request<Bytes>, base: &UpstreamBase, targets: &Targets) -> Request<Bytes> {
    if !targets.is_primary(base) {
        req.extensions_mut().insert(base.clone());
    }
    req
}

/// Adds an earlier attempt's time to what the final answer reports.
fn add_elapsed(
    result: Result<GatewayResponse, GatewayError>,
    earlier: Duration,
) -> Result<GatewayResponse, GatewayError> {
    match result {
        Ok(mut response) => {
            if let Some(report) = response.extensions_mut().get_mut::<UpstreamReport>() {
                report.elapsed += earlier;
            }
            Ok(response)
        }
        Err(GatewayError::UpstreamUnavailable { failure, elapsed }) => {
            Err(GatewayError::UpstreamUnavailable {
                failure,
                elapsed: elapsed + earlier,
            })
        }
        Err(GatewayError::UpstreamTimeout(elapsed)) => {
            Err(GatewayError::UpstreamTimeout(elapsed + earlier))
        }
        Err(e) => Err(e),
    }
}

fn elapsed_of(result: &Result<GatewayResponse, GatewayError>) -> Duration {
    match result {
        Ok(r) => r
            .extensions()
            .get::<UpstreamReport>()
            .map(|r| r.elapsed)
            .unwrap_or_default(),
        Err(e) => e.upstream_elapsed().unwrap_or_default(),
    }
}

impl<S> Service<Request<Bytes>> for Retry<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError> + Clone,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = RetryFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let on_primary = !self.targets.circuit_open();
        let first_target = match (&self.targets.backup, on_primary) {
            (Some(backup), false) => {
                self.metrics.upstream_retry("circuit_open");
                backup.clone()
            }
            _ => self.targets.primary.clone(),
        };
        let spare = Spare::of(&req);
        let span = spare.trace.as_ref().map(|t| {
            let failover = !self.targets.is_primary(&first_target);
            AttemptSpan::start(t, &first_target.0, 1, failover)
        });
        RetryFuture::First {
            call: inner.call(to(req, &first_target, &self.targets)),
            span,
            attempt: Some(FirstAttempt {
                inner,
                spare,
                on_primary,
                target: first_target,
                targets: self.targets.clone(),
                credentials: self.credentials.clone(),
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// What the first attempt keeps for deciding, once it is answered, whether a second may go.
pub struct FirstAttempt<S> {
    inner: S,
    spare: Spare,
    on_primary: bool,
    target: UpstreamBase,
    targets: Arc<Targets>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
}

impl<S> FirstAttempt<S> {
    /// Where a second attempt goes, if one may go at all.
    fn second_target(&self, first: &Result<GatewayResponse, GatewayError>) -> Option<UpstreamBase> {
        let targets = &self.targets;
        match first {
            Err(e) if e.never_reached_upstream() && self.on_primary => {
                targets.primary_failed_to_connect();
                let backup = targets.backup.clone()?;
                // Never reached the primary: the backup gets the one more attempt.
                self.metrics.upstream_retry("connect_failover");
                tracing::info!("primary upstream unreachable; trying the backup host");
                Some(backup)
            }
            Ok(response)
                if response
                    .extensions()
                    .get::<UpstreamReport>()
                    .and_then(|r| r.error_code)
                    == Some(USERSIG_EXPIRED) =>
            {
                if self.on_primary {
                    targets.primary_answered();
                }
                // Refused at authentication, so nothing was applied: renew, resend once.
                self.credentials.renew(unix_now());
                self.metrics.upstream_retry("usersig_expired");
                tracing::warn!("upstream said the UserSig expired; renewed it and resending once");
                Some(self.target.clone())
            }
            _ => {
                // The primary was reached (whatever it said): the circuit stays closed.
                if self.on_primary {
                    targets.primary_answered();
                }
                None
            }
        }
    }
}

pin_project! {
    /// The first attempt, then at most one more.
    #[project = RetryProj]
    pub enum RetryFuture<S>
    where
        S: Service<Request<Bytes>>,
    {
        First {
            #[pin]
            call: S::Future,
            span: Option<AttemptSpan>,
            attempt: Option<FirstAttempt<S>>,
        },
        /// The second attempt, waiting for the inner service to be ready (as tower's retry
        /// does): an upstream with every slot taken is not called over its limit.
        Ready {
            inner: S,
            req: Option<Request<Bytes>>,
            // Where it goes, and whether that is the backup host (for its span).
            next: (Arc<str>, bool),
            earlier: Duration,
        },
        Second {
            #[pin]
            call: S::Future,
            span: Option<AttemptSpan>,
            earlier: Duration,
        },
    }
}

impl<S> Future for RetryFuture<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>,
{
    type Output = Result<GatewayResponse, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.as_mut().project() {
            RetryProj::Second {
                call,
                span,
                earlier,
            } => {
                let second = ready!(call.poll(cx));
                if let Some(span) = span.take() {
                    span.end(&second);
                }
                Poll::Ready(add_elapsed(second, *earlier))
            }
            RetryProj::First {
                call,
                span,
                attempt,
            } => {
                let first = ready!(call.poll(cx));
                if let Some(span) = span.take() {
                    span.end(&first);
                }
                let Some(attempt) = attempt.take() else {
                    return Poll::Ready(first);
                };
                let Some(target) = attempt.second_target(&first) else {
                    return Poll::Ready(first);
                };
                let earlier = elapsed_of(&first);
                let next = (target.0.clone(), !attempt.targets.is_primary(&target));
                let req = to(attempt.spare.into_request(), &target, &attempt.targets);
                self.set(RetryFuture::Ready {
                    inner: attempt.inner,
                    req: Some(req),
                    next,
                    earlier,
                });
                self.poll(cx)
            }
            RetryProj::Ready {
                inner,
                req,
                next,
                earlier,
            } => {
                let earlier = *earlier;
                if let Err(e) = ready!(inner.poll_ready(cx)) {
                    return Poll::Ready(add_elapsed(Err(e), earlier));
                }
                let Some(req) = req.take() else {
                    return Poll::Ready(Err(GatewayError::Internal(
                        "a second attempt was polled after it was sent",
                    )));
                };
                let span = req
                    .extensions()
                    .get::<Traced>()
                    .map(|t| AttemptSpan::start(t, &next.0, 2, next.1));
                let call = inner.call(req);
                self.set(RetryFuture::Second {
                    call,
                    span,
                    earlier,
                });
                self.poll(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use tower::ServiceExt;

    use super::*;
    use crate::usersig::SecretKey;

    /// An upstream that, like tower's contract says, must be ready before each call: its
    /// first call fails to connect (never reached), so the retry makes a second.
    struct Strict {
        ready: bool,
        calls: Arc<AtomicUsize>,
    }

    impl Clone for Strict {
        fn clone(&self) -> Self {
            // A clone has not been polled ready.
            Strict {
                ready: false,
                calls: self.calls.clone(),
            }
        }
    }

    impl Service<Request<Bytes>> for Strict {
        type Response = GatewayResponse;
        type Error = GatewayError;
        type Future = std::future::Ready<Result<GatewayResponse, GatewayError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _req: Request<Bytes>) -> Self::Future {
            assert!(self.ready, "called without being ready");
            self.ready = false;
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n == 0 {
                Err(GatewayError::UpstreamUnavailable {
                    failure: crate::error::UpstreamFailure::Connect,
                    elapsed: Duration::ZERO,
                })
            } else {
                Ok(http::Response::new(Full::new(Bytes::new())))
            })
        }
    }

    #[tokio::test]
    async fn the_second_attempt_waits_until_the_inner_service_is_ready() {
        let metrics = Metrics::new();
        let targets = Targets::new(
            Arc::from("https://primary.invalid"),
            Some(Arc::from("https://backup.invalid")),
            metrics.clone(),
        );
        let key = SecretKey::new("k").expect("key");
        let credentials =
            Credentials::new(1, "admin", Duration::from_secs(3600), key, metrics.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new(targets, credentials, metrics).layer(Strict {
            ready: false,
            calls: calls.clone(),
        });
        let answer = service
            .oneshot(Request::new(Bytes::from_static(b"{}")))
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "failed over once");
    }
}
