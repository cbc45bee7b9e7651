//! `[rate_limit]`: the per-group and per-app budgets, and how many groups are tracked.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;
use super::redis::{read_backend, Backend};

pub const KEYS: &[&str] = &[
    "group_per_second",
    "group_burst",
    "app_per_second",
    "app_burst",
    "max_tracked_groups",
    "cleanup_interval",
    "backend",
    "redis_url",
    "redis_url_env",
    "redis_timeout",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub group_per_second: u32,
    pub group_burst: u32,
    pub app_per_second: u32,
    pub app_burst: u32,
    /// GroupIds tracked at once; past it new groups share one bucket until a cleanup.
    pub max_tracked_groups: usize,
    /// How often quiet groups are forgotten.
    pub cleanup_interval: Duration,
    /// Where the budgets live: this process, or a Redis the whole fleet shares.
    pub backend: Backend,
}

impl RateLimitConfig {
    /// The default app burst: a tenth of a second's worth, so that a full burst plus a second
    /// at the steady rate stays near Tencent's per-second ceiling.
    pub fn default_app_burst(app_per_second: u32) -> u32 {
        (app_per_second / 10).max(1)
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            group_per_second: 20,
            group_burst: 40,
            app_per_second: 200,
            app_burst: RateLimitConfig::default_app_burst(200),
            max_tracked_groups: 100_000,
            cleanup_interval: Duration::from_secs(10),
            backend: Backend::Local,
        }
    }
}

pub fn read(r: &mut Reader, t: &Table) -> RateLimitConfig {
    let d = RateLimitConfig::default();
    let rate = |r: &mut Reader, key: &str| r.positive_int(t, "rate_limit", key, 1_000_000_000);
    let app_per_second = rate(r, "app_per_second").map_or(d.app_per_second, |n| n as u32);
    RateLimitConfig {
        group_per_second: rate(r, "group_per_second").map_or(d.group_per_second, |n| n as u32),
        group_burst: rate(r, "group_burst").map_or(d.group_burst, |n| n as u32),
        app_per_second,
        app_burst: rate(r, "app_burst").map_or_else(
            || RateLimitConfig::default_app_burst(app_per_second),
            |b| b as u32,
        ),
        max_tracked_groups: r
            .positive_int(t, "rate_limit", "max_tracked_groups", 100_000_000)
            .map_or(d.max_tracked_groups, |n| n as usize),
        cleanup_interval: r
            .duration(t, "rate_limit", "cleanup_interval", false)
            .unwrap_or(d.cleanup_interval),
        backend: read_backend(r, t),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn rates_and_bursts_must_be_positive() {
        for (key, value) in [
            ("group_per_second", "0"),
            ("group_burst", "-1"),
            ("app_per_second", "0"),
            ("app_burst", "0"),
            ("max_tracked_groups", "0"),
            ("cleanup_interval", "\"0s\""),
            ("group_per_second", "2.5"),
            ("app_burst", "\"10\""),
        ] {
            let text = format!("{MINIMAL}[rate_limit]\n{key} = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{key} = {value}: {problems:?}");
            assert_eq!(problems[0].key, format!("rate_limit.{key}"));
            assert!(
                problems[0].why.contains("positive")
                    || problems[0].why.contains("more than zero")
                    || problems[0].why.contains("string"),
                "{}",
                problems[0]
            );
        }
    }
}
