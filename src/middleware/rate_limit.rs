//! Rate limit: per GroupId, then per API for the whole app. After validation, so only requests
//! that could succeed spend tokens; before signing, so refused ones cost Tencent nothing.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use super::validate::CounterFacts;
use super::GatewayResponse;
use crate::api::Api;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rate_limit::{RateLimiter, Scope};

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        RateLimitLayer { limiter, metrics }
    }
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimitLayer")
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
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

impl<S, B> Service<Request<B>> for Limit<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(api) = req.extensions().get::<Api>() else {
            // The allow-list always routes first; without an API there is nothing to charge.
            return Either::Right(self.inner.call(req));
        };
        let group = req.extensions().get::<CounterFacts>().map(|f| &*f.group_id);
        match self.limiter.check(api, group) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refusal) => {
                api.metrics(&self.metrics)
                    .rate_limited(refusal.scope.as_str());
                let retry_after_secs = refusal.retry_after_secs();
                let error = match refusal.scope {
                    Scope::Group => GatewayError::RateLimitedGroup {
                        group: group.unwrap_or_default().to_string(),
                        retry_after_secs,
                    },
                    Scope::App => GatewayError::RateLimitedApp {
                        api: api.name.to_string(),
                        retry_after_secs,
                    },
                };
                Either::Left(ready(Err(error)))
            }
        }
    }
}
