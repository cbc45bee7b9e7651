//! How many gateways share an app's budget, and the share one keeps while Redis is unreachable.
//!
//! While Redis answers, each gateway announces itself in one sorted set in the app's hash slot
//! (`{chat-gateway:<sdkappid>}:fleet`: a random id per process, scored by Redis's time), which
//! forgets members silent for [`FLEET_STALE`] and expires whole when the fleet is gone. The
//! count it reads back sets its fallback: a [`LocalLimiter`] at `1 / fleet size` of each budget,
//! so that a fleet limiting alone stays near the budget instead of multiplying it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use redis::RedisError;

use super::redis_conn::RedisConn;
use super::LocalLimiter;
use crate::config::{ApiLimits, GroupLimits, RateLimitConfig};
use crate::metrics::Metrics;

/// How often a gateway announces itself while Redis answers.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// A gateway not heard from for this long no longer counts (a few announcements missed).
pub const FLEET_STALE: Duration = Duration::from_secs(5);
/// The largest fleet counted; the set never holds more members.
pub const MAX_FLEET: u32 = 10_000;

/// One announcement: add or refresh this gateway, forget the silent and any past the cap,
/// keep the set expiring, and count. Redis's clock, so that the hosts' clocks do not matter.
const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], stale)
return redis.call('ZCARD', KEYS[1])
";

/// `value / fleet`, rounded down (the fleet together never exceeds the budget), at least 1.
pub fn share(value: u32, fleet: u32) -> u32 {
    (value / fleet.max(1)).max(1)
}

/// The budgets one of `fleet` gateways keeps: each rate and burst at its share.
pub fn share_of(config: &RateLimitConfig, fleet: u32) -> RateLimitConfig {
    RateLimitConfig {
        group_per_second: share(config.group_per_second, fleet),
        group_burst: share(config.group_burst, fleet),
        app_per_second: share(config.app_per_second, fleet),
        app_burst: share(config.app_burst, fleet),
        groups: config
            .groups
            .iter()
            .map(|table| GroupLimits {
                per_second: share(table.per_second, fleet),
                burst: share(table.burst, fleet),
                ..table.clone()
            })
            .collect(),
        apis: config
            .apis
            .iter()
            .map(|api| ApiLimits {
                per_second: share(api.per_second, fleet),
                burst: share(api.burst, fleet),
                ..api.clone()
            })
            .collect(),
        ..config.clone()
    }
}

/// This gateway's place in the fleet, and the local limiter it falls back to.
pub struct Fleet {
    id: String,
    /// The app's set, and the budgets whose share the fallback keeps: both may change with a
    /// reloaded config (a new sdkappid, new budgets).
    budgets: ArcSwap<(String, RateLimitConfig)>,
    /// `rate_limit.fallback_fleet_size`: 0 to learn it.
    fixed: AtomicU32,
    /// The fleet size the fallback limiter was built for.
    size: AtomicU32,
    /// The fallback limiter: replaced only while Redis answers (it is not deciding then, but
    /// for a check that timed out), so a share once in force stays through an outage.
    local: ArcSwap<LocalLimiter>,
    gauge: IntGauge,
    /// Redis has answered once.
    reached: AtomicBool,
    /// The share of a gateway that never reached Redis has been logged.
    said_never: AtomicBool,
    /// An announcement's refusal has been logged.
    said_refused: AtomicBool,
}

impl Fleet {
    pub fn new(config: &RateLimitConfig, prefix: &str, metrics: &Metrics) -> Self {
        let fixed = config.fallback_fleet_size;
        let size = fixed.max(1);
        let gauge = metrics.register_gauge(
            "chat_gateway_rate_limit_fleet_size",
            "How many gateways share the rate-limit budgets: each keeps 1/this of every budget while Redis is unreachable.",
        );
        gauge.set(i64::from(size));
        Fleet {
            id: format!("{:016x}", rand::random::<u64>()),
            budgets: ArcSwap::from_pointee((format!("{prefix}:fleet"), config.clone())),
            fixed: AtomicU32::new(fixed),
            size: AtomicU32::new(size),
            local: ArcSwap::from_pointee(LocalLimiter::new(&share_of(config, size))),
            gauge,
            reached: AtomicBool::new(false),
            said_never: AtomicBool::new(false),
            said_refused: AtomicBool::new(false),
        }
    }

    /// The fallback limiter in force.
    pub fn local(&self) -> Arc<LocalLimiter> {
        self.local.load_full()
    }

    /// A reloaded config: the fallback keeps its share of the new budgets over the same state
    /// (nothing spent is given back), a new `fallback_fleet_size` applies at once, and the
    /// announcements go to the app's set under `prefix`.
    pub fn rebudget(&self, config: &RateLimitConfig, prefix: &str) {
        self.budgets
            .store(Arc::new((format!("{prefix}:fleet"), config.clone())));
        let fixed = config.fallback_fleet_size;
        let size = match (self.fixed.swap(fixed, Ordering::Relaxed), fixed) {
            (_, 0) if self.reached.load(Ordering::Relaxed) => self.size(),
            (_, 0) => 1,
            (_, fixed) => fixed,
        };
        self.resize(size, true);
    }

    /// The fleet size the fallback limiter keeps its share for.
    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Redis answered: an outage from now on is not one of a gateway that never reached it.
    pub fn reached(&self) {
        self.reached.store(true, Ordering::Relaxed);
    }

    /// The first outage of a gateway that never reached Redis: says which share it keeps.
    pub fn never_reached(&self) {
        if self.reached.load(Ordering::Relaxed) || self.said_never.swap(true, Ordering::Relaxed) {
            return;
        }
        let size = self.size();
        if self.fixed.load(Ordering::Relaxed) > 0 {
            tracing::warn!(fleet_size = size, "Redis never reached: each rate-limit budget is kept at 1/{size} here (rate_limit.fallback_fleet_size) until it is");
        } else {
            tracing::warn!(fleet_size = 1, "Redis never reached and rate_limit.fallback_fleet_size is 0: this gateway keeps each whole rate-limit budget until Redis tells it the fleet's size; set fallback_fleet_size to the number of gateways to keep a share");
        }
    }

    /// Announces this gateway and learns the fleet's size; call only while Redis answers.
    /// A Redis error (an ACL without the sorted-set commands) is logged once and the last size
    /// stays; a failed connection is returned, as a failed check is.
    pub async fn announce(&self, conn: &RedisConn) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("EVAL");
        let key = self.budgets.load().0.clone();
        cmd.arg(ANNOUNCE)
            .arg(1)
            .arg(key)
            .arg(&self.id)
            .arg(u64::try_from(FLEET_STALE.as_millis()).unwrap_or(u64::MAX))
            .arg(MAX_FLEET);
        match conn.query::<i64>(&cmd).await {
            Ok(count) => {
                self.learn(u32::try_from(count).unwrap_or(1));
                Ok(())
            }
            Err(e) if e.code().is_some() => {
                if !self.said_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(code = e.code(), "Redis refuses the fleet announcement (EVAL of ZADD / ZREMRANGEBYSCORE / ZCARD on the {{chat-gateway:<sdkappid>}}:fleet key): the fleet size stays at {} while Redis is unreachable", self.size());
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The fleet counted `count` gateways (itself included).
    fn learn(&self, count: u32) {
        self.reached.store(true, Ordering::Relaxed);
        let size = match self.fixed.load(Ordering::Relaxed) {
            0 => count.clamp(1, MAX_FLEET),
            fixed => fixed,
        };
        self.resize(size, false);
    }

    /// Keeps `size`'s share from now on (of new budgets too, when `budgets_changed`).
    fn resize(&self, size: u32, budgets_changed: bool) {
        let resized = self.size.swap(size, Ordering::Relaxed) != size;
        if resized || budgets_changed {
            // Over the same state: a new share refills no bucket.
            let budgets = self.budgets.load();
            let local = self.local.load().rebudgeted(&share_of(&budgets.1, size));
            self.local.store(Arc::new(local));
            self.gauge.set(i64::from(size));
        }
        if resized {
            tracing::info!(
                fleet_size = size,
                "while Redis is unreachable this gateway keeps 1/{size} of each rate-limit budget"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_rounds_down_and_is_at_least_one() {
        assert_eq!(share(200, 1), 200);
        assert_eq!(share(200, 3), 66);
        assert_eq!(share(10, 3), 3);
        assert_eq!(share(2, 3), 1, "at least 1");
        assert_eq!(share(1, 10_000), 1);
        assert_eq!(share(7, 0), 7, "no fleet counted is a fleet of one");
        // The fleet together stays within the budget whenever the share is above 1.
        for (value, fleet) in [(200u32, 3u32), (40, 7), (100, 30), (20, 20)] {
            assert!(share(value, fleet) * fleet <= value, "{value}/{fleet}");
        }
    }

    #[test]
    fn each_rate_and_burst_is_shared_and_the_rest_kept() {
        let config = RateLimitConfig {
            group_per_second: 20,
            group_burst: 40,
            app_per_second: 200,
            app_burst: 20,
            max_tracked_groups: 77,
            ..RateLimitConfig::default()
        };
        let shared = share_of(&config, 4);
        assert_eq!(
            (
                shared.group_per_second,
                shared.group_burst,
                shared.app_per_second,
                shared.app_burst
            ),
            (5, 10, 50, 5)
        );
        assert_eq!(shared.max_tracked_groups, 77);
        assert_eq!(share_of(&config, 1), config);
        let thin = share_of(&config, 1000);
        assert_eq!(
            (thin.group_per_second, thin.group_burst, thin.app_burst),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_fixed_size_wins_and_a_learned_one_replaces_the_fallback() {
        let metrics = Metrics::new();
        let config = RateLimitConfig {
            app_per_second: 90,
            app_burst: 9,
            ..RateLimitConfig::default()
        };
        let fleet = Fleet::new(&config, "{chat-gateway:1}", &metrics);
        assert_eq!(fleet.size(), 1, "never reached Redis: the whole budget");
        let first = fleet.local();
        fleet.learn(3);
        assert_eq!(fleet.size(), 3);
        assert_eq!(fleet.gauge.get(), 3);
        assert!(!Arc::ptr_eq(&first, &fleet.local()), "rebuilt at 1/3");
        let update = crate::api::ApiTable::new(&crate::config::ApiAllowList::counters())
            .route("/v4/group_open_http_svc/update_group_counter")
            .expect("allowed");
        let passed = (0..9)
            .filter(|_| fleet.local().check_now(&update, None).is_ok())
            .count();
        assert_eq!(passed, 3, "a third of the app's burst of 9");
        let second = fleet.local();
        fleet.learn(3);
        assert!(Arc::ptr_eq(&second, &fleet.local()), "same size: kept");
        fleet.learn(0);
        assert_eq!(fleet.size(), 1, "itself at least");

        let fixed = Fleet::new(
            &RateLimitConfig {
                fallback_fleet_size: 4,
                ..config
            },
            "{chat-gateway:1}",
            &Metrics::new(),
        );
        assert_eq!(fixed.size(), 4);
        fixed.learn(9);
        assert_eq!(fixed.size(), 4, "a fixed size is not learned");
    }

    #[test]
    fn overrides_are_shared_too() {
        use crate::config::GroupMatch;
        let config = RateLimitConfig {
            groups: vec![GroupLimits {
                matches: GroupMatch::Prefix("vip-".into()),
                per_second: 100,
                burst: 7,
            }],
            apis: vec![ApiLimits {
                api: "openim/sendmsg".into(),
                per_second: 40,
                burst: 2,
            }],
            ..RateLimitConfig::default()
        };
        let shared = share_of(&config, 4);
        assert_eq!(
            (shared.groups[0].per_second, shared.groups[0].burst),
            (25, 1)
        );
        assert_eq!(shared.groups[0].matches, config.groups[0].matches);
        assert_eq!((shared.apis[0].per_second, shared.apis[0].burst), (10, 1));
        assert_eq!(shared.apis[0].api, "openim/sendmsg");
    }
}
