//! What a config file points at, checked before the gateway starts (`check-config`): the
//! secret key, the CA file, caller TLS files and the tokens file can be read and used.

use crate::config::{Config, Problem, RedisBackend, RedisUrl, SecretSource};

/// Checks what the file points at: the secret key can be read and is not empty, the CA
/// file holds certificates, the tokens file can be read. Never prints a secret.
pub fn check_environment(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    match &config.chat.secret {
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
    if let Some(path) = &config.chat.ca_file {
        if let Err(why) = crate::upstream::read_ca_file(path) {
            problems.push(Problem {
                key: "chat.ca_file".into(),
                value: Some(format!("{:?}", path.display().to_string())),
                why,
            });
        }
    }
    if let Some(tls) = config.server.tls() {
        if let Err(e) = crate::server::tls::load(&tls) {
            problems.push(Problem {
                key: e.key().into(),
                value: Some(format!("{:?}", e.path().display().to_string())),
                why: e.to_string(),
            });
        }
    }
    if let Some(RedisBackend {
        url: RedisUrl::Env(var),
        ..
    }) = config.rate_limit.redis()
    {
        if let Err(e) = crate::config::redis::url_from_env(&var) {
            problems.push(Problem {
                key: "rate_limit.redis_url_env".into(),
                value: Some(format!("{var:?}")),
                why: e.to_string(),
            });
        }
    }
    if let Some(path) = &config.auth.tokens_file {
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
