//! `rate_limit.mode = "shadow"`: the limits decide as when enforcing, and keep the same state
//! (a call they would refuse spends no token), but refuse nothing: each would-be refusal is
//! counted in `chat_gateway_rate_limit_shadow_total` and the call goes on, at once. Operators
//! try new limits on live traffic this way before enforcing them.

use std::sync::Arc;

use super::{BoxFuture, Decision, RateLimiter, Refusal, StartFuture};
use crate::api::Api;
use crate::metrics::Metrics;

/// A limiter whose refusals are counted and let through.
pub struct Shadow {
    inner: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

impl Shadow {
    pub fn new(inner: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        Shadow { inner, metrics }
    }
}

/// A pass, whatever the limits said; what they would have refused is counted.
fn pass(api: &Api, metrics: &Metrics, result: Result<(), Refusal>) -> Result<(), Refusal> {
    if let Err(refusal) = result {
        api.metrics(metrics)
            .rate_limit_shadow(refusal.scope.as_str());
    }
    Ok(())
}

impl RateLimiter for Shadow {
    fn check(&self, api: &Api, group: Option<&str>) -> Decision {
        match self.inner.check(api, group) {
            Decision::Now(Some(result)) => Decision::now(pass(api, &self.metrics, result)),
            Decision::Now(None) => Decision::Now(None),
            Decision::Later(decision) => {
                let (api, metrics) = (api.clone(), self.metrics.clone());
                Decision::later(async move { pass(&api, &metrics, decision.await) })
            }
        }
    }

    fn decides_at_once(&self) -> bool {
        self.inner.decides_at_once()
    }

    fn cleanup(&self) -> usize {
        self.inner.cleanup()
    }

    fn tracked_groups(&self) -> usize {
        self.inner.tracked_groups()
    }

    fn start(&self) -> StartFuture<'_> {
        self.inner.start()
    }

    fn background(&self, stop: BoxFuture) -> Option<BoxFuture> {
        self.inner.background(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiTable;
    use crate::config::{ApiAllowList, RateLimitConfig};
    use crate::rate_limit::LocalLimiter;

    #[tokio::test]
    async fn would_be_refusals_pass_and_are_counted_by_scope() {
        let config = RateLimitConfig {
            group_per_second: 1,
            group_burst: 1,
            app_per_second: 1,
            app_burst: 2,
            ..RateLimitConfig::default()
        };
        let metrics = Metrics::new();
        let shadow = Shadow::new(Arc::new(LocalLimiter::new(&config)), metrics.clone());
        let api = ApiTable::new(&ApiAllowList::Any)
            .route("/v4/group_open_http_svc/update_group_counter")
            .expect("allowed");
        // g passes, g again the group would refuse, h passes (the app's burst is 2), and the
        // app would refuse k.
        for group in ["g", "g", "h", "k"] {
            assert_eq!(shadow.check(&api, Some(group)).await, Ok(()));
        }
        let text = String::from_utf8(metrics.render()).expect("utf8");
        let count = |scope: &str| {
            let series = format!(
                "chat_gateway_rate_limit_shadow_total{{api=\"{}\",scope=\"{scope}\"}} ",
                api.name
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(count("group").as_deref(), Some("1"), "{text}");
        assert_eq!(count("app").as_deref(), Some("1"), "{text}");
        assert!(!text.contains("chat_gateway_rate_limited_total{api=\"group_open_http_svc/update_group_counter\",scope=\"group\"} 1"));
    }
}
