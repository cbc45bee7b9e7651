//! `[rate_limit]` backend keys: where the budgets live (this process, or a Redis the fleet
//! shares) and, for Redis, where its URL comes from. Offline checks only: scheme, syntax, and
//! no password in the file; a URL is never shown with its password.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

/// Where the budgets live: this process, or a Redis the whole fleet shares.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Backend {
    #[default]
    Local,
    Redis(RedisBackend),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisBackend {
    pub url: RedisUrl,
    /// Longest a request waits for Redis before the local limiter answers.
    pub timeout: Duration,
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
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvMissing(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
}

/// Offline checks of a URL: scheme, syntax, and (for one written in the TOML) no password.
pub fn check_url(url: &str, password_ok: bool) -> Result<(), UrlError> {
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    if !lower.starts_with("redis://") && !lower.starts_with("rediss://") {
        return Err(UrlError::Scheme);
    }
    if !password_ok && password(url).is_some() {
        return Err(UrlError::PasswordInFile);
    }
    redis::Client::open(url).map_err(|_| UrlError::Syntax)?;
    Ok(())
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

/// The `[rate_limit]` backend keys, read by the config parser: the backend, and for Redis
/// where its URL comes from (offline checks only: scheme, syntax, no password in the file)
/// and `redis_timeout` (default 50 ms).
pub fn read_backend(r: &mut Reader, t: &Table) -> Backend {
    let url = r.string(t, "rate_limit", "redis_url");
    let env = r.string(t, "rate_limit", "redis_url_env");
    let timeout = r.duration(t, "rate_limit", "redis_timeout", false);
    let kind = r.string(t, "rate_limit", "backend");
    let mut problem = |key: &str, value: Option<String>, why: String| {
        r.problem(&format!("rate_limit.{key}"), value, &why)
    };
    match kind.as_deref() {
        None | Some("local") => Backend::Local,
        Some("redis") => {
            let url = match (url, env) {
                (Some(url), None) => {
                    if let Err(e) = check_url(&url, false) {
                        problem(
                            "redis_url",
                            Some(format!("{:?}", redact(&url))),
                            e.to_string(),
                        );
                    }
                    RedisUrl::Url(url)
                }
                (None, Some(var)) if !var.is_empty() => RedisUrl::Env(var),
                (None, Some(_)) => {
                    problem("redis_url_env", None, "must name a variable".into());
                    RedisUrl::Env(String::new())
                }
                (Some(_), Some(_)) | (None, None) => {
                    let why = "needs exactly one of redis_url and redis_url_env";
                    problem("backend", Some("\"redis\"".into()), why.into());
                    RedisUrl::Url(String::new())
                }
            };
            let timeout = timeout.unwrap_or(Duration::from_millis(50));
            if timeout > Duration::from_secs(10) {
                let shown = humantime::format_duration(timeout).to_string();
                let why = "must be at most 10s: requests wait this long when Redis is slow";
                problem("redis_timeout", Some(format!("{shown:?}")), why.into());
            }
            Backend::Redis(RedisBackend { url, timeout })
        }
        Some(other) => {
            let why = "must be \"local\" or \"redis\"";
            problem("backend", Some(format!("{other:?}")), why.into());
            Backend::Local
        }
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

    /// The backend keys as parsed from `lines` under `[rate_limit]`.
    fn parse(lines: &str) -> Result<Backend, Vec<String>> {
        let text = format!("{MINIMAL}[rate_limit]\n{lines}\n");
        Config::parse(&text)
            .map(|c| c.rate_limit.backend)
            .map_err(|p| p.0.into_iter().map(|p| p.key).collect())
    }

    #[test]
    fn backend_keys_default_and_complain() {
        assert_eq!(parse(""), Ok(Backend::Local));
        assert_eq!(
            parse("backend = \"redis\"\nredis_url = \"redis://r:6379\""),
            Ok(Backend::Redis(RedisBackend {
                url: RedisUrl::Url("redis://r:6379".into()),
                timeout: Duration::from_millis(50),
            }))
        );
        let keys = |r: Result<Backend, Vec<String>>| r.err().unwrap_or_default();
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
            config.rate_limit.backend,
            Backend::Redis(RedisBackend {
                url: RedisUrl::Env("CHAT_GATEWAY_REDIS_URL".into()),
                timeout: Duration::from_millis(50),
            })
        );
    }
}
