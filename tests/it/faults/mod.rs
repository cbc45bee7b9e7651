//! Fault injection: an upstream that misbehaves at the TCP, TLS and HTTP level (driven by hand
//! over raw sockets), callers that misbehave at the HTTP level, files that change under the
//! gateway, overload, shutdown with a stuck upstream, and what the built binary prints while
//! all that happens. Every case asserts the contract's answer and what did (or did not) reach
//! the upstream.

mod callers;
mod hygiene;
mod rotation;
mod shutdown;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::credentials::unix_now;
use chat_gateway::usersig::{self, SecretKey};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) use crate::support::*;

pub(crate) const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const EXPIRED: &str = r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"UserSig expired"}"#;
const RETRIES: &str = "chat_gateway_upstream_retries_total";

/// Every answer in these tests comes within this, or the test fails (never hangs).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

pub(crate) fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

pub(crate) async fn post_in_time(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    tokio::time::timeout(ANSWER_WITHIN, post(addr, path, body))
        .await
        .unwrap_or_else(|_| panic!("no answer to POST {path} within {ANSWER_WITHIN:?}"))
}

/// POST with extra headers, over a fresh connection, within [`ANSWER_WITHIN`].
async fn post_with(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(ANSWER_WITHIN, post_with_headers(addr, path, body, headers))
        .await
        .unwrap_or_else(|_| panic!("no answer to POST {path} within {ANSWER_WITHIN:?}"))
}

pub(crate) async fn scrape_in_time(admin: SocketAddr) -> String {
    tokio::time::timeout(ANSWER_WITHIN, scrape(admin))
        .await
        .unwrap_or_else(|_| panic!("no /metrics answer within {ANSWER_WITHIN:?}"))
}

pub(crate) fn retries(scrape: &str, reason: &str) -> f64 {
    metric(scrape, &format!(r#"{RETRIES}{{reason="{reason}"}}"#))
}

/// `config_text` with other upstream timeouts.
pub(crate) fn with_timeouts(config: String, connect: &str, request: &str) -> String {
    config
        .replace(
            "connect_timeout = \"1s\"",
            &format!("connect_timeout = \"{connect}\""),
        )
        .replace(
            "request_timeout = \"2s\"",
            &format!("request_timeout = \"{request}\""),
        )
}

/// `config_text` with more `[server]` keys.
fn with_server(config: String, lines: &str) -> String {
    config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

fn ca_line(ca: &TestCa) -> String {
    format!("ca_file = {:?}", ca.ca_file().display().to_string())
}

/// A port nothing listens on (it was free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`. Returns how
/// long it took.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request as raw bytes: `POST {target}` with a JSON body and `extra` header lines.
fn raw_post(target: &str, host: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request, records it, then holds the connection open without answering.
pub(crate) fn never_answers() -> RawScript {
    raw_script(|mut c| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
        }
    })
}

/// Reads one request, records it, writes `answer`, then closes (FIN).
pub(crate) fn answers_then_closes(answer: &'static [u8]) -> RawScript {
    raw_script(move |mut c| async move {
        let mut buf = Vec::new();
        if let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
            let _ = c.stream.write_all(answer).await;
            let _ = c.stream.shutdown().await;
        }
    })
}

/// Reads one request in full, records it, then resets the connection (SO_LINGER 0).
fn resets_after_reading() -> RawScript {
    raw_script(|mut c| async move {
        let mut buf = Vec::new();
        if let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
            let _ = c.stream.set_zero_linger();
            drop(c.stream);
        }
    })
}

/// Waits a little so that a resend (which must not happen) would have arrived, then checks
/// the upstream saw exactly one connection and one request.
pub(crate) async fn assert_sent_once(upstream: &RawUpstream, sent: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = upstream.log.requests();
    assert_eq!(seen.len(), 1, "exactly one attempt reached the upstream");
    assert_eq!(
        upstream.log.accepted(),
        1,
        "one connection, no second attempt"
    );
    assert_eq!(seen[0].body, sent.as_bytes(), "the whole body arrived");
}

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");

/// The built binary, its output read continuously (trace logs overflow a pipe buffer), killed
/// on drop.
struct Binary {
    child: Option<std::process::Child>,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Binary {
    fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut readers = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut out, &mut buf);
                buf
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut err, &mut buf);
                buf
            }));
        }
        Binary {
            child: Some(child),
            readers,
        }
    }

    fn terminate(&self) {
        let pid = self.child.as_ref().expect("child").id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for exit; returns the exit code and everything printed.
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        for reader in self.readers.drain(..) {
            out.extend(reader.join().unwrap_or_default());
        }
        (code, String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends an Increase that the upstream will hold; resolves to how the caller's request ended
/// and when.
fn spawn_stuck_caller(
    addr: SocketAddr,
) -> tokio::task::JoinHandle<(Result<http::StatusCode, hyper::Error>, Instant)> {
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post(UPDATE)
            .header("host", "gw")
            .body(Full::new(Bytes::from(increase("stuck"))))
            .expect("request");
        let result = sender.send_request(req).await;
        (result.map(|r| r.status()), Instant::now())
    })
}

async fn wait_ready(admin: SocketAddr) {
    eventually(Duration::from_secs(20), "the binary is ready", || async {
        match TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/readyz").await.status == 200,
            Err(_) => false,
        }
    })
    .await;
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
