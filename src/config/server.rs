//! `[server]`: the caller and admin listeners, body and header limits, shutdown timing, and
//! the runtime's threads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use super::reader::Reader;

pub const KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "max_body_bytes",
    "drain_delay",
    "shutdown_grace",
    "max_in_flight",
    "header_read_timeout",
    "body_read_timeout",
    "worker_threads",
    "max_connections",
    "write_timeout",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
];

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
    /// Open caller connections at most; more are closed at once.
    pub max_connections: usize,
    /// Longest a connection may go without taking any byte of an answer waiting for it.
    pub write_timeout: Duration,
    /// Callers over TLS, when set.
    pub tls: Option<TlsFiles>,
}

/// The caller-side TLS files; all re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificates are required, and must chain to these roots.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_body_bytes: 65536,
            drain_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            max_in_flight: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            worker_threads: 0,
            max_connections: 10_000,
            write_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

pub fn read(r: &mut Reader, t: &Table) -> ServerConfig {
    let d = ServerConfig::default();
    let server = ServerConfig {
        listen: r.socket_addr(t, "server", "listen").unwrap_or(d.listen),
        admin_listen: r
            .socket_addr(t, "server", "admin_listen")
            .unwrap_or(d.admin_listen),
        max_body_bytes: r
            .positive_int(t, "server", "max_body_bytes", 16 * 1024 * 1024)
            .map_or(d.max_body_bytes, |n| n as usize),
        drain_delay: r
            .duration(t, "server", "drain_delay", true)
            .unwrap_or(d.drain_delay),
        shutdown_grace: r
            .duration(t, "server", "shutdown_grace", false)
            .unwrap_or(d.shutdown_grace),
        max_in_flight: r
            .positive_int(t, "server", "max_in_flight", 1_000_000)
            .map_or(d.max_in_flight, |n| n as usize),
        header_read_timeout: r
            .duration(t, "server", "header_read_timeout", false)
            .unwrap_or(d.header_read_timeout),
        body_read_timeout: r
            .duration(t, "server", "body_read_timeout", false)
            .unwrap_or(d.body_read_timeout),
        worker_threads: match t.get("worker_threads") {
            None => d.worker_threads,
            Some(v) => match v.as_integer() {
                Some(n) if (0..=256).contains(&n) => n as usize,
                _ => {
                    r.problem(
                        "server.worker_threads",
                        Some(v.to_string()),
                        "must be an integer from 0 (one per core) to 256",
                    );
                    d.worker_threads
                }
            },
        },
        max_connections: r
            .positive_int(t, "server", "max_connections", 1_000_000)
            .map_or(d.max_connections, |n| n as usize),
        write_timeout: r
            .duration(t, "server", "write_timeout", false)
            .unwrap_or(d.write_timeout),
        tls: read_tls(r, t),
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
    server
}

fn read_tls(r: &mut Reader, t: &Table) -> Option<TlsFiles> {
    match (
        r.string(t, "server", "tls_cert_file"),
        r.string(t, "server", "tls_key_file"),
        r.string(t, "server", "tls_client_ca_file"),
    ) {
        (None, None, None) => None,
        (Some(cert), Some(key), ca) => Some(TlsFiles {
            cert_file: cert.into(),
            key_file: key.into(),
            client_ca_file: ca.map(PathBuf::from),
        }),
        (None, _, _) => {
            r.problem(
                "server.tls_cert_file",
                None,
                "is required when server.tls_key_file or server.tls_client_ca_file is set",
            );
            None
        }
        (Some(_), None, _) => {
            r.problem(
                "server.tls_key_file",
                None,
                "is required when server.tls_cert_file is set",
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
        assert_eq!(c.server.tls, None);
        let text = format!(
            "{MINIMAL}[server]\nmax_connections = 5\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_client_ca_file = \"/ca\"\n"
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.server.max_connections, 5);
        assert_eq!(
            c.server.tls,
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
