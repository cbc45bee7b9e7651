//! `[chat]`: which Tencent app, region or endpoint, admin account, secret key source and
//! UserSig lifetime.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::reader::Reader;
use crate::region::Region;

pub const KEYS: &[&str] = &[
    "sdkappid",
    "identifier",
    "region",
    "endpoint",
    "backup_endpoint",
    "secret_key_file",
    "secret_key_env",
    "usersig_ttl",
    "ca_file",
];

/// Shortest and longest UserSig lifetimes the gateway accepts for its own admin sig.
const MIN_USERSIG_TTL: Duration = Duration::from_secs(60);
const MAX_USERSIG_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

/// The admin account when `identifier` is not set.
pub const DEFAULT_IDENTIFIER: &str = "administrator";
/// The admin UserSig's lifetime when `usersig_ttl` is not set.
pub const DEFAULT_USERSIG_TTL: Duration = Duration::from_secs(3600);

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

impl ChatConfig {
    /// An app reached at `endpoint` with every optional key at its default.
    pub fn new(sdkappid: u64, endpoint: Endpoint, secret: SecretSource) -> Self {
        ChatConfig {
            sdkappid,
            identifier: DEFAULT_IDENTIFIER.into(),
            region: None,
            endpoint,
            backup_endpoint: None,
            secret,
            usersig_ttl: DEFAULT_USERSIG_TTL,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
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

/// The `[chat]` section, or `None` when a required key is missing or wrong (the reader then
/// holds the problem).
pub fn read(r: &mut Reader, t: &Table) -> Option<ChatConfig> {
    let sdkappid = match t.get("sdkappid") {
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
        .string(t, "chat", "identifier")
        .unwrap_or_else(|| DEFAULT_IDENTIFIER.to_string());
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
    let region = r
        .string(t, "chat", "region")
        .and_then(|name| match name.parse::<Region>() {
            Ok(region) => Some(region),
            Err(e) => {
                r.problem("chat.region", Some(format!("{name:?}")), &e.to_string());
                None
            }
        });
    let endpoint = read_endpoint(r, t, "endpoint");
    let backup = read_endpoint(r, t, "backup_endpoint");
    let endpoint = match (&endpoint, region) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(region)) => Some(Endpoint::https_host(region.primary_host())),
        (None, None) => {
            if !t.contains_key("region") {
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
    let backup_endpoint = match (backup, t.contains_key("endpoint"), region) {
        (Some(b), _, _) => Some(b),
        (None, false, Some(region)) => region.backup_host().map(Endpoint::https_host),
        _ => None,
    };
    let secret = match (
        r.string(t, "chat", "secret_key_file"),
        r.string(t, "chat", "secret_key_env"),
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
        .duration(t, "chat", "usersig_ttl", false)
        .unwrap_or(DEFAULT_USERSIG_TTL);
    if !(MIN_USERSIG_TTL..=MAX_USERSIG_TTL).contains(&usersig_ttl) {
        r.problem(
            "chat.usersig_ttl",
            Some(humantime::format_duration(usersig_ttl).to_string()),
            "must be between 1m and 180days",
        );
    }
    let ca_file = r.string(t, "chat", "ca_file").map(PathBuf::from);
    Some(ChatConfig {
        sdkappid: sdkappid?,
        identifier,
        region,
        endpoint: endpoint?,
        backup_endpoint,
        secret: secret?,
        usersig_ttl,
        ca_file,
    })
}

fn read_endpoint(r: &mut Reader, t: &Table, key: &str) -> Option<Endpoint> {
    let text = r.string(t, "chat", key)?;
    match Endpoint::parse(&text) {
        Ok(e) => Some(e),
        Err(why) => {
            r.problem(&format!("chat.{key}"), Some(format!("{text:?}")), &why);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

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
