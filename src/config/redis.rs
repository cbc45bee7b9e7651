//! The Redis of `backend = "redis"`: where its URL comes from, and the offline checks of a URL
//! (scheme, syntax, no password in the file, certificate checks on, a database that exists);
//! a URL is never shown with its password. Also who the gateway is to Redis (ACL user, where
//! the password comes from, TLS roots and client certificate): names of files and variables
//! only, never the password itself.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RedisBackend {
    pub url: RedisUrl,
    /// Longest a request waits for Redis before the local limiter answers.
    pub timeout: Duration,
    /// The ACL user, password source and TLS files, for every node.
    pub auth: RedisAuth,
}

/// Where the Redis password comes from; the config never holds the password itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// An environment variable, read at start-up.
    Env(String),
    /// A file, re-read when it changes.
    File(PathBuf),
}

/// Who the gateway is to Redis, as the config names it (see `rate_limit::redis_auth`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisAuth {
    pub username: Option<String>,
    pub password: Option<PasswordSource>,
    /// PEM roots trusted for the certificate of a rediss:// Redis.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key, for a rediss:// Redis that asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl RedisAuth {
    /// Whether any setting needs TLS (rediss://).
    pub fn needs_tls(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some()
    }
}

/// Whether a URL asks for TLS.
pub fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Where the Redis URL comes from: the file (no password allowed there) or an environment
/// variable (read at start-up, never printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    Url(String),
    Env(String),
}

/// A Redis URL the gateway cannot use. Never holds the URL itself (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("must start with redis:// or rediss:// (rediss for TLS)")]
    Scheme,
    #[error("holds a password: put the URL in an environment variable named by rate_limit.redis_url_env")]
    PasswordInFile,
    #[error("not a valid Redis URL (redis://[user:password@]host[:port][/db])")]
    Syntax,
    #[error("#insecure turns off the checks of the server's certificate; remove it (and trust the server's CA instead)")]
    Insecure,
    #[error("the database number must be an integer from 0 to {MAX_DB} (Redis numbers its databases from 0; 16 unless the server is configured for more)")]
    Database,
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvMissing(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
}

/// The highest database number taken: Redis's `databases` setting is an int.
pub const MAX_DB: i64 = i32::MAX as i64;

/// Offline checks of a URL: scheme, syntax, certificate checks left on, the database number,
/// and (for one written in the TOML) no password.
pub fn check_url(url: &str, password_ok: bool) -> Result<(), UrlError> {
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    if !lower.starts_with("redis://") && !lower.starts_with("rediss://") {
        return Err(UrlError::Scheme);
    }
    if !password_ok && password(url).is_some() {
        return Err(UrlError::PasswordInFile);
    }
    // redis-rs reads the fragment `insecure` of a rediss:// URL as "accept any certificate".
    if url
        .split_once('#')
        .is_some_and(|(_, fragment)| fragment.eq_ignore_ascii_case("insecure"))
    {
        return Err(UrlError::Insecure);
    }
    redis::Client::open(url).map_err(|_| UrlError::Syntax)?;
    match database(url) {
        None => Ok(()),
        Some(db) => match db.parse::<i64>() {
            Ok(n) if (0..=MAX_DB).contains(&n) => Ok(()),
            _ => Err(UrlError::Database),
        },
    }
}

/// The database part of a URL's path (`/3` gives `3`), when there is one.
fn database(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let path = &rest[rest.find(['/', '?', '#'])?..];
    let path = path.strip_prefix('/')?;
    let db = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    (!db.is_empty()).then_some(db)
}

/// The URL named by `redis_url_env`, checked.
pub fn url_from_env(var: &str) -> Result<String, UrlError> {
    let url = std::env::var(var).map_err(|_| UrlError::EnvMissing(var.to_string()))?;
    if url.trim().is_empty() {
        return Err(UrlError::EnvEmpty(var.to_string()));
    }
    check_url(&url, true)?;
    Ok(url)
}

/// The user-info part of a URL (between `://` and the last `@` of the authority).
fn userinfo(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((start, start + at))
}

pub fn password(url: &str) -> Option<&str> {
    let (start, end) = userinfo(url)?;
    // `redis://user@host` names a user only, as the client reads it.
    let (_, pw) = url[start..end].split_once(':')?;
    (!pw.is_empty()).then_some(pw)
}

/// The URL as it may be shown: any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (userinfo(url), password(url)) {
        (Some((start, end)), Some(_)) => {
            let user = url[start..end].split_once(':').map_or("", |(user, _)| user);
            format!("{}{user}:***{}", &url[..start], &url[end..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn passwords_are_redacted_and_refused_in_the_file() {
        assert_eq!(
            redact("redis://user:s3cret@10.0.0.1:6379/0"),
            "redis://user:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("rediss://:s3cret@host/1"), "rediss://:***@host/1");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(password("redis://:pw@h"), Some("pw"));
        assert_eq!(password("redis://h:6379/0"), None);
        assert!(matches!(
            check_url("redis://:pw@h:6379", false),
            Err(UrlError::PasswordInFile)
        ));
        assert!(check_url("redis://:pw@h:6379", true).is_ok());
        assert!(check_url("rediss://h:6380/2", false).is_ok());
        assert!(matches!(
            check_url("http://h", false),
            Err(UrlError::Scheme)
        ));
        assert!(matches!(
            check_url("redis://h:notaport", false),
            Err(UrlError::Syntax)
        ));
    }

    #[test]
    fn insecure_tls_is_refused() {
        for url in ["rediss://h:6380/0#insecure", "rediss://h#INSECURE"] {
            assert!(
                matches!(check_url(url, true), Err(UrlError::Insecure)),
                "{url}"
            );
        }
        assert!(check_url("rediss://h:6380/0", false).is_ok());
        let problems = parse("backend = \"redis\"\nredis_url = \"rediss://r:6380/0#insecure\"")
            .expect_err("refused");
        assert_eq!(problems, ["rate_limit.redis_url"]);
    }

    #[test]
    fn database_numbers_must_exist() {
        for url in [
            "redis://h/0",
            "redis://h:6379/15",
            "redis://h/2147483647",
            "redis://h",
            "redis://h/",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        for url in [
            "redis://h/99999999999",
            "redis://h:6379/2147483648",
            "redis://h/-1",
        ] {
            assert!(
                matches!(check_url(url, true), Err(UrlError::Database)),
                "{url}: {:?}",
                check_url(url, true)
            );
        }
        let text = format!(
            "{MINIMAL}[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://r:6379/99999999999\"\n"
        );
        let problems = Config::parse(&text).expect_err("refused").0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].value.as_deref(),
            Some("\"redis://r:6379/99999999999\"")
        );
        assert!(
            problems[0].why.contains("from 0 to 2147483647"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn redis_keys_with_the_local_backend_are_refused() {
        for lines in [
            "redis_url = \"redis://r:6379\"",
            "backend = \"local\"\nredis_url = \"redis://r:6379\"",
            "redis_url_env = \"V\"",
        ] {
            let text = format!("{MINIMAL}[rate_limit]\n{lines}\n");
            let problems = Config::parse(&text).expect_err("refused").0;
            assert_eq!(problems.len(), 1, "{lines}: {problems:?}");
            assert!(
                problems[0].key.starts_with("rate_limit.redis_url"),
                "{}",
                problems[0]
            );
            assert!(
                problems[0].why.contains("only with backend = \"redis\""),
                "{}",
                problems[0]
            );
        }
    }

    /// The Redis backend as parsed from `lines` under `[rate_limit]`.
    fn parse(lines: &str) -> Result<Option<RedisBackend>, Vec<String>> {
        let text = format!("{MINIMAL}[rate_limit]\n{lines}\n");
        Config::parse(&text)
            .map(|c| c.rate_limit.redis())
            .map_err(|p| p.0.into_iter().map(|p| p.key).collect())
    }

    #[test]
    fn backend_keys_default_and_complain() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("backend = \"redis\"\nredis_url = \"redis://r:6379\""),
            Ok(Some(RedisBackend {
                url: RedisUrl::Url("redis://r:6379".into()),
                timeout: Duration::from_millis(50),
                auth: RedisAuth::default(),
            }))
        );
        let keys = |r: Result<Option<RedisBackend>, Vec<String>>| r.err().unwrap_or_default();
        assert_eq!(keys(parse("backend = \"redis\"")), ["rate_limit.backend"]);
        assert_eq!(
            keys(parse(
                "backend = \"redis\"\nredis_url_env = \"V\"\nredis_timeout = \"11s\""
            )),
            ["rate_limit.redis_timeout"]
        );
        assert_eq!(keys(parse("backend = \"etcd\"")), ["rate_limit.backend"]);
    }

    #[test]
    fn the_example_switched_to_redis_parses() {
        let text = include_str!("../../config/gateway.example.toml")
            .replace("backend = \"local\"", "backend = \"redis\"")
            .replace("# redis_url_env =", "redis_url_env =");
        let config = Config::parse(&text).expect("valid");
        assert_eq!(
            config.rate_limit.redis(),
            Some(RedisBackend {
                url: RedisUrl::Env("CHAT_GATEWAY_REDIS_URL".into()),
                timeout: Duration::from_millis(50),
                auth: RedisAuth::default(),
            })
        );
    }
}
