//! Rate limits: per GroupId (so one hot live-stream group cannot spend the app's budget) and
//! per API for the whole app (Tencent allows each counter API 200 calls per second).
//!
//! The pipeline sees only the [`RateLimiter`] trait, whose check is a future: the in-process
//! backend ([`local`]) decides at once, a shared backend may ask the network. [`from_config`]
//! is the one place a backend is chosen.

pub mod fleet;
pub mod kept;
pub mod local;
pub mod overrides;
pub mod redis;
pub mod redis_auth;
mod redis_budget;
mod redis_conn;
mod redis_watch;
mod refused;
mod shadow;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::api::Api;
use crate::config::{LimitMode, RateLimitConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;

pub use local::LocalLimiter;
pub use redis::{RedisLimiter, RedisSetupError};

/// A boxed task: a backend's background work, and the signal that stops it.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
/// A backend's first contact with its store, before the gateway serves.
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SetupError>> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Group,
    App,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Group => "group",
            Scope::App => "app",
        }
    }
}

/// A refused call: which limit, and when a retry can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub retry_after: Duration,
    /// An app refusal that still spent the group's token (the local limiter takes the group's
    /// first); a caller that waits for the app's token then must not take the group's again.
    /// Redis's script writes nothing on a refusal, so its refusals spend nothing.
    pub group_spent: bool,
}

/// A marker extension: this call's tokens were already taken (a coalesced batch, or a read
/// that waited its turn, takes them itself), so the limit layer lets it through.
#[derive(Debug, Clone, Copy)]
pub struct TokensTaken;

impl Refusal {
    /// The typed error for this refusal of a call of `api` (for `group`), counted in the
    /// rate-limited metric.
    pub fn counted(self, api: &Api, group: Option<&str>, metrics: &Metrics) -> GatewayError {
        api.metrics(metrics).rate_limited(self.scope.as_str());
        let retry_after_secs = self.retry_after_secs();
        match self.scope {
            Scope::Group => GatewayError::RateLimitedGroup {
                group: group.unwrap_or_default().to_string(),
                retry_after_secs,
            },
            Scope::App => GatewayError::RateLimitedApp {
                api: api.name.to_string(),
                retry_after_secs,
            },
        }
    }

    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The answer to one check: ready at once (no allocation) or later (a backend that waits on
/// I/O). Either way it resolves to a token taken or the refusal.
#[must_use = "a check takes effect only when its decision is read"]
pub enum Decision {
    Now(Option<Result<(), Refusal>>),
    Later(Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send + 'static>>),
}

impl Decision {
    pub fn now(result: Result<(), Refusal>) -> Self {
        Decision::Now(Some(result))
    }

    pub fn later(fut: impl Future<Output = Result<(), Refusal>> + Send + 'static) -> Self {
        Decision::Later(Box::pin(fut))
    }

    /// The result, if it was decided without waiting (and not yet taken).
    pub fn ready(&mut self) -> Option<Result<(), Refusal>> {
        match self {
            Decision::Now(result) => result.take(),
            Decision::Later(_) => None,
        }
    }
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Decision::Later(_) => f.write_str("Later(..)"),
        }
    }
}

impl Future for Decision {
    type Output = Result<(), Refusal>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            // A decision polled again after it was taken passes: it was already spent.
            Decision::Now(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            Decision::Later(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// Takes a token for one upstream call, or says which limit refused it. Group first, then app:
/// a call refused for its group spends nothing of the app's budget.
pub trait RateLimiter: Send + Sync + 'static {
    fn check(&self, api: &Api, group: Option<&str>) -> Decision;
    /// Whether every [`Decision`] is made at once (no I/O), so a caller may check inline and
    /// act on the answer without waiting.
    fn decides_at_once(&self) -> bool {
        false
    }
    /// Drops the state of groups that have been quiet long enough to be indistinguishable from
    /// new ones; returns how many groups are still tracked.
    fn cleanup(&self) -> usize;
    fn tracked_groups(&self) -> usize;
    /// Reaches the shared store once before the gateway serves; an error (the store refuses
    /// the gateway's credentials or certificate) stops the start. An unreachable store is no
    /// error.
    fn start(&self) -> StartFuture<'_> {
        Box::pin(async { Ok(()) })
    }
    /// Work the backend does by itself until `stop` (connecting to and probing a shared
    /// store); `None` for a backend without any.
    fn background(&self, _stop: BoxFuture) -> Option<BoxFuture> {
        None
    }
    /// A limiter with `config`'s budgets (of the app `sdkappid`) over this one's state
    /// (nothing spent is given back), for a reloaded config; `None` when the budgets cannot
    /// change while running.
    fn rebudgeted(
        &self,
        _config: &RateLimitConfig,
        _sdkappid: u64,
    ) -> Result<Option<Arc<dyn RateLimiter>>, SetupError> {
        Ok(None)
    }
}

/// Why the limiter the config asks for could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
}

/// The backend the config asks for, without the shadow mode; Redis keys carry the app's
/// `sdkappid`.
pub fn backend(
    config: &RateLimitConfig,
    sdkappid: u64,
    metrics: &Metrics,
) -> Result<Arc<dyn RateLimiter>, SetupError> {
    Ok(match config.redis() {
        None => Arc::new(LocalLimiter::new(config)),
        Some(redis) => Arc::new(RedisLimiter::new(config, &redis, sdkappid, metrics)?),
    })
}

/// The backend under the config's mode: what the pipeline checks with.
pub fn with_mode(
    backend: Arc<dyn RateLimiter>,
    mode: LimitMode,
    metrics: &Metrics,
) -> Arc<dyn RateLimiter> {
    match mode {
        LimitMode::Enforce => backend,
        LimitMode::Shadow => Arc::new(shadow::Shadow::new(backend, metrics.clone())),
    }
}

/// The limiter the config asks for; Redis keys carry the app's `sdkappid`.
pub fn from_config(
    config: &RateLimitConfig,
    sdkappid: u64,
    metrics: &Metrics,
) -> Result<Arc<dyn RateLimiter>, SetupError> {
    Ok(with_mode(
        backend(config, sdkappid, metrics)?,
        config.mode,
        metrics,
    ))
}

/// Runs `cleanup` every `interval` until `stop` resolves, reporting the tracked count.
pub async fn clean_periodically(
    limiter: Arc<dyn RateLimiter>,
    interval: Duration,
    metrics: crate::metrics::Metrics,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {
                let tracked = limiter.cleanup();
                metrics.tracked_groups(tracked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_decision_is_taken_once_and_a_later_one_is_awaited() {
        let refusal = Refusal {
            scope: Scope::App,
            retry_after: Duration::from_millis(5),
            group_spent: false,
        };
        let mut now = Decision::now(Err(refusal));
        assert_eq!(now.ready(), Some(Err(refusal)));
        assert_eq!(now.ready(), None, "taken");
        let mut later = Decision::later(async move { Err(refusal) });
        assert_eq!(later.ready(), None, "not decided without waiting");
        assert_eq!(later.await, Err(refusal));
        assert_eq!(Decision::now(Ok(())).await, Ok(()));
    }
}
