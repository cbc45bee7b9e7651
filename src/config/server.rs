//! `[server]`: the caller and admin listeners, body and header limits, shutdown timing, and
//! the runtime's threads.

use std::net::SocketAddr;
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
