//! `[server]`: the caller and admin listeners, body and header limits, shutdown timing, and
//! the runtime's threads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::reader::{section, Reader};

section! {
    /// The caller and admin listeners, limits, shutdown timing, threads and caller TLS.
    pub struct ServerConfig in "server" {
        /// Where internal services send their requests.
        listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080)), Reader::socket_addr;
        /// /metrics, /healthz and /readyz.
        admin_listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9090)), Reader::socket_addr;
        /// Largest request body accepted.
        max_body_bytes: usize = 65536, |r, s, k| r.positive_int(s, k, 16 * 1024 * 1024);
        /// After a signal, keep serving this long with /readyz at 503.
        drain_delay: Duration = Duration::from_secs(5), |r, s, k| r.duration(s, k, true);
        /// Longest wait for requests in flight, counted from the signal.
        shutdown_grace: Duration = Duration::from_secs(20), |r, s, k| r.duration(s, k, false);
        /// Requests in flight at once; past it, the `overloaded` answer.
        max_in_flight: usize = 1024, |r, s, k| r.positive_int(s, k, 1_000_000);
        /// Longest a caller may take to send its request headers.
        header_read_timeout: Duration = Duration::from_secs(10), |r, s, k| r.duration(s, k, false);
        /// Longest a caller may take to send its body.
        body_read_timeout: Duration = Duration::from_secs(10), |r, s, k| r.duration(s, k, false);
        /// Runtime threads: 0 = one per core, 1 = a single-threaded runtime.
        worker_threads: usize = 0,
            |r, s, k| r.int_in(s, k, 0..=256, "must be an integer from 0 (one per core) to 256");
        /// Open caller connections at most; more are closed at once.
        max_connections: usize = 10_000, |r, s, k| r.positive_int(s, k, 1_000_000);
        /// Longest a connection may go without taking any byte of an answer waiting for it.
        write_timeout: Duration = Duration::from_secs(10), |r, s, k| r.duration(s, k, false);
        /// Callers over TLS: the certificate chain (PEM), with `tls_key_file`.
        tls_cert_file: Option<PathBuf> = None, Reader::path;
        /// The certificate's private key (PEM).
        tls_key_file: Option<PathBuf> = None, Reader::path;
        /// Client certificates are required, and must chain to these roots (PEM).
        tls_client_ca_file: Option<PathBuf> = None, Reader::path;
    }
}

/// The caller-side TLS files; all re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificates are required, and must chain to these roots.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerConfig {
    /// Callers over TLS, when the certificate and its key are set.
    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert_file: self.tls_cert_file.clone()?,
            key_file: self.tls_key_file.clone()?,
            client_ca_file: self.tls_client_ca_file.clone(),
        })
    }
}

pub fn read(r: &mut Reader, t: &Table) -> ServerConfig {
    let server = ServerConfig::read_keys(r, t);
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
    check_tls(r, &server);
    server
}

fn check_tls(r: &mut Reader, server: &ServerConfig) {
    let (cert, key, ca) = (
        server.tls_cert_file.is_some(),
        server.tls_key_file.is_some(),
        server.tls_client_ca_file.is_some(),
    );
    if !cert && (key || ca) {
        r.problem(
            "server.tls_cert_file",
            None,
            "is required when server.tls_key_file or server.tls_client_ca_file is set",
        );
    } else if cert && !key {
        r.problem(
            "server.tls_key_file",
            None,
            "is required when server.tls_cert_file is set",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn durations_are_capped_at_a_year() {
        for key in [
            "drain_delay",
            "shutdown_grace",
            "header_read_timeout",
            "write_timeout",
        ] {
            let text = format!("{MINIMAL}[server]\n{key} = \"300000000000years\"\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            let p = problems
                .iter()
                .find(|p| p.key == format!("server.{key}"))
                .unwrap_or_else(|| panic!("{key}: {problems:?}"));
            assert_eq!(p.value.as_deref(), Some("\"300000000000years\""));
            assert!(p.why.contains("at most 365 days"), "{p}");
        }
        let text =
            format!("{MINIMAL}[server]\ndrain_delay = \"1day\"\nshutdown_grace = \"2days\"\n");
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn connection_and_tls_keys() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.write_timeout, Duration::from_secs(10));
        assert_eq!(c.server.tls(), None);
        let text = format!(
            "{MINIMAL}[server]\nmax_connections = 5\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_client_ca_file = \"/ca\"\n"
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.server.max_connections, 5);
        assert_eq!(
            c.server.tls(),
            Some(TlsFiles {
                cert_file: "/c".into(),
                key_file: "/k".into(),
                client_ca_file: Some("/ca".into()),
            })
        );
        for (extra, key) in [
            ("tls_cert_file = \"/c\"", "server.tls_key_file"),
            ("tls_key_file = \"/k\"", "server.tls_cert_file"),
            ("tls_client_ca_file = \"/ca\"", "server.tls_cert_file"),
            ("max_connections = 0", "server.max_connections"),
        ] {
            let text = format!("{MINIMAL}[server]\n{extra}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{extra}: {problems:?}");
            assert_eq!(problems[0].key, key);
        }
    }
}
