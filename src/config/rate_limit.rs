//! `[rate_limit]`: the per-group and per-app budgets, how many groups are tracked, and where
//! the budgets live (this process, or a Redis the fleet shares).

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::limit_overrides::{read_apis, read_groups};
pub use super::limit_overrides::{ApiLimits, GroupLimits, GroupMatch};
use super::reader::{section, Reader};
use super::redis::{check_url, is_tls, redact, PasswordSource, RedisAuth, RedisBackend, RedisUrl};
use super::redis_mode::{self, read_nodes, RedisMode};

/// Where the budgets live: this process, or a Redis the whole fleet shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "local" => Ok(Backend::Local),
            "redis" => Ok(Backend::Redis),
            _ => Err("must be \"local\" or \"redis\"".into()),
        }
    }
}

/// What the limits do with a call over budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitMode {
    /// Refuse it (10006 / 60007).
    #[default]
    Enforce,
    /// Send it all the same, and count it in `chat_gateway_rate_limit_shadow_total`.
    Shadow,
}

impl std::str::FromStr for LimitMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "enforce" => Ok(LimitMode::Enforce),
            "shadow" => Ok(LimitMode::Shadow),
            _ => Err("must be \"enforce\" or \"shadow\"".into()),
        }
    }
}

/// The largest `fallback_fleet_size`.
const MAX_FLEET_SIZE: i64 = 10_000;

/// Requests per second and bursts: 1 to a billion.
fn rate(r: &mut Reader, s: &super::reader::Section, key: &str) -> Option<u32> {
    r.positive_int(s, key, 1_000_000_000)
}

section! {
    /// The budgets, and where they live.
    pub struct RateLimitConfig in "rate_limit" {
        /// Requests per second per GroupId.
        group_per_second: u32 = 20, rate;
        /// How many requests per GroupId may come at once.
        group_burst: u32 = 40, rate;
        /// Requests per second per API for the whole app.
        app_per_second: u32 = 200, rate;
        /// How many requests per API may come at once; by default a tenth of `app_per_second`.
        app_burst: u32 = RateLimitConfig::default_app_burst(200), rate;
        /// GroupIds tracked at once; past it new groups share one bucket until a cleanup.
        max_tracked_groups: usize = 100_000, |r, s, k| r.positive_int(s, k, 100_000_000);
        /// How often quiet groups are forgotten.
        cleanup_interval: Duration = Duration::from_secs(10), |r, s, k| r.duration(s, k, false);
        /// `enforce` refuses what is over budget; `shadow` only counts it and sends it.
        mode: LimitMode = LimitMode::Enforce, |r, s, k| r.parsed(s, k, str::parse);
        /// Where the budgets live: `local` or `redis`.
        backend: Backend = Backend::Local, |r, s, k| r.parsed(s, k, str::parse);
        /// With `backend = "redis"`: `standalone` (one Redis at redis_url), `cluster` or
        /// `sentinel` (found through redis_nodes).
        redis_mode: RedisMode = RedisMode::Standalone, |r, s, k| r.parsed(s, k, str::parse);
        /// With `redis_mode = "cluster"`: seed nodes; `"sentinel"`: the sentinels.
        redis_nodes: Vec<String> = Vec::new(), read_nodes;
        /// With `redis_mode = "sentinel"`: the name the sentinels know the master by.
        redis_sentinel_master: Option<String> = None, Reader::optional_string;
        /// With `backend = "redis"`: its URL (no password in the file).
        redis_url: Option<String> = None, Reader::optional_string;
        /// With `backend = "redis"`: the environment variable holding its URL.
        redis_url_env: Option<String> = None, Reader::optional_string;
        /// With `backend = "redis"`: the ACL user the gateway authenticates as.
        redis_username: Option<String> = None, Reader::optional_string;
        /// With `backend = "redis"`: the environment variable holding the password.
        redis_password_env: Option<String> = None, Reader::optional_string;
        /// With `backend = "redis"`: the file holding the password (re-read when it changes).
        redis_password_file: Option<PathBuf> = None, Reader::path;
        /// With `rediss://`: PEM roots trusted for Redis's certificate.
        redis_ca_file: Option<PathBuf> = None, Reader::path;
        /// With `rediss://`: the client certificate (PEM) shown to Redis.
        redis_client_cert_file: Option<PathBuf> = None, Reader::path;
        /// With `rediss://`: the client certificate's key (PEM).
        redis_client_key_file: Option<PathBuf> = None, Reader::path;
        /// Longest a request waits for Redis before the local limiter answers.
        redis_timeout: Duration = Duration::from_millis(50), |r, s, k| r.duration(s, k, false);
        /// With `backend = "redis"`: while Redis is unreachable each gateway keeps 1/n of every
        /// budget; 0 learns n from Redis (the gateways announce themselves there).
        fallback_fleet_size: u32 = 0, |r, s, k| r.int_in(s, k, 0..=MAX_FLEET_SIZE, "must be an integer from 0 (learned from Redis) to 10000");
        /// `[[rate_limit.groups]]`: budgets of some GroupIds (exact ids or a prefix).
        groups: Vec<GroupLimits> = Vec::new(), read_groups;
        /// `[rate_limit.apis."service/command"]`: app-wide budgets of some APIs.
        apis: Vec<ApiLimits> = Vec::new(), read_apis;
    }
}

impl RateLimitConfig {
    /// The default app burst: a tenth of a second's worth, so that a full burst plus a second
    /// at the steady rate stays near Tencent's per-second ceiling.
    pub fn default_app_burst(app_per_second: u32) -> u32 {
        (app_per_second / 10).max(1)
    }

    /// The Redis the budgets live in, with `backend = "redis"`.
    pub fn redis(&self) -> Option<RedisBackend> {
        if self.backend != Backend::Redis {
            return None;
        }
        let url = match (&self.redis_url, &self.redis_url_env) {
            (Some(url), _) => RedisUrl::Url(url.clone()),
            (None, Some(var)) => RedisUrl::Env(var.clone()),
            (None, None) => RedisUrl::Url(String::new()),
        };
        Some(RedisBackend {
            url,
            timeout: self.redis_timeout,
            auth: self.redis_auth(),
        })
    }

    fn redis_auth(&self) -> RedisAuth {
        let password = match (&self.redis_password_env, &self.redis_password_file) {
            (Some(var), _) => Some(PasswordSource::Env(var.clone())),
            (None, Some(path)) => Some(PasswordSource::File(path.clone())),
            (None, None) => None,
        };
        let client_cert = self
            .redis_client_cert_file
            .clone()
            .zip(self.redis_client_key_file.clone());
        RedisAuth {
            username: self.redis_username.clone(),
            password,
            ca_file: self.redis_ca_file.clone(),
            client_cert,
        }
    }

    /// The Redis keys that are set, each with its value as `check-config` may show it.
    fn redis_auth_keys(&self) -> Vec<(&'static str, String)> {
        let path =
            |p: &Option<PathBuf>| p.as_ref().map(|p| format!("{:?}", p.display().to_string()));
        [
            (
                "redis_username",
                self.redis_username.as_ref().map(|u| format!("{u:?}")),
            ),
            (
                "redis_password_env",
                self.redis_password_env.as_ref().map(|v| format!("{v:?}")),
            ),
            ("redis_password_file", path(&self.redis_password_file)),
            ("redis_ca_file", path(&self.redis_ca_file)),
            ("redis_client_cert_file", path(&self.redis_client_cert_file)),
            ("redis_client_key_file", path(&self.redis_client_key_file)),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
    }
}

pub fn read(r: &mut Reader, t: &Table) -> RateLimitConfig {
    let mut config = RateLimitConfig::read_keys(r, t);
    if !t.contains_key("app_burst") {
        config.app_burst = RateLimitConfig::default_app_burst(config.app_per_second);
    }
    check_backend(r, &config);
    redis_mode::check(r, &config);
    config
}

/// The Redis keys: set only with `backend = "redis"`, and then exactly one source of the URL
/// (offline checks only: scheme, syntax, no password in the file, certificate checks on).
fn check_backend(r: &mut Reader, config: &RateLimitConfig) {
    let url = config.redis_url.as_deref();
    let shown_url = url.map(|url| format!("{:?}", redact(url)));
    let env = config.redis_url_env.as_deref();
    let shown_env = env.map(|var| format!("{var:?}"));
    if config.backend == Backend::Local {
        let why =
            "set only with backend = \"redis\" (with backend = \"local\" it would be ignored)";
        if url.is_some() {
            r.problem("rate_limit.redis_url", shown_url, why);
        }
        if env.is_some() {
            r.problem("rate_limit.redis_url_env", shown_env, why);
        }
        if config.fallback_fleet_size > 0 {
            let shown = Some(config.fallback_fleet_size.to_string());
            r.problem("rate_limit.fallback_fleet_size", shown, why);
        }
        for (key, value) in config.redis_auth_keys() {
            r.problem(&format!("rate_limit.{key}"), Some(value), why);
        }
    } else if config.redis_mode != RedisMode::Standalone {
        check_auth(r, config);
        let why = redis_mode::url_refused(config.redis_mode);
        if url.is_some() {
            r.problem("rate_limit.redis_url", shown_url, &why);
        }
        if env.is_some() {
            r.problem("rate_limit.redis_url_env", shown_env, &why);
        }
    } else {
        check_auth(r, config);
        match (url, env) {
            (Some(url), None) => {
                if let Err(e) = check_url(url, false) {
                    r.problem("rate_limit.redis_url", shown_url, &e.to_string());
                }
            }
            (None, Some("")) => r.problem("rate_limit.redis_url_env", None, "must name a variable"),
            (None, Some(_)) => {}
            (Some(_), Some(_)) | (None, None) => r.problem(
                "rate_limit.backend",
                Some("\"redis\"".into()),
                "needs exactly one of redis_url and redis_url_env",
            ),
        }
    }
    if config.redis_timeout > Duration::from_secs(10) {
        let shown = humantime::format_duration(config.redis_timeout).to_string();
        r.problem(
            "rate_limit.redis_timeout",
            Some(format!("{shown:?}")),
            "must be at most 10s: requests wait this long when Redis is slow",
        );
    }
}

/// The user, password source and TLS files with `backend = "redis"` (offline: which keys go
/// together; `check-config` reads the files too).
fn check_auth(r: &mut Reader, config: &RateLimitConfig) {
    let shown = |key: &str| {
        config
            .redis_auth_keys()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    };
    if config.redis_username.as_deref() == Some("") {
        r.problem(
            "rate_limit.redis_username",
            shown("redis_username"),
            "must not be empty",
        );
    }
    match (&config.redis_password_env, &config.redis_password_file) {
        (Some(_), Some(_)) => r.problem(
            "rate_limit.redis_password_file",
            shown("redis_password_file"),
            "set one of redis_password_env and redis_password_file, not both",
        ),
        (Some(var), None) if var.is_empty() => r.problem(
            "rate_limit.redis_password_env",
            None,
            "must name a variable",
        ),
        _ => {}
    }
    match (
        &config.redis_client_cert_file,
        &config.redis_client_key_file,
    ) {
        (Some(_), None) => r.problem(
            "rate_limit.redis_client_cert_file",
            shown("redis_client_cert_file"),
            "needs redis_client_key_file too (the certificate's private key)",
        ),
        (None, Some(_)) => r.problem(
            "rate_limit.redis_client_key_file",
            shown("redis_client_key_file"),
            "needs redis_client_cert_file too (the certificate the key belongs to)",
        ),
        _ => {}
    }
    // A URL from the environment is checked at start-up and by check-config. The nodes of a
    // cluster or the sentinels share one scheme (checked with redis_nodes).
    let (url_key, url) = match config.redis_mode {
        RedisMode::Standalone => ("redis_url", config.redis_url.as_deref()),
        _ => (
            "redis_nodes",
            config.redis_nodes.first().map(String::as_str),
        ),
    };
    if let Some(url) = url.filter(|url| !is_tls(url)) {
        for key in [
            "redis_ca_file",
            "redis_client_cert_file",
            "redis_client_key_file",
        ] {
            if let Some(value) = shown(key) {
                let why = format!(
                    "used only over TLS, but rate_limit.{url_key} {:?} is not rediss://",
                    redact(url)
                );
                r.problem(&format!("rate_limit.{key}"), Some(value), &why);
            }
        }
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

    #[test]
    fn fallback_fleet_size_is_0_to_10000_and_only_with_redis() {
        let redis = "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n";
        for (value, ok) in [
            ("0", true),
            ("4", true),
            ("10000", true),
            ("10001", false),
            ("-1", false),
            ("\"3\"", false),
        ] {
            let text = format!("{MINIMAL}[rate_limit]\n{redis}fallback_fleet_size = {value}\n");
            match Config::parse(&text) {
                Ok(config) => {
                    assert!(ok, "{value} accepted");
                    assert_eq!(config.rate_limit.fallback_fleet_size.to_string(), value);
                }
                Err(problems) => {
                    assert!(!ok, "{value}: {:?}", problems.0);
                    assert_eq!(problems.0[0].key, "rate_limit.fallback_fleet_size");
                    assert!(problems.0[0]
                        .why
                        .contains("0 (learned from Redis) to 10000"));
                }
            }
        }
        let text = format!("{MINIMAL}[rate_limit]\nfallback_fleet_size = 3\n");
        let problems = Config::parse(&text).expect_err("local backend").0;
        assert_eq!(problems[0].key, "rate_limit.fallback_fleet_size");
        assert!(
            Config::parse(&format!("{MINIMAL}[rate_limit]\nfallback_fleet_size = 0\n")).is_ok()
        );
    }

    #[test]
    fn redis_credentials_and_tls_keys_go_together() {
        let tls = "backend = \"redis\"\nredis_url = \"rediss://r:6380/0\"\n";
        for (lines, key) in [
            (
                "redis_password_env = \"V\"\nredis_password_file = \"/p\"",
                "rate_limit.redis_password_file",
            ),
            ("redis_password_env = \"\"", "rate_limit.redis_password_env"),
            ("redis_username = \"\"", "rate_limit.redis_username"),
            (
                "redis_client_cert_file = \"/c\"",
                "rate_limit.redis_client_cert_file",
            ),
            (
                "redis_client_key_file = \"/k\"",
                "rate_limit.redis_client_key_file",
            ),
        ] {
            let text = format!("{MINIMAL}[rate_limit]\n{tls}{lines}\n");
            let problems = Config::parse(&text).expect_err("refused").0;
            assert_eq!(problems.len(), 1, "{lines}: {problems:?}");
            assert_eq!(problems[0].key, key, "{lines}");
        }
        let plain = "backend = \"redis\"\nredis_url = \"redis://r:6379/0\"\n";
        let text = format!("{MINIMAL}[rate_limit]\n{plain}redis_client_cert_file = \"/c\"\nredis_client_key_file = \"/k\"\n");
        let problems = Config::parse(&text).expect_err("refused").0;
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rate_limit.redis_client_cert_file",
                "rate_limit.redis_client_key_file"
            ]
        );
        assert!(problems[0].why.contains("not rediss://"), "{}", problems[0]);
        let text = format!("{MINIMAL}[rate_limit]\n{tls}redis_username = \"gw\"\nredis_password_file = \"/p\"\nredis_ca_file = \"/ca\"\nredis_client_cert_file = \"/c\"\nredis_client_key_file = \"/k\"\n");
        let auth = Config::parse(&text)
            .expect("valid")
            .rate_limit
            .redis()
            .expect("redis")
            .auth;
        assert_eq!(auth.username.as_deref(), Some("gw"));
        assert_eq!(
            auth.password,
            Some(crate::config::redis::PasswordSource::File("/p".into()))
        );
        assert_eq!(auth.client_cert, Some(("/c".into(), "/k".into())));
    }
}
