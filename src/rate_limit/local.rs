//! The in-process limiter: GCRA buckets from `governor`, one per GroupId (capped, cleaned on a
//! timer) and one per API for the app. Decides at once, without I/O.
//!
//! A governor keyed limiter has one quota for all its keys, so there is one per distinct
//! budget (the default and each override's), chosen by the [`Overrides`] lookup. They all
//! keep their keys' state in one [`KeptState`], which outlives them: a reload builds new
//! limiters over it, and no bucket is refilled (see [`super::kept`]).

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::Quota;

use super::kept::{KeptState, Numbers, Side, View};
use super::overrides::{Limits, Overrides};
use super::{Decision, RateLimiter, Refusal, Scope};
use crate::api::Api;
use crate::config::RateLimitConfig;

/// Group keys are keyed 64-bit hashes of the GroupId: no allocation per request, 8 bytes per
/// key, and with a per-process random hash key nobody can aim for a collision.
type GroupKey = u64;

/// The overflow buckets (one per group budget, past `max_tracked_groups`) take the keys from
/// here up; a GroupId whose hash lands there is moved below.
const OVERFLOW_KEYS: GroupKey = u64::MAX - (1 << 24);

type GroupLimiter<C> =
    governor::RateLimiter<GroupKey, View<C>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type AppLimiter<C> = governor::RateLimiter<u64, View<C>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The in-process limiter.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    /// One keyed limiter per distinct group budget, in the order of the lookup's quotas.
    groups: Vec<GroupLimiter<C>>,
    /// One bucket per API (by its name's key); the names are bounded by the allow-list's labels.
    /// One keyed limiter per distinct app budget.
    apps: Vec<AppLimiter<C>>,
    overrides: Overrides,
    /// Every key's state, shared with the limiters built before and after this one.
    state: Arc<KeptState<C>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn quota(limits: &Limits) -> Quota {
    // The config guarantees positive values; 1 stands in should that ever change.
    let rate = NonZeroU32::new(limits.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

fn numbers(limits: &Limits) -> Numbers {
    Numbers::new(limits.per_second, limits.burst)
}

impl LocalLimiter<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        LocalLimiter::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let state = Arc::new(KeptState::new(clock.clone()));
        LocalLimiter::with_state(config, state, clock)
    }

    /// A limiter with `config`'s budgets over the state of keys that `state` already holds:
    /// nothing spent is given back.
    pub fn with_state(config: &RateLimitConfig, state: Arc<KeptState<C>>, clock: C) -> Self {
        let overrides = Overrides::new(config);
        let groups = (overrides.group_quotas().iter().enumerate())
            .map(|(i, limits)| {
                let side = Side::Groups {
                    cap: config.max_tracked_groups,
                    overflow: OVERFLOW_KEYS.saturating_add(i as u64),
                };
                let view = View::new(state.clone(), side, numbers(limits));
                governor::RateLimiter::new(quota(limits), view, clock.clone())
            })
            .collect();
        let apps = (overrides.app_quotas().iter())
            .map(|limits| {
                let view = View::new(state.clone(), Side::Apps, numbers(limits));
                governor::RateLimiter::new(quota(limits), view, clock.clone())
            })
            .collect();
        LocalLimiter {
            groups,
            apps,
            overrides,
            state,
            clock,
        }
    }

    /// The same keys' state under `config`'s budgets.
    pub fn rebudgeted(&self, config: &RateLimitConfig) -> Self {
        LocalLimiter::with_state(config, self.state.clone(), self.clock.clone())
    }

    fn group_key(&self, group: &str) -> GroupKey {
        let key = self.state.hasher.hash_one(group);
        // Keep the overflow keys for the overflow buckets.
        if key >= OVERFLOW_KEYS {
            key - (1 << 24)
        } else {
            key
        }
    }
}

impl<C> LocalLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Takes a token for one call now, or says which limit refused it. Group first, then app:
    /// a call refused for its group spends nothing of the app's budget.
    pub fn check_now(&self, api: &Api, group: Option<&str>) -> Result<(), Refusal> {
        if let Some(group) = group {
            let limiter = &self.groups[self.overrides.group(group)];
            if let Err(not_until) = limiter.check_key(&self.group_key(group)) {
                return Err(Refusal {
                    scope: Scope::Group,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                    group_spent: false,
                });
            }
        }
        let limiter = &self.apps[self.overrides.app(&api.name)];
        limiter.check_key(&api.key).map_err(|not_until| Refusal {
            scope: Scope::App,
            retry_after: not_until.wait_time_from(self.clock.now()),
            // The group's token was taken just above, and governor gives none back.
            group_spent: group.is_some(),
        })
    }
}

impl<C> RateLimiter for LocalLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    fn check(&self, api: &Api, group: Option<&str>) -> Decision {
        Decision::now(self.check_now(api, group))
    }

    fn decides_at_once(&self) -> bool {
        true
    }

    fn cleanup(&self) -> usize {
        self.state.forget_full()
    }

    fn tracked_groups(&self) -> usize {
        self.state.groups.len()
    }

    fn rebudgeted(
        &self,
        config: &RateLimitConfig,
        _: u64,
    ) -> Result<Option<Arc<dyn RateLimiter>>, super::SetupError> {
        Ok(Some(Arc::new(LocalLimiter::rebudgeted(self, config))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::api::ApiTable;
    use crate::config::ApiAllowList;
    use governor::clock::FakeRelativeClock;

    fn config(group_rate: u32, group_burst: u32, app_rate: u32, app_burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            group_per_second: group_rate,
            group_burst,
            app_per_second: app_rate,
            app_burst,
            max_tracked_groups: 1_000_000,
            cleanup_interval: Duration::from_secs(10),
            ..RateLimitConfig::default()
        }
    }

    fn api() -> Api {
        ApiTable::new(&ApiAllowList::counters())
            .route("/v4/group_open_http_svc/update_group_counter")
            .expect("allowed")
    }

    #[test]
    fn exactly_burst_pass_then_retry_after_one_interval() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&config(2, 5, 1000, 1000), clock.clone());
        for i in 0..5 {
            assert_eq!(limiter.check_now(&api(), Some("g")), Ok(()), "request {i}");
        }
        let refusal = limiter
            .check_now(&api(), Some("g"))
            .expect_err("over the burst");
        assert_eq!(refusal.scope, Scope::Group);
        assert_eq!(refusal.retry_after, Duration::from_millis(500), "1/rate");
        assert_eq!(refusal.retry_after_secs(), 1);
        clock.advance(Duration::from_millis(499));
        assert!(limiter.check_now(&api(), Some("g")).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            limiter.check_now(&api(), Some("g")),
            Ok(()),
            "one more after 1/rate"
        );
        assert!(limiter.check_now(&api(), Some("g")).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let clock = FakeRelativeClock::default();
        // One request per 4 seconds.
        let limiter = LocalLimiter::with_clock(
            &RateLimitConfig {
                group_per_second: 1,
                ..config(1, 1, 1000, 1000)
            },
            clock.clone(),
        );
        assert!(limiter.check_now(&api(), Some("g")).is_ok());
        let refusal = limiter.check_now(&api(), Some("g")).expect_err("refused");
        assert_eq!(refusal.retry_after_secs(), 1);
        clock.advance(Duration::from_millis(100));
        let refusal = limiter.check_now(&api(), Some("g")).expect_err("refused");
        assert_eq!(refusal.retry_after, Duration::from_millis(900));
        assert_eq!(refusal.retry_after_secs(), 1);
        let r = Refusal {
            scope: Scope::Group,
            retry_after: Duration::from_millis(2001),
            group_spent: false,
        };
        assert_eq!(r.retry_after_secs(), 3);
        let r = Refusal {
            scope: Scope::Group,
            retry_after: Duration::ZERO,
            group_spent: false,
        };
        assert_eq!(r.retry_after_secs(), 1);
    }

    #[test]
    fn groups_are_independent() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&config(1, 2, 1000, 1000), clock);
        assert!(limiter.check_now(&api(), Some("a")).is_ok());
        assert!(limiter.check_now(&api(), Some("a")).is_ok());
        assert!(limiter.check_now(&api(), Some("a")).is_err());
        assert!(limiter.check_now(&api(), Some("b")).is_ok());
        assert!(limiter.check_now(&api(), Some("b")).is_ok());
        assert!(limiter.check_now(&api(), Some("b")).is_err());
    }

    #[test]
    fn app_limit_caps_the_sum_over_groups() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&config(100, 100, 10, 10), clock.clone());
        let passed = (0..50)
            .filter(|i| {
                limiter
                    .check_now(&api(), Some(&format!("group-{i}")))
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 10);
        let refusal = limiter
            .check_now(&api(), Some("fresh"))
            .expect_err("app limit");
        assert_eq!(refusal.scope, Scope::App);
        assert_eq!(refusal.retry_after, Duration::from_millis(100));
        // Another API has its own app budget.
        let get = ApiTable::new(&ApiAllowList::counters())
            .route("/v4/group_open_http_svc/get_group_counter")
            .expect("allowed");
        assert!(limiter.check_now(&get, Some("x")).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            (0..50)
                .filter(|_| limiter.check_now(&api(), None).is_ok())
                .count(),
            10,
            "refills at the app rate"
        );
    }

    #[test]
    fn a_group_refusal_spends_no_app_token() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&config(1, 1, 1, 2), clock);
        assert!(limiter.check_now(&api(), Some("hot")).is_ok());
        for _ in 0..10 {
            assert_eq!(
                limiter.check_now(&api(), Some("hot")).map_err(|r| r.scope),
                Err(Scope::Group)
            );
        }
        assert!(
            limiter.check_now(&api(), Some("cold")).is_ok(),
            "the app still had a token"
        );
    }

    #[test]
    fn tracked_groups_fall_back_after_cleanup() {
        let clock = FakeRelativeClock::default();
        let limiter =
            LocalLimiter::with_clock(&config(20, 40, 1_000_000, 1_000_000), clock.clone());
        for i in 0..100_000 {
            assert!(limiter
                .check_now(&api(), Some(&format!("live-{i}")))
                .is_ok());
        }
        assert_eq!(limiter.tracked_groups(), 100_000);
        // Still recent: nothing is dropped.
        assert_eq!(limiter.cleanup(), 100_000);
        // One quiet second later every group is as good as new.
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.cleanup(), 0);
    }

    #[test]
    fn past_the_cap_new_groups_share_one_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(
            &RateLimitConfig {
                max_tracked_groups: 3,
                ..config(1, 2, 1000, 1000)
            },
            clock.clone(),
        );
        for g in ["a", "b", "c"] {
            assert!(limiter.check_now(&api(), Some(g)).is_ok());
        }
        assert_eq!(limiter.tracked_groups(), 3);
        // New groups land in the overflow bucket (burst 2), tracked as one more key.
        assert!(limiter.check_now(&api(), Some("d")).is_ok());
        assert!(limiter.check_now(&api(), Some("e")).is_ok());
        assert_eq!(
            limiter.check_now(&api(), Some("f")).map_err(|r| r.scope),
            Err(Scope::Group)
        );
        assert_eq!(limiter.tracked_groups(), 4);
        // Tracked groups keep their own bucket.
        assert!(limiter.check_now(&api(), Some("a")).is_ok());
        clock.advance(Duration::from_secs(10));
        assert_eq!(limiter.cleanup(), 0);
        assert!(
            limiter.check_now(&api(), Some("f")).is_ok(),
            "room again after cleanup"
        );
    }

    #[test]
    fn new_budgets_refill_no_bucket_and_the_new_rate_applies_at_once() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(&config(1, 3, 1000, 1000), clock.clone());
        for _ in 0..3 {
            assert!(limiter.check_now(&api(), Some("g")).is_ok());
        }
        assert!(limiter.check_now(&api(), Some("g")).is_err());
        clock.advance(Duration::from_millis(10));
        let reloaded = limiter.rebudgeted(&config(4, 10, 1000, 1000));
        let refusal = reloaded
            .check_now(&api(), Some("g"))
            .expect_err("the burst stays spent under a larger one");
        assert_eq!(refusal.scope, Scope::Group);
        // The next token comes at the new rate (4/s), not the old one (1/s).
        clock.advance(Duration::from_millis(240));
        assert!(reloaded.check_now(&api(), Some("g")).is_err());
        clock.advance(Duration::from_millis(10));
        assert!(reloaded.check_now(&api(), Some("g")).is_ok());
        assert!(reloaded.check_now(&api(), Some("g")).is_err());
        // A group never seen gets the new burst.
        let fresh = (0..20)
            .filter(|_| reloaded.check_now(&api(), Some("fresh")).is_ok())
            .count();
        assert_eq!(fresh, 10);
        assert_eq!(reloaded.tracked_groups(), 2);
    }

    #[test]
    fn each_group_and_api_takes_its_own_budget() {
        use crate::config::{ApiLimits, GroupLimits, GroupMatch};
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(
            &RateLimitConfig {
                groups: vec![GroupLimits {
                    matches: GroupMatch::Prefix("slow-".into()),
                    per_second: 1,
                    burst: 1,
                }],
                apis: vec![ApiLimits {
                    api: "group_open_http_svc/get_group_counter".into(),
                    per_second: 1,
                    burst: 1,
                }],
                ..config(1, 3, 1000, 1000)
            },
            clock,
        );
        let passed = |group: &str| {
            (0..5)
                .filter(|_| limiter.check_now(&api(), Some(group)).is_ok())
                .count()
        };
        assert_eq!(passed("slow-1"), 1);
        assert_eq!(passed("fast"), 3);
        let get = ApiTable::new(&ApiAllowList::counters())
            .route("/v4/group_open_http_svc/get_group_counter")
            .expect("allowed");
        assert!(limiter.check_now(&get, None).is_ok());
        let refusal = limiter.check_now(&get, None).expect_err("its own budget");
        assert_eq!(refusal.scope, Scope::App);
        assert_eq!(limiter.tracked_groups(), 2);
    }
}
