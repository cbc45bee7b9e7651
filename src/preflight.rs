//! What a config file points at, checked before the gateway starts (`check-config`): the
//! secret key, the CA file, caller TLS files and the tokens file can be read and used.

use std::path::Path;

use crate::config::redis::PasswordSource;
use crate::config::{
    Config, Problem, RateLimitConfig, RedisBackend, RedisMode, RedisUrl, SecretSource,
};
use crate::rate_limit::redis_auth::{RedisAuthError, RedisSettings};

/// Reads and checks a config file as `check-config` does: its content, then what it points
/// at. Every problem at once.
pub fn check_file(path: &Path) -> Result<Config, Vec<Problem>> {
    let config = Config::load(path).map_err(|problems| problems.0)?;
    let problems = check_environment(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

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
        } else if let Some(path) = &tls.client_ca_file {
            if let Err(why) = check_client_ca(path) {
                problems.push(Problem {
                    key: "server.tls_client_ca_file".into(),
                    value: Some(format!("{:?}", path.display().to_string())),
                    why,
                });
            }
        }
    }
    if let Some(redis) = config.rate_limit.redis() {
        problems.extend(check_redis(&redis, &config.rate_limit));
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

/// The Redis URL from the environment, the password's variable or file, the TLS files, and
/// whether the URL takes them (rediss://).
fn check_redis(redis: &RedisBackend, config: &RateLimitConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let url = match &redis.url {
        // A cluster's or the sentinels' nodes instead (checked below).
        _ if config.redis_mode != RedisMode::Standalone => None,
        RedisUrl::Url(url) => Some(url.clone()),
        RedisUrl::Env(var) => match crate::config::redis::url_from_env(var) {
            Ok(url) => Some(url),
            Err(e) => {
                problems.push(Problem {
                    key: "rate_limit.redis_url_env".into(),
                    value: Some(format!("{var:?}")),
                    why: e.to_string(),
                });
                None
            }
        },
    };
    let auth = &redis.auth;
    let shown = |key: &str| -> Option<String> {
        let path = match key {
            "rate_limit.redis_password_env" => match &auth.password {
                Some(PasswordSource::Env(var)) => return Some(format!("{var:?}")),
                _ => return None,
            },
            "rate_limit.redis_password_file" => match &auth.password {
                Some(PasswordSource::File(path)) => path,
                _ => return None,
            },
            "rate_limit.redis_ca_file" => auth.ca_file.as_ref()?,
            "rate_limit.redis_client_cert_file" => &auth.client_cert.as_ref()?.0,
            "rate_limit.redis_client_key_file" => &auth.client_cert.as_ref()?.1,
            _ => return None,
        };
        Some(format!("{:?}", path.display().to_string()))
    };
    let mut problem = |e: RedisAuthError| {
        problems.push(Problem {
            key: e.key().into(),
            value: shown(e.key()),
            why: e.to_string(),
        })
    };
    match RedisSettings::load(auth) {
        Err(e) => problem(e),
        Ok(settings) => {
            let nodes = match config.redis_mode {
                RedisMode::Standalone => url.into_iter().collect(),
                _ => config.redis_nodes.clone(),
            };
            // One problem is enough: the nodes share one scheme.
            if let Some(Err(e)) = nodes
                .iter()
                .map(|url| settings.node(url))
                .find(Result::is_err)
            {
                problem(e);
            }
        }
    }
    if let Some(path) = &auth.ca_file {
        if let Err(why) = check_ca(path, "the CA that issued Redis's certificate") {
            problems.push(Problem {
                key: "rate_limit.redis_ca_file".into(),
                value: shown("rate_limit.redis_ca_file"),
                why,
            });
        }
    }
    problems
}

/// Every certificate of a client CA file must be a CA (basicConstraints with cA true): the
/// verifier takes whatever the file holds as a root, so a leaf there would be trusted to
/// vouch for callers without being meant to. Unreadable files are left to the TLS loader,
/// which says why.
pub fn check_client_ca(path: &Path) -> Result<(), String> {
    check_ca(path, "the CA that issues the callers' certificates")
}

/// Every certificate of the file is a CA; `what` says which CA belongs there.
fn check_ca(path: &Path, what: &str) -> Result<(), String> {
    let Ok(pem) = std::fs::read(path) else {
        return Ok(());
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..]).flatten().collect();
    for (n, cert) in certs.iter().enumerate() {
        match is_ca(cert.as_ref()) {
            Some(true) => {}
            Some(false) => {
                return Err(format!(
                    "certificate {} of the file is not a CA (its basicConstraints do not say CA:TRUE): name {what}, not a certificate it issued",
                    n + 1
                ))
            }
            None => {
                return Err(format!(
                    "certificate {} of the file is not a readable X.509 certificate",
                    n + 1
                ))
            }
        }
    }
    Ok(())
}

/// One DER element: its tag, its content, and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Whether an X.509 certificate (DER) says it is a CA; `None` when it cannot be read.
fn is_ca(cert: &[u8]) -> Option<bool> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3; // [3] of tbsCertificate
    const BASIC_CONSTRAINTS: [u8; 3] = [0x55, 0x1d, 0x13]; // 2.5.29.19
    let (SEQUENCE, cert, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der(cert)? else {
        return None;
    };
    while !tbs.is_empty() {
        let (tag, content, rest) = der(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut extensions, _) = der(content)? else {
            return None;
        };
        while !extensions.is_empty() {
            let (_, extension, rest) = der(extensions)?;
            extensions = rest;
            let (0x06, oid, fields) = der(extension)? else {
                return None;
            };
            if oid != BASIC_CONSTRAINTS {
                continue;
            }
            // extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING
            let (mut tag, mut value, rest) = der(fields)?;
            if tag == 0x01 {
                (tag, value, _) = der(rest)?;
            }
            let (0x04, SEQUENCE) = (tag, value.first().copied()?) else {
                return None;
            };
            // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLen OPTIONAL }
            let (_, constraints, _) = der(value)?;
            return Some(match der(constraints) {
                Some((0x01, flag, _)) => flag.first().is_some_and(|b| *b != 0),
                _ => false,
            });
        }
        return Some(false);
    }
    // No extensions (an X.509 v1 certificate): nothing says it is a CA.
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cert(is_ca: rcgen::IsCa) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        params.is_ca = is_ca;
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn a_leaf_certificate_is_not_a_client_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        let ca_pem = cert(rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained));
        std::fs::write(&ca, &ca_pem).expect("write");
        assert_eq!(check_client_ca(&ca), Ok(()));
        for leaf in [rcgen::IsCa::NoCa, rcgen::IsCa::ExplicitNoCa] {
            std::fs::write(&ca, format!("{ca_pem}{}", cert(leaf))).expect("write");
            let why = check_client_ca(&ca).expect_err("a leaf");
            assert!(
                why.starts_with("certificate 2 of the file is not a CA"),
                "{why}"
            );
        }
    }

    #[test]
    fn check_config_refuses_a_leaf_as_client_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("params");
        let leaf = params.self_signed(&key).expect("cert");
        std::fs::write(dir.path().join("tls.crt"), leaf.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("secret"), "k").expect("write");
        let text = format!(
            "[server]\ntls_cert_file = \"{d}/tls.crt\"\ntls_key_file = \"{d}/tls.key\"\ntls_client_ca_file = \"{d}/tls.crt\"\n\
             [chat]\nsdkappid = 1400000000\nregion = \"singapore\"\nsecret_key_file = \"{d}/secret\"\n",
            d = dir.path().display()
        );
        let problems = check_environment(&Config::parse(&text).expect("valid"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "server.tls_client_ca_file");
        assert!(problems[0].why.contains("not a CA"), "{}", problems[0]);
    }
}
