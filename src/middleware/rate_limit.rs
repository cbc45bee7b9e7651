//! Rate limit: per GroupId, then per API for the whole app. After validation, so only requests
//! that could succeed spend tokens; before signing, so refused ones cost Tencent nothing.
//!
//! The check is a future (a shared backend asks the network). A decision made at once goes
//! straight to the inner service; only one that waits keeps the request and a clone of the
//! inner service in the named response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Request;
use opentelemetry::trace::{Span as _, SpanKind};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::api::Api;
use crate::error::GatewayError;
use crate::exchange::GatewayResponse;
use crate::metrics::Metrics;
use crate::rate_limit::{Decision, RateLimiter, Refusal, TokensTaken};
use crate::traces::Traced;
use crate::validated_apis::PayloadFacts;

#[derive(Clone)]
pub struct LimitLayer {
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl LimitLayer {
    pub fn new(limiter: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        LimitLayer { limiter, metrics }
    }
}

impl std::fmt::Debug for LimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitLayer")
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl<S> std::fmt::Debug for Limit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limit")
    }
}

pin_project! {
    #[project = LimitProj]
    pub enum LimitFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        Waiting {
            #[pin]
            decision: Decision,
            // The wait's span, when the request is traced.
            span: Option<opentelemetry_sdk::trace::Span>,
            request: Option<Request<B>>,
            inner: S,
            metrics: Metrics,
        },
        Calling {
            #[pin]
            call: S::Future,
        },
        Refused {
            error: Option<GatewayError>,
        },
    }
}

impl<S, B> Future for LimitFuture<S, B>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Output = Result<GatewayResponse, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                LimitProj::Calling { call } => return call.poll(cx),
                LimitProj::Refused { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or(GatewayError::Internal(
                        "a rate-limit refusal was polled twice",
                    ))))
                }
                LimitProj::Waiting {
                    decision,
                    span,
                    request,
                    inner,
                    metrics,
                } => {
                    let result = ready!(decision.poll(cx));
                    if let Some(mut span) = span.take() {
                        let granted = if result.is_ok() { "granted" } else { "refused" };
                        span.set_attribute(KeyValue::new("chat.rate_limit.result", granted));
                        span.end();
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(GatewayError::Internal(
                            "a rate-limit check was polled after its request was sent",
                        )));
                    };
                    let next = match result {
                        Ok(()) => LimitFuture::Calling {
                            call: inner.call(request),
                        },
                        Err(refusal) => LimitFuture::Refused {
                            error: Some(refusal_of(&request, refusal, metrics)),
                        },
                    };
                    self.set(next);
                }
            }
        }
    }
}

fn refusal_of<B>(req: &Request<B>, refusal: Refusal, metrics: &Metrics) -> GatewayError {
    let group = req.extensions().get::<PayloadFacts>().map(|f| &*f.group_id);
    match req.extensions().get::<Api>() {
        Some(api) => refusal.counted(api, group, metrics),
        // Never reached: only routed requests are checked.
        None => GatewayError::Internal("a request without its API reached the rate limit"),
    }
}

impl<S, B> Service<Request<B>> for Limit<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError> + Clone,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = LimitFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The allow-list always routes first; without an API there is nothing to charge.
        let Some(api) = req.extensions().get::<Api>() else {
            return LimitFuture::Calling {
                call: self.inner.call(req),
            };
        };
        if req.extensions().get::<TokensTaken>().is_some() {
            return LimitFuture::Calling {
                call: self.inner.call(req),
            };
        }
        let group = req.extensions().get::<PayloadFacts>().map(|f| &*f.group_id);
        let mut decision = self.limiter.check(api, group);
        match decision.ready() {
            Some(Ok(())) => LimitFuture::Calling {
                call: self.inner.call(req),
            },
            Some(Err(refusal)) => LimitFuture::Refused {
                error: Some(refusal_of(&req, refusal, &self.metrics)),
            },
            None => {
                // The inner service was made ready for this call: keep that one, leave a clone.
                let clone = self.inner.clone();
                let span = req.extensions().get::<Traced>().map(|t| {
                    let api = KeyValue::new("chat.api", api.name.to_string());
                    t.child("rate limit token", SpanKind::Internal, vec![api], None)
                });
                LimitFuture::Waiting {
                    decision,
                    span,
                    request: Some(req),
                    inner: std::mem::replace(&mut self.inner, clone),
                    metrics: self.metrics.clone(),
                }
            }
        }
    }
}
