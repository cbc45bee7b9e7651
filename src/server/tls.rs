//! TLS for callers (the shared-service deployment): a rustls config from PEM files, offering
//! HTTP/2 and HTTP/1.1 by ALPN, optionally requiring client certificates from a CA. The
//! files are re-read when they change; a config that cannot be built keeps the previous one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsFiles;

/// Why the TLS files could not be used: the config key, the file, and why in words (never
/// the file's content).
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct TlsError {
    key: &'static str,
    path: PathBuf,
    why: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, why: impl Into<String>) -> Self {
        TlsError {
            key,
            path: path.to_path_buf(),
            why: why.into(),
        }
    }

    pub fn key(&self) -> &'static str {
        self.key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path)
        .map_err(|e| TlsError::new(key, path, format!("cannot read: {}", e.kind())))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|_| TlsError::new(key, path, "not valid PEM"))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const KEY: &str = "server.tls_key_file";
    let pem = std::fs::read(path)
        .map_err(|e| TlsError::new(KEY, path, format!("cannot read: {}", e.kind())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| TlsError::new(KEY, path, "not valid PEM"))?
        .ok_or_else(|| TlsError::new(KEY, path, "holds no PEM private key"))
}

/// Builds the caller-side TLS config from the files as they are now.
pub fn load(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("server.tls_cert_file", &files.cert_file)?;
    let key = private_key(&files.key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("server.tls_cert_file", &files.cert_file, e.to_string()))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            const KEY: &str = "server.tls_client_ca_file";
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(KEY, ca)? {
                roots.add(cert).map_err(|e| {
                    TlsError::new(KEY, ca, format!("a certificate was refused: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::new(KEY, ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            "server.tls_key_file",
            &files.key_file,
            format!("does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The config new connections get; swapped whole when the files change.
#[derive(Debug)]
pub struct CallerTls {
    files: TlsFiles,
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl CallerTls {
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let config = load(&files)?;
        Ok(CallerTls {
            files,
            current: Arc::new(ArcSwap::from_pointee(config)),
        })
    }

    /// What the accept loop hands each connection.
    pub fn current(&self) -> Arc<ArcSwap<rustls::ServerConfig>> {
        self.current.clone()
    }

    /// The files to watch: certificate, key and client CA.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.files.cert_file.clone(), self.files.key_file.clone()];
        paths.extend(self.files.client_ca_file.clone());
        paths
    }

    /// Re-reads the files. While a rotation is half done (a new certificate next to the old
    /// key) the build fails and the previous config stays; the next change completes it.
    pub fn reload(&self) {
        match load(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!("caller TLS files changed: reloaded; new connections use them");
            }
            Err(e) => tracing::warn!(
                key = e.key(),
                error = %e,
                "caller TLS files changed but could not be used; the previous ones stay in use"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn errors_name_the_key_and_the_file_never_the_content() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let files = |ca: Option<&str>| TlsFiles {
            cert_file: dir.path().join("tls.crt"),
            key_file: dir.path().join("tls.key"),
            client_ca_file: ca.map(|name| dir.path().join(name)),
        };
        let missing = load(&files(None)).expect_err("no files");
        assert_eq!(missing.key(), "server.tls_cert_file");
        assert!(missing.to_string().contains("cannot read"), "{missing}");

        std::fs::write(dir.path().join("tls.crt"), &cert).expect("write");
        std::fs::write(dir.path().join("tls.key"), &other_key).expect("write");
        let mismatch = load(&files(None)).expect_err("key of another certificate");
        assert_eq!(mismatch.key(), "server.tls_key_file");
        assert!(!mismatch.to_string().contains("PRIVATE KEY"));

        std::fs::write(dir.path().join("tls.key"), &key).expect("write");
        let config = load(&files(None)).expect("valid pair");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        std::fs::write(dir.path().join("ca.crt"), "not a certificate").expect("write");
        let bad_ca = load(&files(Some("ca.crt"))).expect_err("no CA");
        assert_eq!(bad_ca.key(), "server.tls_client_ca_file");
        std::fs::write(dir.path().join("ca.crt"), &cert).expect("write");
        load(&files(Some("ca.crt"))).expect("a CA file");
    }
}
