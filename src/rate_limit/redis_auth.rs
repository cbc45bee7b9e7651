//! Who the gateway is to Redis: the ACL user and its password, the roots trusted for a
//! rediss:// Redis and the client certificate shown to it. [`RedisSettings::node`] turns them
//! into what redis-rs takes for one node (a standalone URL, a cluster's seed node or a
//! sentinel alike): a [`ConnectionInfo`] with the user and the current password, and the
//! [`TlsCertificates`] (for a cluster, `ClusterClientBuilder::certs`; for sentinels, the
//! builder's certificates of the sentinels and of the master). The password file is re-read
//! when it changes ([`RedisSettings::watch_password`]): the next connection uses the new
//! password, and a working connection is left alone. The password is never shown: `Debug`
//! hides it, and no error holds it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use redis::{
    ClientTlsConfig, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, TlsCertificates,
};

use rustls::AlertDescription;

use crate::config::redis::{is_tls, PasswordSource, RedisAuth};

/// A setting that cannot be used; `key()` names the config key. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisAuthError {
    #[error("environment variable {0} is not set (or not UTF-8)")]
    PasswordEnvMissing(String),
    #[error("environment variable {0} is empty")]
    PasswordEnvEmpty(String),
    #[error("cannot read the password: {0}")]
    PasswordFile(std::io::ErrorKind),
    #[error("the file is empty (it must hold the password)")]
    PasswordFileEmpty,
    #[error("{0}")]
    CaFile(String),
    #[error("{0}")]
    ClientCert(String),
    #[error("{0}")]
    ClientKey(String),
    #[error("used only over TLS, but the Redis URL is not rediss://")]
    NotTls(&'static str),
    #[error("not a valid Redis URL (redis://[user:password@]host[:port][/db])")]
    Url,
}

impl RedisAuthError {
    /// The config key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            RedisAuthError::PasswordEnvMissing(_) | RedisAuthError::PasswordEnvEmpty(_) => {
                "rate_limit.redis_password_env"
            }
            RedisAuthError::PasswordFile(_) | RedisAuthError::PasswordFileEmpty => {
                "rate_limit.redis_password_file"
            }
            RedisAuthError::CaFile(_) => "rate_limit.redis_ca_file",
            RedisAuthError::ClientCert(_) => "rate_limit.redis_client_cert_file",
            RedisAuthError::ClientKey(_) => "rate_limit.redis_client_key_file",
            RedisAuthError::NotTls(key) => key,
            RedisAuthError::Url => "rate_limit.redis_url",
        }
    }
}

/// Redis refused the gateway at start-up: the gateway does not start. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisRefused {
    #[error("rate_limit: Redis at {addr} refused the username/password ({code}): check rate_limit.redis_username and redis_password_env / redis_password_file (or the user and password of the Redis URL)")]
    Credentials { addr: String, code: String },
    #[error("rate_limit: the certificate of Redis at {addr} is not trusted: {why} (name the CA that issued it in rate_limit.redis_ca_file)")]
    Certificate { addr: String, why: String },
    #[error("rate_limit: Redis at {addr} refused the gateway's TLS client certificate ({why}): set rate_limit.redis_client_cert_file and redis_client_key_file to a certificate Redis trusts (its tls-ca-cert-file)")]
    ClientCertificate { addr: String, why: String },
}

/// What a refusal of Redis at start-up is, if `error` is one: wrong credentials, an untrusted
/// server certificate, or a client certificate Redis refuses (or misses).
pub fn refusal(error: &RedisError, addr: &str) -> Option<RedisRefused> {
    let addr = addr.to_string();
    if error.kind() == ErrorKind::AuthenticationFailed {
        let code = error.code().unwrap_or("AUTH failed").to_string();
        return Some(RedisRefused::Credentials { addr, code });
    }
    if let Some(code @ ("NOAUTH" | "WRONGPASS")) = error.code() {
        let code = code.to_string();
        return Some(RedisRefused::Credentials { addr, code });
    }
    let tls = tls_error(error)?;
    match tls {
        rustls::Error::InvalidCertificate(_) => Some(RedisRefused::Certificate {
            addr,
            why: tls.to_string(),
        }),
        // What a server says when it refuses (or misses) a client certificate; TLS 1.2
        // servers say handshake_failure for a missing one, and decrypt_error is its failed
        // check of the certificate's (or the handshake's) signature by the client's key.
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
            | AlertDescription::DecryptError,
        ) => Some(RedisRefused::ClientCertificate {
            addr,
            why: tls.to_string(),
        }),
        _ => None,
    }
}

/// The TLS error under a Redis error (the handshake's, carried by an I/O error).
fn tls_error(error: &RedisError) -> Option<&rustls::Error> {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    for _ in 0..8 {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref()?,
            None => cause.source()?,
        };
    }
    None
}

/// The user, the current password and the TLS files, loaded.
pub struct RedisSettings {
    username: Option<String>,
    password_file: Option<PathBuf>,
    password: ArcSwapOption<String>,
    tls: Option<TlsCertificates>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("username", &self.username)
            .field("password", &self.password.load().as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What redis-rs takes for one node.
#[derive(Clone)]
pub struct NodeSettings {
    pub info: ConnectionInfo,
    pub tls: Option<TlsCertificates>,
}

impl std::fmt::Debug for NodeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSettings")
            .field("addr", &self.info.addr.to_string())
            .field("username", &self.info.redis.username)
            .field(
                "password",
                &self.info.redis.password.as_ref().map(|_| "***"),
            )
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl NodeSettings {
    /// The same node without a user or password (a sentinel, asked with TLS alone).
    pub fn anonymous(mut self) -> Self {
        self.info.redis.username = None;
        self.info.redis.password = None;
        self
    }

    /// The client for this node.
    pub fn client(self) -> redis::RedisResult<redis::Client> {
        match self.tls {
            Some(certs) => redis::Client::build_with_tls(self.info, certs),
            None => redis::Client::open(self.info),
        }
    }
}

impl RedisSettings {
    /// Reads the password (from its variable or file) and the TLS files.
    pub fn load(auth: &RedisAuth) -> Result<Self, RedisAuthError> {
        let (password, password_file) = match &auth.password {
            None => (None, None),
            Some(PasswordSource::Env(var)) => (Some(password_from_env(var)?), None),
            Some(PasswordSource::File(path)) => {
                (Some(password_from_file(path)?), Some(path.clone()))
            }
        };
        let root_cert = match &auth.ca_file {
            Some(path) => Some(with_public_roots(
                read_certs(path).map_err(RedisAuthError::CaFile)?,
            )),
            None => None,
        };
        let client_tls = match &auth.client_cert {
            Some((cert, key)) => Some(read_client_cert(cert, key)?),
            None => None,
        };
        let tls = (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        });
        Ok(RedisSettings {
            username: auth.username.clone(),
            password_file,
            password: ArcSwapOption::new(password.map(Arc::new)),
            tls,
        })
    }

    /// The connection settings of the node at `url`: its address and database from the URL,
    /// the configured user and current password (in place of any in the URL), and the TLS
    /// roots and client certificate.
    pub fn node(&self, url: &str) -> Result<NodeSettings, RedisAuthError> {
        let info = url
            .into_connection_info()
            .map_err(|_| RedisAuthError::Url)?;
        if self.tls.is_some() && !is_tls(url) {
            let key = match &self.tls {
                Some(TlsCertificates {
                    client_tls: Some(_),
                    ..
                }) => "rate_limit.redis_client_cert_file",
                _ => "rate_limit.redis_ca_file",
            };
            return Err(RedisAuthError::NotTls(key));
        }
        Ok(self.with_credentials(info, self.tls.clone()))
    }

    /// `info` with the configured user and current password (in place of any it has).
    pub fn with_credentials(
        &self,
        mut info: ConnectionInfo,
        tls: Option<TlsCertificates>,
    ) -> NodeSettings {
        if let Some(username) = &self.username {
            info.redis.username = Some(username.clone());
        }
        if let Some(password) = self.password.load_full() {
            info.redis.password = Some(password.to_string());
        }
        NodeSettings { info, tls }
    }

    /// The current password, to scrub from texts before they are logged.
    pub fn password(&self) -> Option<Arc<String>> {
        self.password.load_full()
    }

    /// With `redis_password_file`: re-reads it whenever it changes, until `stop`.
    pub fn watch_password(
        self: &Arc<Self>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let path = self.password_file.clone()?;
        let settings = self.clone();
        Some(crate::watch::watch(
            path,
            crate::watch::POLL_INTERVAL,
            move |path| settings.reload_password(path),
            stop,
        ))
    }

    /// Takes the file's password for the next connections; an unreadable or empty file keeps
    /// the one in use.
    pub fn reload_password(&self, path: &Path) {
        match password_from_file(path) {
            Ok(password) => {
                if self.password.load().as_deref() != Some(&password) {
                    self.password.store(Some(Arc::new(password)));
                    tracing::info!(
                        file = %path.display(),
                        "rate_limit.redis_password_file changed: the next connection to Redis uses the new password"
                    );
                }
            }
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "rate_limit.redis_password_file cannot be used: the previous password stays in use"
            ),
        }
    }
}

fn password_from_env(var: &str) -> Result<String, RedisAuthError> {
    let password =
        std::env::var(var).map_err(|_| RedisAuthError::PasswordEnvMissing(var.to_string()))?;
    if password.is_empty() {
        return Err(RedisAuthError::PasswordEnvEmpty(var.to_string()));
    }
    Ok(password)
}

/// The file's content without the line end an editor or `echo` leaves.
fn password_from_file(path: &Path) -> Result<String, RedisAuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| RedisAuthError::PasswordFile(e.kind()))?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(RedisAuthError::PasswordFileEmpty);
    }
    Ok(password.to_string())
}

/// `pem` and the public web roots after it: redis-rs trusts only the roots it is given, and
/// `redis_ca_file` adds roots to the public ones (as `chat.ca_file` does upstream).
fn with_public_roots(mut pem: Vec<u8>) -> Vec<u8> {
    use base64::Engine;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    for root in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let text = base64::engine::general_purpose::STANDARD.encode(root.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// A PEM file that holds at least one certificate; its bytes.
fn read_certs(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    match certs {
        Err(e) => Err(format!("not valid PEM: {e}")),
        Ok(certs) if certs.is_empty() => Err("holds no PEM certificate".into()),
        Ok(_) => Ok(pem),
    }
}

/// The client certificate and its key, checked to make a TLS client identity.
fn read_client_cert(cert: &Path, key: &Path) -> Result<ClientTlsConfig, RedisAuthError> {
    let client_cert = read_certs(cert).map_err(RedisAuthError::ClientCert)?;
    let client_key =
        std::fs::read(key).map_err(|e| RedisAuthError::ClientKey(format!("cannot read: {e}")))?;
    let parsed_key = match rustls_pemfile::private_key(&mut client_key.as_slice()) {
        Ok(Some(k)) => k,
        Ok(None) => {
            let why = "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)";
            return Err(RedisAuthError::ClientKey(why.into()));
        }
        Err(e) => return Err(RedisAuthError::ClientKey(format!("not valid PEM: {e}"))),
    };
    let chain: Vec<_> = rustls_pemfile::certs(&mut client_cert.as_slice())
        .flatten()
        .collect();
    let unusable = |e: rustls::Error| {
        RedisAuthError::ClientKey(format!(
            "does not make a TLS client identity with the certificate: {e}"
        ))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, parsed_key)
        .map_err(unusable)?;
    Ok(ClientTlsConfig {
        client_cert,
        client_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_adds_to_the_public_roots() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        let pem = with_public_roots(ca.as_bytes().to_vec());
        assert!(pem.starts_with(ca.as_bytes()), "the file's own roots first");
        let parsed: Vec<_> = rustls_pemfile::certs(&mut &pem[ca.len()..])
            .collect::<Result<_, _>>()
            .expect("valid PEM");
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(parsed.len() > 100, "the public web roots: {}", parsed.len());
        assert_eq!(
            parsed[0].as_ref(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
    }

    fn settings(dir: &Path, password: &str) -> RedisSettings {
        let file = dir.join("pw");
        std::fs::write(&file, format!("{password}\n")).expect("write");
        RedisSettings::load(&RedisAuth {
            username: Some("gateway".into()),
            password: Some(PasswordSource::File(file)),
            ..RedisAuth::default()
        })
        .expect("settings")
    }

    #[test]
    fn a_node_takes_the_configured_user_and_password_and_debug_hides_it() {
        let dir = tempfile::tempdir().expect("dir");
        let s = settings(dir.path(), "pw-Hidden-17");
        let node = s
            .node("redis://old:url-pw-Hidden@10.0.0.5:7000/2")
            .expect("node");
        assert_eq!(node.info.redis.username.as_deref(), Some("gateway"));
        assert_eq!(node.info.redis.password.as_deref(), Some("pw-Hidden-17"));
        assert_eq!(node.info.redis.db, 2);
        assert_eq!(node.info.addr.to_string(), "10.0.0.5:7000");
        for shown in [format!("{s:?}"), format!("{node:?}")] {
            assert!(!shown.contains("pw-Hidden"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn the_password_file_is_taken_again_when_it_changes_and_kept_when_unusable() {
        let dir = tempfile::tempdir().expect("dir");
        let s = settings(dir.path(), "first");
        let file = dir.path().join("pw");
        std::fs::write(&file, "second\r\n").expect("write");
        s.reload_password(&file);
        assert_eq!(s.password().as_deref().map(String::as_str), Some("second"));
        std::fs::write(&file, "").expect("write");
        s.reload_password(&file);
        std::fs::remove_file(&file).expect("remove");
        s.reload_password(&file);
        assert_eq!(s.password().as_deref().map(String::as_str), Some("second"));
        let node = s.node("redis://h:1").expect("node");
        assert_eq!(node.info.redis.password.as_deref(), Some("second"));
    }

    #[test]
    fn tls_files_need_a_rediss_url() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("cert");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca.pem()).expect("write");
        let s = RedisSettings::load(&RedisAuth {
            ca_file: Some(file),
            ..RedisAuth::default()
        })
        .expect("settings");
        assert!(s.node("rediss://h:6380").is_ok());
        let e = s.node("redis://h:6379").expect_err("plain");
        assert_eq!(e.key(), "rate_limit.redis_ca_file");
        assert!(s.node("rediss://h:6380").expect("node").client().is_ok());
    }
}
