//! `[chat]`: which Tencent app, region or endpoint, admin account, secret key source and
//! UserSig lifetime.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::reader::{section, Reader, Section};
use crate::region::Region;

section! {
    /// The `[chat]` keys as written; [`ChatConfig`] is what they resolve to.
    pub struct ChatKeys in "chat" {
        /// Required: the app's SDKAppID.
        sdkappid: Option<u64> = None, |r, s, k| {
            let why = "must be a positive integer (your app's SDKAppID)";
            r.int_in(s, k, 1..=i64::from(u32::MAX), why).map(Some)
        };
        /// The app admin account the gateway signs as.
        identifier: String = DEFAULT_IDENTIFIER.into(), |r, s, k| r.string(s, k);
        /// The region whose REST hosts are used; required unless `endpoint` is set.
        region: Option<Region> = None, |r, s, k| {
            r.parsed(s, k, |name| name.parse::<Region>().map_err(|e| e.to_string())).map(Some)
        };
        /// Replaces the region's host (scheme, host, port).
        endpoint: Option<Endpoint> = None, endpoint;
        /// Failover target; by default the region's backup host unless `endpoint` is set.
        backup_endpoint: Option<Endpoint> = None, endpoint;
        /// A file holding the app's secret key (or `secret_key_env`).
        secret_key_file: Option<PathBuf> = None, Reader::path;
        /// An environment variable holding the app's secret key (or `secret_key_file`).
        secret_key_env: Option<String> = None, Reader::optional_string;
        /// Lifetime of the gateway's own admin UserSig.
        usersig_ttl: Duration = DEFAULT_USERSIG_TTL, |r, s, k| r.duration(s, k, false);
        /// Extra PEM roots trusted for the upstream.
        ca_file: Option<PathBuf> = None, Reader::path;
    }
}

fn endpoint(r: &mut Reader, s: &Section, key: &str) -> Option<Option<Endpoint>> {
    r.parsed(s, key, Endpoint::parse).map(Some)
}

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
    /// As [`ChatKeys::same_key`]: the two secret keys are one setting, the secret's source.
    pub fn same_key(&self, other: &Self, key: &str) -> Option<bool> {
        Some(match key {
            "sdkappid" => self.sdkappid == other.sdkappid,
            "identifier" => self.identifier == other.identifier,
            "region" => self.region == other.region,
            "endpoint" => self.endpoint == other.endpoint,
            "backup_endpoint" => self.backup_endpoint == other.backup_endpoint,
            "secret_key_file" | "secret_key_env" => self.secret == other.secret,
            "usersig_ttl" => self.usersig_ttl == other.usersig_ttl,
            "ca_file" => self.ca_file == other.ca_file,
            _ => return None,
        })
    }

    /// As [`ChatKeys::keep_key`].
    pub fn keep_key(&mut self, from: &Self, key: &str) -> bool {
        match key {
            "sdkappid" => self.sdkappid = from.sdkappid,
            "identifier" => self.identifier.clone_from(&from.identifier),
            "region" => self.region = from.region,
            "endpoint" => self.endpoint = from.endpoint.clone(),
            "backup_endpoint" => self.backup_endpoint = from.backup_endpoint.clone(),
            "secret_key_file" | "secret_key_env" => self.secret = from.secret.clone(),
            "usersig_ttl" => self.usersig_ttl = from.usersig_ttl,
            "ca_file" => self.ca_file.clone_from(&from.ca_file),
            _ => return false,
        }
        true
    }

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
    let keys = ChatKeys::read_keys(r, t);
    if !t.contains_key("sdkappid") {
        r.problem("chat.sdkappid", None, "is required (your app's SDKAppID)");
    }
    check_identifier(r, &keys.identifier);
    let endpoint = resolve_endpoints(r, t, &keys);
    let secret = resolve_secret(r, &keys);
    if !(MIN_USERSIG_TTL..=MAX_USERSIG_TTL).contains(&keys.usersig_ttl) {
        r.problem(
            "chat.usersig_ttl",
            Some(humantime::format_duration(keys.usersig_ttl).to_string()),
            "must be between 1m and 180days",
        );
    }
    let (endpoint, backup_endpoint) = endpoint?;
    Some(ChatConfig {
        sdkappid: keys.sdkappid?,
        identifier: keys.identifier,
        region: keys.region,
        endpoint,
        backup_endpoint,
        secret: secret?,
        usersig_ttl: keys.usersig_ttl,
        ca_file: keys.ca_file,
    })
}

fn check_identifier(r: &mut Reader, identifier: &str) {
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
}

/// Where requests go and where they fail over to: `endpoint` replaces the region's primary
/// host, and the region's backup host only stands in for the region's own primary host.
fn resolve_endpoints(
    r: &mut Reader,
    t: &Table,
    keys: &ChatKeys,
) -> Option<(Endpoint, Option<Endpoint>)> {
    let endpoint = match (&keys.endpoint, keys.region) {
        (Some(e), _) => e.clone(),
        (None, Some(region)) => Endpoint::https_host(region.primary_host()),
        (None, None) => {
            if !t.contains_key("region") {
                r.problem(
                    "chat.region",
                    None,
                    "is required unless chat.endpoint is set",
                );
            }
            return None;
        }
    };
    let backup = match (
        &keys.backup_endpoint,
        t.contains_key("endpoint"),
        keys.region,
    ) {
        (Some(b), _, _) => Some(b.clone()),
        (None, false, Some(region)) => region.backup_host().map(Endpoint::https_host),
        _ => None,
    };
    Some((endpoint, backup))
}

fn resolve_secret(r: &mut Reader, keys: &ChatKeys) -> Option<SecretSource> {
    match (&keys.secret_key_file, &keys.secret_key_env) {
        (Some(file), None) if !file.as_os_str().is_empty() => {
            Some(SecretSource::File(file.clone()))
        }
        (None, Some(var)) if !var.is_empty() => Some(SecretSource::Env(var.clone())),
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
