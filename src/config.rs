//! The configuration file: TOML in, a typed and validated `Config` out.
//!
//! Every problem is collected (key, value, why) rather than stopping at the first, so that
//! `check-config` can list them all at once. The secret key never sits in the TOML.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::region::Region;

mod coalesce;
pub use coalesce::CoalesceConfig;

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub drain_delay: Duration,
    pub shutdown_grace: Duration,
    /// Requests in flight at once; past it, the `overloaded` answer.
    pub max_in_flight: usize,
    /// Longest a caller may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Longest a caller may take to send its body.
    pub body_read_timeout: Duration,
    /// Runtime threads: 0 = one per core, 1 = a single-threaded runtime.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatConfig {
    pub sdkappid: u64,
    pub identifier: String,
    pub region: Option<Region>,
    /// Where requests go: the region's primary host unless `endpoint` replaces it.
    pub endpoint: Endpoint,
    /// Failover target: `backup_endpoint`, else the region's backup host when no `endpoint`
    /// was given.
    pub backup_endpoint: Option<Endpoint>,
    pub secret: SecretSource,
    pub usersig_ttl: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests sent to Tencent at once (over HTTP/1.1, the most connections per host); more
    /// wait for a free slot within `request_timeout`.
    pub max_in_flight: usize,
}

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
}

impl RateLimitConfig {
    /// The default app burst: a tenth of a second's worth, so that a full burst plus a second
    /// at the steady rate stays near Tencent's per-second ceiling.
    pub fn default_app_burst(app_per_second: u32) -> u32 {
        (app_per_second / 10).max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    pub tokens_file: Option<PathBuf>,
}

/// Which v4 APIs callers may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAllowList {
    /// `"*"`: every v4 API.
    Any,
    /// `service/command` names.
    Only(Vec<String>),
}

impl ApiAllowList {
    pub fn counters() -> Self {
        ApiAllowList::Only(vec![
            "group_open_http_svc/get_group_counter".into(),
            "group_open_http_svc/update_group_counter".into(),
            "group_open_http_svc/delete_group_counter".into(),
        ])
    }
}

/// An upstream base: scheme and authority only, e.g. `https://adminapisgp.im.qcloud.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    /// `host[:port]` as written.
    pub authority: String,
}

impl Endpoint {
    pub fn https_host(host: &str) -> Self {
        Endpoint {
            https: true,
            authority: host.to_string(),
        }
    }

    /// Parses `https://host[:port]`; `http://` only for loopback IP addresses, because the
    /// UserSig travels in the query string.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a valid URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme {other:?} is not supported; use https://")),
            None => return Err("must start with https://".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "has no host".to_string())?
            .clone();
        if authority.as_str().contains('@') {
            return Err("must not carry user info".into());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("must be only scheme, host and port (no path or query)".into());
        }
        if !https {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let loopback = host
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
            if !loopback {
                return Err(
                    "plain http:// is allowed only for loopback addresses (127.0.0.0/8, ::1), because the UserSig travels in the query string; use https://"
                        .into(),
                );
            }
        }
        Ok(Endpoint {
            https,
            authority: authority.as_str().to_string(),
        })
    }

    pub fn base(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base())
    }
}

/// The keys each section may hold; anything else is an error.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "admin_listen",
            "max_body_bytes",
            "drain_delay",
            "shutdown_grace",
            "max_in_flight",
            "header_read_timeout",
            "body_read_timeout",
            "worker_threads",
        ],
    ),
    (
        "chat",
        &[
            "sdkappid",
            "identifier",
            "region",
            "endpoint",
            "backup_endpoint",
            "secret_key_file",
            "secret_key_env",
            "usersig_ttl",
            "ca_file",
        ],
    ),
    (
        "upstream",
        &["connect_timeout", "request_timeout", "max_in_flight"],
    ),
    (
        "rate_limit",
        &[
            "group_per_second",
            "group_burst",
            "app_per_second",
            "app_burst",
            "max_tracked_groups",
            "cleanup_interval",
        ],
    ),
    ("auth", &["tokens_file"]),
    ("apis", &["allow"]),
    ("coalesce", &["enabled", "max_wait", "max_callers", "reads"]),
];

/// Shortest and longest UserSig lifetimes the gateway accepts for its own admin sig.
const MIN_USERSIG_TTL: Duration = Duration::from_secs(60);
const MAX_USERSIG_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

impl Config {
    /// Reads and checks a file. Only the file's own content is checked here; see
    /// [`Config::check_environment`] for the secret, CA and token files it names.
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

    pub fn parse(text: &str) -> Result<Config, Problems> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            Problems(vec![Problem {
                key: String::new(),
                value: None,
                why: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let mut r = Reader::default();
        r.unknown_keys(&table);

        let empty = Table::new();
        let server = r.section(&table, "server").unwrap_or(&empty);
        let chat = r.section(&table, "chat").unwrap_or(&empty);
        let upstream = r.section(&table, "upstream").unwrap_or(&empty);
        let rate = r.section(&table, "rate_limit").unwrap_or(&empty);
        let auth = r.section(&table, "auth").unwrap_or(&empty);
        let apis = r.section(&table, "apis").unwrap_or(&empty);
        let coalesce_table = r.section(&table, "coalesce").unwrap_or(&empty);

        let default_listen = SocketAddr::from(([0, 0, 0, 0], 8080));
        let default_admin = SocketAddr::from(([0, 0, 0, 0], 9090));
        let server = ServerConfig {
            listen: r
                .socket_addr(server, "server", "listen")
                .unwrap_or(default_listen),
            admin_listen: r
                .socket_addr(server, "server", "admin_listen")
                .unwrap_or(default_admin),
            max_body_bytes: r
                .positive_int(server, "server", "max_body_bytes", 16 * 1024 * 1024)
                .unwrap_or(65536) as usize,
            drain_delay: r
                .duration(server, "server", "drain_delay", true)
                .unwrap_or(Duration::from_secs(5)),
            shutdown_grace: r
                .duration(server, "server", "shutdown_grace", false)
                .unwrap_or(Duration::from_secs(20)),
            max_in_flight: r
                .positive_int(server, "server", "max_in_flight", 1_000_000)
                .unwrap_or(1024) as usize,
            header_read_timeout: r
                .duration(server, "server", "header_read_timeout", false)
                .unwrap_or(Duration::from_secs(10)),
            body_read_timeout: r
                .duration(server, "server", "body_read_timeout", false)
                .unwrap_or(Duration::from_secs(10)),
            worker_threads: match server.get("worker_threads") {
                None => 0,
                Some(v) => match v.as_integer() {
                    Some(n) if (0..=256).contains(&n) => n as usize,
                    _ => {
                        r.problem(
                            "server.worker_threads",
                            Some(v.to_string()),
                            "must be an integer from 0 (one per core) to 256",
                        );
                        0
                    }
                },
            },
        };
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            r.problem(
                "server.admin_listen",
                Some(server.admin_listen.to_string()),
                "must differ from server.listen",
            );
        }
        if server.shutdown_grace < server.drain_delay {
            r.problem(
                "server.shutdown_grace",
                Some(humantime::format_duration(server.shutdown_grace).to_string()),
                "is counted from the signal, so it must be at least server.drain_delay",
            );
        }

        let sdkappid = match chat.get("sdkappid") {
            None => {
                r.problem("chat.sdkappid", None, "is required (your app's SDKAppID)");
                None
            }
            Some(v) => match v.as_integer() {
                Some(n) if n > 0 && n <= u32::MAX as i64 => Some(n as u64),
                _ => {
                    r.problem(
                        "chat.sdkappid",
                        Some(v.to_string()),
                        "must be a positive integer (your app's SDKAppID)",
                    );
                    None
                }
            },
        };
        let identifier = r
            .string(chat, "chat", "identifier")
            .unwrap_or_else(|| "administrator".to_string());
        if identifier.is_empty()
            || identifier.len() > 32
            || !identifier.bytes().all(|b| b.is_ascii_graphic())
        {
            r.problem(
                "chat.identifier",
                Some(format!("{identifier:?}")),
                "must be 1 to 32 printable ASCII characters without spaces (an app admin account)",
            );
        }
        let region =
            r.string(chat, "chat", "region")
                .and_then(|name| match name.parse::<Region>() {
                    Ok(region) => Some(region),
                    Err(e) => {
                        r.problem("chat.region", Some(format!("{name:?}")), &e.to_string());
                        None
                    }
                });
        let endpoint = r.endpoint(chat, "endpoint");
        let backup = r.endpoint(chat, "backup_endpoint");
        let endpoint = match (&endpoint, region) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(region)) => Some(Endpoint::https_host(region.primary_host())),
            (None, None) => {
                if !chat.contains_key("region") {
                    r.problem(
                        "chat.region",
                        None,
                        "is required unless chat.endpoint is set",
                    );
                }
                None
            }
        };
        // The region's backup host only stands in for the region's own primary host.
        let backup_endpoint = match (backup, chat.contains_key("endpoint"), region) {
            (Some(b), _, _) => Some(b),
            (None, false, Some(region)) => region.backup_host().map(Endpoint::https_host),
            _ => None,
        };
        let secret = match (
            r.string(chat, "chat", "secret_key_file"),
            r.string(chat, "chat", "secret_key_env"),
        ) {
            (Some(file), None) if !file.is_empty() => Some(SecretSource::File(file.into())),
            (None, Some(var)) if !var.is_empty() => Some(SecretSource::Env(var)),
            (Some(_), Some(_)) => {
                r.problem(
                    "chat.secret_key_env",
                    None,
                    "set either chat.secret_key_file or chat.secret_key_env, not both",
                );
                None
            }
            _ => {
                r.problem(
                    "chat.secret_key_file",
                    None,
                    "is required (or chat.secret_key_env): the secret key is never written in this file",
                );
                None
            }
        };
        let usersig_ttl = r
            .duration(chat, "chat", "usersig_ttl", false)
            .unwrap_or(Duration::from_secs(3600));
        if !(MIN_USERSIG_TTL..=MAX_USERSIG_TTL).contains(&usersig_ttl) {
            r.problem(
                "chat.usersig_ttl",
                Some(humantime::format_duration(usersig_ttl).to_string()),
                "must be between 1m and 180days",
            );
        }
        let ca_file = r.string(chat, "chat", "ca_file").map(PathBuf::from);

        let upstream = UpstreamConfig {
            connect_timeout: r
                .duration(upstream, "upstream", "connect_timeout", false)
                .unwrap_or(Duration::from_secs(2)),
            request_timeout: r
                .duration(upstream, "upstream", "request_timeout", false)
                .unwrap_or(Duration::from_secs(5)),
            max_in_flight: r
                .positive_int(upstream, "upstream", "max_in_flight", 100_000)
                .unwrap_or(128) as usize,
        };

        let app_per_second = r
            .positive_int(rate, "rate_limit", "app_per_second", 1_000_000_000)
            .unwrap_or(200) as u32;
        let rate_limit = RateLimitConfig {
            group_per_second: r
                .positive_int(rate, "rate_limit", "group_per_second", 1_000_000_000)
                .unwrap_or(20) as u32,
            group_burst: r
                .positive_int(rate, "rate_limit", "group_burst", 1_000_000_000)
                .unwrap_or(40) as u32,
            app_per_second,
            app_burst: r
                .positive_int(rate, "rate_limit", "app_burst", 1_000_000_000)
                .map_or_else(
                    || RateLimitConfig::default_app_burst(app_per_second),
                    |b| b as u32,
                ),
            max_tracked_groups: r
                .positive_int(rate, "rate_limit", "max_tracked_groups", 100_000_000)
                .unwrap_or(100_000) as usize,
            cleanup_interval: r
                .duration(rate, "rate_limit", "cleanup_interval", false)
                .unwrap_or(Duration::from_secs(10)),
        };

        let auth = AuthConfig {
            tokens_file: r.string(auth, "auth", "tokens_file").map(PathBuf::from),
        };

        let apis = r.allow_list(apis);

        let coalesce = coalesce::read(&mut r, coalesce_table, &server);

        match (r.problems.is_empty(), sdkappid, endpoint, secret) {
            (true, Some(sdkappid), Some(endpoint), Some(secret)) => Ok(Config {
                server,
                chat: ChatConfig {
                    sdkappid,
                    identifier,
                    region,
                    endpoint,
                    backup_endpoint,
                    secret,
                    usersig_ttl,
                    ca_file,
                },
                upstream,
                rate_limit,
                auth,
                apis,
                coalesce,
            }),
            _ => Err(Problems(r.problems)),
        }
    }

    /// Checks what the file points at: the secret key can be read and is not empty, the CA
    /// file holds certificates, the tokens file can be read. Never prints a secret.
    pub fn check_environment(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        match &self.chat.secret {
            SecretSource::File(path) => {
                if let Err(why) = crate::credentials::read_secret_file(path) {
                    problems.push(Problem {
                        key: "chat.secret_key_file".into(),
                        value: Some(format!("{:?}", path.display().to_string())),
                        why: why.to_string(),
                    });
                }
            }
            SecretSource::Env(var) => {
                if let Err(why) = crate::credentials::read_secret_env(var) {
                    problems.push(Problem {
                        key: "chat.secret_key_env".into(),
                        value: Some(format!("{var:?}")),
                        why: why.to_string(),
                    });
                }
            }
        }
        if let Some(path) = &self.chat.ca_file {
            if let Err(why) = crate::upstream::read_ca_file(path) {
                problems.push(Problem {
                    key: "chat.ca_file".into(),
                    value: Some(format!("{:?}", path.display().to_string())),
                    why,
                });
            }
        }
        if let Some(path) = &self.auth.tokens_file {
            if let Err(e) = crate::auth::Tokens::load(path) {
                problems.push(Problem {
                    key: "auth.tokens_file".into(),
                    value: Some(format!("{:?}", path.display().to_string())),
                    why: e.to_string(),
                });
            }
        }
        problems
    }
}

/// Collects problems while reading typed values out of the TOML tree.
#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, key: &str, value: Option<String>, why: &str) {
        self.problems.push(Problem {
            key: key.to_string(),
            value,
            why: why.to_string(),
        });
    }

    fn unknown_keys(&mut self, table: &Table) {
        for (name, value) in table {
            match SCHEMA.iter().find(|(section, _)| section == name) {
                None => self.problem(
                    name,
                    None,
                    &format!(
                        "unknown section; expected one of {}",
                        SCHEMA
                            .iter()
                            .map(|(s, _)| *s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some((_, keys)) => {
                    if let Value::Table(section) = value {
                        for key in section.keys() {
                            if !keys.contains(&key.as_str()) {
                                self.problem(
                                    &format!("{name}.{key}"),
                                    None,
                                    &format!("unknown key; [{name}] takes {}", keys.join(", ")),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn section<'t>(&mut self, table: &'t Table, name: &str) -> Option<&'t Table> {
        match table.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problem(name, Some(other.to_string()), "must be a table ([section])");
                None
            }
        }
    }

    fn string(&mut self, t: &Table, section: &str, key: &str) -> Option<String> {
        match t.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(other.to_string()),
                    "must be a string",
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, t: &Table, section: &str, key: &str) -> Option<bool> {
        match t.get(key) {
            None => None,
            Some(Value::Boolean(b)) => Some(*b),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(other.to_string()),
                    "must be true or false",
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, t: &Table, section: &str, key: &str) -> Option<SocketAddr> {
        let text = self.string(t, section, key)?;
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    "must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &Table, section: &str, key: &str, zero_ok: bool) -> Option<Duration> {
        let text = self.string(t, section, key)?;
        match humantime::parse_duration(&text) {
            Ok(d) if zero_ok || !d.is_zero() => Some(d),
            Ok(_) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    "must be more than zero",
                );
                None
            }
            Err(e) => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(format!("{text:?}")),
                    &format!("not a duration ({e}); write e.g. \"250ms\", \"5s\", \"1h\""),
                );
                None
            }
        }
    }

    fn positive_int(&mut self, t: &Table, section: &str, key: &str, max: i64) -> Option<i64> {
        let value = t.get(key)?;
        match value.as_integer() {
            Some(n) if n > 0 && n <= max => Some(n),
            _ => {
                self.problem(
                    &format!("{section}.{key}"),
                    Some(value.to_string()),
                    &format!("must be a positive integer of at most {max}"),
                );
                None
            }
        }
    }

    fn endpoint(&mut self, t: &Table, key: &str) -> Option<Endpoint> {
        let text = self.string(t, "chat", key)?;
        match Endpoint::parse(&text) {
            Ok(e) => Some(e),
            Err(why) => {
                self.problem(&format!("chat.{key}"), Some(format!("{text:?}")), &why);
                None
            }
        }
    }

    fn allow_list(&mut self, t: &Table) -> ApiAllowList {
        let Some(value) = t.get("allow") else {
            return ApiAllowList::counters();
        };
        let Some(items) = value.as_array() else {
            self.problem(
                "apis.allow",
                Some(value.to_string()),
                "must be an array of \"service/command\" strings",
            );
            return ApiAllowList::counters();
        };
        let mut names = Vec::new();
        let mut any = false;
        for item in items {
            match item.as_str() {
                Some("*") => any = true,
                Some(name) if is_api_name(name) => {
                    if !names.iter().any(|n: &String| n == name) {
                        names.push(name.to_string());
                    }
                }
                _ => self.problem(
                    "apis.allow",
                    Some(item.to_string()),
                    "each entry must be \"service/command\" (letters, digits, underscores) or \"*\"",
                ),
            }
        }
        if any {
            ApiAllowList::Any
        } else {
            ApiAllowList::Only(names)
        }
    }
}

/// `service/command`, each part made of ASCII letters, digits and underscores.
pub fn is_api_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
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
    fn upstream_max_in_flight_is_a_bounded_positive_integer() {
        let text = format!("{MINIMAL}[upstream]\nmax_in_flight = 16\n");
        assert_eq!(
            Config::parse(&text).expect("valid").upstream.max_in_flight,
            16
        );
        for value in ["0", "-3", "100001", "\"64\""] {
            let text = format!("{MINIMAL}[upstream]\nmax_in_flight = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{value}: {problems:?}");
            assert_eq!(problems[0].key, "upstream.max_in_flight");
            assert!(problems[0].why.contains("positive"), "{}", problems[0]);
        }
    }

    #[test]
    fn unknown_sections_and_keys_are_errors() {
        let text = format!("{MINIMAL}\n[extra]\na = 1\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "extra");
    }

    #[test]
    fn secret_never_in_the_toml() {
        let text = format!("{MINIMAL}secret_key = \"abc\"\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems[0].key, "chat.secret_key");
        assert!(!problems.iter().any(|p| format!("{p}").contains("abc")));
    }

    #[test]
    fn http_endpoint_only_for_loopback() {
        assert!(Endpoint::parse("http://127.0.0.1:18080").is_ok());
        assert!(Endpoint::parse("http://[::1]:18080").is_ok());
        assert!(Endpoint::parse("https://example.com").is_ok());
        assert!(Endpoint::parse("https://127.0.0.1:18443/").is_ok());
        for bad in [
            "http://10.0.0.1:80",
            "http://example.com",
            "http://localhost:80",
            "ftp://127.0.0.1",
            "https://example.com/v4",
            "https://example.com?x=1",
            "https://user@example.com",
            "example.com",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn endpoint_replaces_region_and_drops_its_backup() {
        let text = r#"
[chat]
sdkappid = 1
region = "tokyo"
endpoint = "https://127.0.0.1:18443"
secret_key_env = "KEY"
"#;
        let c = Config::parse(text).expect("valid");
        assert_eq!(c.chat.endpoint.base(), "https://127.0.0.1:18443");
        assert_eq!(c.chat.backup_endpoint, None);
        assert_eq!(c.chat.secret, SecretSource::Env("KEY".into()));
    }

    #[test]
    fn allow_list_entries_are_checked() {
        let text = format!("{MINIMAL}[apis]\nallow = [\"a/b\", \"*\", \"../x\", 3]\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        let text = format!("{MINIMAL}[apis]\nallow = [\"*\"]\n");
        assert_eq!(Config::parse(&text).expect("valid").apis, ApiAllowList::Any);
    }

    #[test]
    fn api_names() {
        assert!(is_api_name("group_open_http_svc/get_group_counter"));
        for bad in ["", "a", "a/", "/b", "a/b/c", "a/b%2e", "a/..", "a b/c"] {
            assert!(!is_api_name(bad), "{bad}");
        }
    }

    #[test]
    fn both_secret_sources_is_an_error() {
        let text = r#"
[chat]
sdkappid = 1
region = "tokyo"
secret_key_file = "/a"
secret_key_env = "B"
"#;
        let problems = Config::parse(text).expect_err("invalid").0;
        assert_eq!(problems[0].key, "chat.secret_key_env");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_file_parses_with_the_contract_defaults() {
        let text = include_str!("../config/gateway.example.toml");
        let c = Config::parse(text).expect("example is valid");
        assert_eq!(c.chat.sdkappid, 1400000000);
        assert_eq!(c.chat.region, Some(Region::Singapore));
        assert_eq!(
            c.chat.secret,
            SecretSource::File("/var/run/secrets/chat/secret-key".into())
        );
        assert_eq!(c.apis, ApiAllowList::counters());
        assert_eq!(c.server.max_body_bytes, 65536);
    }

    #[test]
    fn every_key_of_the_schema_is_documented_in_the_example() {
        let text = include_str!("../config/gateway.example.toml");
        for (section, keys) in SCHEMA {
            assert!(
                text.contains(&format!("[{section}]")),
                "[{section}] missing"
            );
            for key in *keys {
                assert!(
                    text.lines()
                        .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                    "{section}.{key} is not documented in the example"
                );
            }
        }
    }
}
