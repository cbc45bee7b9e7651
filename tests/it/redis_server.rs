//! A real `redis-server` for one test: on a free 127.0.0.1 port, no persistence, stopped by
//! PID on drop. Never a fixed port, never a stand-in.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::require_tool;

pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    /// For a server on its TLS port alone ([`RedisServer::start_tls_only`]): what `redis-cli`
    /// needs to reach it (`--tls`, the CA and a client certificate).
    tls_cli: Option<Vec<String>>,
    extra: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Redis 7 refuses `DEBUG` unless told otherwise; Redis 6 does not know the option.
fn debug_option() -> Vec<String> {
    let version = Command::new(require_tool("redis-server"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let major: u32 = version
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major >= 7 {
        vec!["--enable-debug-command".into(), "local".into()]
    } else {
        Vec::new()
    }
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` options, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            tls_port: None,
            tls_cli: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        server
    }

    /// Also on a TLS port with the CA's server certificate; with `verify_clients`, a client
    /// must show a certificate the CA signed. The plain port stays, for `cli`.
    pub fn start_tls(ca: &crate::support::TestCa, verify_clients: bool, extra: &[&str]) -> Self {
        let tls_port = free_port();
        let (cert, key) = ca.server_files();
        let mut args: Vec<String> = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.ca_file().display().to_string(),
            "--tls-auth-clients".into(),
            if verify_clients { "yes" } else { "no" }.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_with(&args);
        server.tls_port = Some(tls_port);
        server
    }

    /// On a TLS port alone (`--port 0`), a client must show a certificate the CA signed, and
    /// the server uses its certificate as a client too (replication, the cluster bus) when
    /// `extra` asks for TLS there. `port` is the TLS port; `cli` goes over TLS.
    pub fn start_tls_only(ca: &crate::support::TestCa, extra: &[&str]) -> Self {
        let (cert, key) = ca.server_files();
        let mut args: Vec<String> = [
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.ca_file().display().to_string(),
            "--tls-auth-clients",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let port = free_port();
        let mut server = RedisServer {
            port,
            tls_port: Some(port),
            tls_cli: Some(tls_cli_args(ca)),
            extra: args,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.spawn();
        server
    }

    /// The rediss:// URL of the TLS port.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/0",
            self.tls_port.expect("started with TLS")
        )
    }

    fn spawn(&mut self) {
        let ports = match &self.tls_cli {
            Some(_) => vec!["--port", "0", "--tls-port"],
            None => vec!["--port"],
        };
        let child = Command::new(require_tool("redis-server"))
            .args(ports)
            .args([&self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(debug_option())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A PING on a fresh connection gets an answer (PONG, or NOAUTH with a password set).
    fn answers(&self) -> bool {
        if self.tls_cli.is_some() {
            return !self.cli(&["ping"]).trim().is_empty();
        }
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it by PID (SIGKILL: no goodbye to clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. `-STOP`: silent without closing a connection) by PID.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal}");
        }
    }

    /// Not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require_tool("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.tls_cli.iter().flatten())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `cmdstat_<name>` calls so far (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["info", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// `redis-cli`'s options to reach a server of `ca` over TLS with the CA's client certificate.
pub fn tls_cli_args(ca: &crate::support::TestCa) -> Vec<String> {
    let (cert, key) = ca.client_files();
    vec![
        "--tls".into(),
        "--cacert".into(),
        ca.ca_file().display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
