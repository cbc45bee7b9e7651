//! The configuration file: TOML in, a typed and validated `Config` out; one file per section.
//!
//! Every problem is collected (key, value, why) rather than stopping at the first, so that
//! `check-config` can list them all at once; unknown sections and keys are problems too. Each
//! section declares each of its keys once (`section!`: field, default, doc line, how it is
//! read); the reader, the unknown-key check and `check-config` all take them from there. The
//! secret key never sits in the TOML.

pub mod apis;
pub mod auth;
pub mod chat;
pub mod coalesce;
mod limit_overrides;
pub mod rate_limit;
mod reader;
pub mod redis;
pub mod redis_mode;
pub mod server;
pub mod traces;
pub mod upstream;

use std::fmt;
use std::path::Path;

use toml::Table;

pub use apis::{is_api_name, ApiAllowList, ApisConfig};
pub use auth::AuthConfig;
pub use chat::{ChatConfig, ChatKeys, Endpoint, SecretSource};
pub use coalesce::CoalesceConfig;
pub use rate_limit::{ApiLimits, Backend, GroupLimits, GroupMatch, LimitMode, RateLimitConfig};
pub use reader::MAX_DURATION;
pub use redis::{RedisBackend, RedisUrl};
pub use redis_mode::{RedisMode, Topology};
pub use server::{ServerConfig, TlsFiles};
pub use traces::{TraceSettings, TracingConfig};
pub use upstream::UpstreamConfig;

use reader::Reader;

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `chat.region`; empty for the file as a whole.
    pub key: String,
    /// The offending value as written (never a secret: secrets are not in the file).
    pub value: Option<String>,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.key[..], &self.value) {
            ("", _) => write!(f, "{}", self.why),
            (key, Some(value)) => write!(f, "{key} = {value}: {}", self.why),
            (key, None) => write!(f, "{key}: {}", self.why),
        }
    }
}

/// All the problems of one file.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub chat: ChatConfig,
    pub upstream: UpstreamConfig,
    pub rate_limit: RateLimitConfig,
    pub auth: AuthConfig,
    pub apis: ApiAllowList,
    pub coalesce: CoalesceConfig,
    pub tracing: TracingConfig,
}

/// The sections and the keys each may hold; anything else is an error.
const SCHEMA: [(&str, &[&str]); 8] = [
    (server::SECTION, server::KEYS),
    (chat::SECTION, chat::KEYS),
    (upstream::SECTION, upstream::KEYS),
    (rate_limit::SECTION, rate_limit::KEYS),
    (auth::SECTION, auth::KEYS),
    (apis::SECTION, apis::KEYS),
    (coalesce::SECTION, coalesce::KEYS),
    (traces::SECTION, traces::KEYS),
];

impl Config {
    /// The app's `[chat]` section with every other section at its defaults: what sandbox mode
    /// and tests start from.
    pub fn new(chat: ChatConfig) -> Self {
        Config {
            server: ServerConfig::default(),
            chat,
            upstream: UpstreamConfig::default(),
            rate_limit: RateLimitConfig::default(),
            auth: AuthConfig::default(),
            apis: ApiAllowList::default(),
            coalesce: CoalesceConfig::default(),
            tracing: TracingConfig::default(),
        }
    }

    /// Reads and checks a file. Only the file's own content is checked here; see
    /// [`crate::preflight::check_environment`] for the files it names.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                key: String::new(),
                value: None,
                why: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Whether `other` holds the same value at a dotted key (`server.listen`); `None` for a
    /// key that does not exist.
    pub fn same_at(&self, other: &Config, key: &str) -> Option<bool> {
        let (section, name) = key.split_once('.')?;
        match section {
            server::SECTION => self.server.same_key(&other.server, name),
            chat::SECTION => self.chat.same_key(&other.chat, name),
            upstream::SECTION => self.upstream.same_key(&other.upstream, name),
            rate_limit::SECTION => self.rate_limit.same_key(&other.rate_limit, name),
            auth::SECTION => self.auth.same_key(&other.auth, name),
            coalesce::SECTION => self.coalesce.same_key(&other.coalesce, name),
            _ => None,
        }
    }

    /// Takes `from`'s value at a dotted key; false for a key that does not exist.
    pub fn keep_at(&mut self, from: &Config, key: &str) -> bool {
        let Some((section, name)) = key.split_once('.') else {
            return false;
        };
        match section {
            server::SECTION => self.server.keep_key(&from.server, name),
            chat::SECTION => self.chat.keep_key(&from.chat, name),
            upstream::SECTION => self.upstream.keep_key(&from.upstream, name),
            rate_limit::SECTION => self.rate_limit.keep_key(&from.rate_limit, name),
            auth::SECTION => self.auth.keep_key(&from.auth, name),
            coalesce::SECTION => self.coalesce.keep_key(&from.coalesce, name),
            _ => false,
        }
    }

    pub fn parse(text: &str) -> Result<Config, Problems> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            Problems(vec![Problem {
                key: String::new(),
                value: None,
                why: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let mut r = Reader::default();
        r.unknown_keys(&table, &SCHEMA);

        let empty = Table::new();
        let [server, chat, upstream, rate_limit, auth, apis, coalesce, tracing] =
            SCHEMA.map(|(name, _)| r.section(&table, name).unwrap_or(&empty));
        let server = server::read(&mut r, server);
        let chat = chat::read(&mut r, chat);
        let upstream = UpstreamConfig::read_keys(&mut r, upstream);
        let rate_limit = rate_limit::read(&mut r, rate_limit);
        let auth = AuthConfig::read_keys(&mut r, auth);
        let apis = ApisConfig::read_keys(&mut r, apis).allow;
        let coalesce = coalesce::read(&mut r, coalesce, &server);
        let tracing = TracingConfig::read_keys(&mut r, tracing);

        match (r.problems.is_empty(), chat) {
            (true, Some(chat)) => Ok(Config {
                server,
                chat,
                upstream,
                rate_limit,
                auth,
                apis,
                coalesce,
                tracing,
            }),
            _ => Err(Problems(r.problems)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[chat]
sdkappid = 1400000000
region = "singapore"
secret_key_file = "/run/secret"
"#;

    #[test]
    fn minimal_file_gets_contract_defaults() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.server.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(c.server.admin_listen, "0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.drain_delay, Duration::from_secs(5));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(20));
        assert_eq!(c.chat.identifier, "administrator");
        assert_eq!(c.chat.usersig_ttl, Duration::from_secs(3600));
        assert_eq!(c.chat.endpoint.base(), "https://adminapisgp.im.qcloud.com");
        assert_eq!(
            c.chat
                .backup_endpoint
                .as_ref()
                .map(Endpoint::base)
                .as_deref(),
            Some("https://adminapisgp.my-imcloud.com")
        );
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.request_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.max_in_flight, 128);
        assert_eq!(c.rate_limit.group_per_second, 20);
        assert_eq!(c.rate_limit.group_burst, 40);
        assert_eq!(c.rate_limit.app_per_second, 200);
        assert_eq!(c.rate_limit.app_burst, 20);
        assert_eq!(c.rate_limit.max_tracked_groups, 100_000);
        assert_eq!(c.rate_limit.cleanup_interval, Duration::from_secs(10));
        assert_eq!(c.apis, ApiAllowList::counters());
        assert_eq!(c.chat.secret, SecretSource::File("/run/secret".into()));
        assert_eq!(c.coalesce, CoalesceConfig::default());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[server]
listen = "nowhere"
colour = "blue"
[chat]
region = "mars"
secret_key_file = "/s"
usersig_ttl = "soon"
[rate_limit]
group_burst = 0
"#;
        let problems = Config::parse(text).expect_err("invalid").0;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.listen",
            "server.colour",
            "chat.region",
            "chat.sdkappid",
            "chat.usersig_ttl",
            "rate_limit.group_burst",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let region = problems
            .iter()
            .find(|p| p.key == "chat.region")
            .expect("region");
        assert_eq!(region.value.as_deref(), Some("\"mars\""));
        assert!(region.why.contains("singapore"));
    }

    #[test]
    fn keys_are_compared_and_kept_by_name() {
        let running = Config::parse(MINIMAL).expect("valid");
        let text =
            format!("{MINIMAL}[server]\nlisten = \"127.0.0.1:1\"\n[rate_limit]\ngroup_burst = 3\n");
        let mut file = Config::parse(&text).expect("valid");
        assert_eq!(file.same_at(&running, "server.listen"), Some(false));
        assert_eq!(file.same_at(&running, "server.admin_listen"), Some(true));
        assert_eq!(file.same_at(&running, "rate_limit.no_such_key"), None);
        assert_eq!(file.same_at(&running, "nowhere.listen"), None);
        assert!(file.keep_at(&running, "server.listen"));
        assert!(!file.keep_at(&running, "server.no_such_key"));
        assert_eq!(file.server, running.server);
        assert_eq!(file.rate_limit.group_burst, 3, "the rest stays");
        assert_eq!(file.same_at(&running, "chat.secret_key_file"), Some(true));
    }

    #[test]
    fn unknown_sections_and_keys_are_errors() {
        let text = format!("{MINIMAL}\n[extra]\na = 1\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "extra");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::region::Region;

    #[test]
    fn the_example_file_parses_with_the_contract_defaults() {
        let text = include_str!("../../config/gateway.example.toml");
        let c = Config::parse(text).expect("example is valid");
        assert_eq!(c.chat.sdkappid, 1400000000);
        assert_eq!(c.chat.region, Some(Region::Singapore));
        assert_eq!(
            c.chat.secret,
            SecretSource::File("/var/run/secrets/chat/secret-key".into())
        );
        assert_eq!(
            c.apis,
            ApiAllowList::Only(
                [
                    "group_open_http_svc/get_group_counter",
                    "group_open_http_svc/update_group_counter",
                    "group_open_http_svc/delete_group_counter",
                ]
                .map(String::from)
                .to_vec()
            ),
            "the contract's three counter APIs"
        );
        assert_eq!(c.server.max_body_bytes, 65536);
    }

    /// The example shows each key at the default its declaration gives.
    #[test]
    fn the_example_file_shows_the_declared_defaults() {
        let text = include_str!("../../config/gateway.example.toml");
        let c = Config::parse(text).expect("example is valid");
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.upstream, UpstreamConfig::default());
        assert_eq!(c.rate_limit, RateLimitConfig::default());
        assert_eq!(c.auth, AuthConfig::default());
        assert_eq!(c.coalesce, CoalesceConfig::default());
        assert_eq!(c.tracing, TracingConfig::default());
        assert_eq!(c.apis, ApisConfig::default().allow);
        let chat = ChatKeys::default();
        assert_eq!(
            (&c.chat.identifier, c.chat.usersig_ttl, &c.chat.ca_file),
            (&chat.identifier, chat.usersig_ttl, &chat.ca_file)
        );
    }

    #[test]
    fn every_key_of_the_schema_is_documented_in_the_example() {
        let text = include_str!("../../config/gateway.example.toml");
        for (section, keys) in SCHEMA {
            assert!(
                text.contains(&format!("[{section}]")),
                "[{section}] missing"
            );
            for key in keys.iter() {
                assert!(
                    text.lines()
                        .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                    "{section}.{key} is not documented in the example"
                );
            }
        }
    }
}
