//! Rate limit: per GroupId, then per API for the whole app. After validation, so only requests
//! that could succeed spend tokens; before signing, so refused ones cost Tencent nothing.

use std::sync::Arc;

use http::Request;

use super::check::Check;
use crate::api::Api;
use crate::apis::PayloadFacts;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rate_limit::{RateLimiter, Scope};

#[derive(Clone)]
pub struct Limit {
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl Limit {
    pub fn new(limiter: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        Limit { limiter, metrics }
    }
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limit")
    }
}

impl<B> Check<B> for Limit {
    fn check(&self, req: &mut Request<B>) -> Result<(), GatewayError> {
        // The allow-list always routes first; without an API there is nothing to charge.
        let Some(api) = req.extensions().get::<Api>() else {
            return Ok(());
        };
        let group = req.extensions().get::<PayloadFacts>().map(|f| &*f.group_id);
        let Err(refusal) = self.limiter.check(api, group) else {
            return Ok(());
        };
        api.metrics(&self.metrics)
            .rate_limited(refusal.scope.as_str());
        let retry_after_secs = refusal.retry_after_secs();
        Err(match refusal.scope {
            Scope::Group => GatewayError::RateLimitedGroup {
                group: group.unwrap_or_default().to_string(),
                retry_after_secs,
            },
            Scope::App => GatewayError::RateLimitedApp {
                api: api.name.to_string(),
                retry_after_secs,
            },
        })
    }
}
