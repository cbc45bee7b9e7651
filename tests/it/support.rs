//! Spawns gateways, emulators and scripted upstreams on 127.0.0.1:0, and a plain HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chat_gateway::config::Config;
use chat_gateway::emulator::{self, Emulator};
use chat_gateway::usersig::SecretKey;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SDKAPPID: u64 = 1400000000;
pub const ADMIN: &str = "administrator";
pub const SECRET: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
pub const UPDATE: &str = chat_gateway::apis::update_group_counter::API.path;
pub const GET: &str = chat_gateway::apis::get_group_counter::API.path;
pub const DELETE: &str = chat_gateway::apis::delete_group_counter::API.path;

pub fn key() -> SecretKey {
    SecretKey::new(SECRET).expect("key")
}

/// A calendar day: year, month, day.
pub type Day = (i32, u8, u8);

/// A CA made for one test, and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_server_names(vec!["127.0.0.1".into(), "localhost".into()])
    }

    pub fn with_server_names(names: Vec<String>) -> Self {
        Self::issue(&names, None)
    }

    /// A new CA and a server certificate it signed for `names`, valid from the first day to
    /// the second (rcgen's long default when `None`).
    pub fn issue(names: &[String], validity: Option<(Day, Day)>) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "chat-gateway test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(names.to_vec()).expect("params");
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");
        let server_config = emulator::tls_config(
            server.pem().as_bytes(),
            server_key.serialize_pem().as_bytes(),
        )
        .expect("tls config");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        TestCa {
            dir,
            ca_pem: ca.pem(),
            server_config,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Something that stops when dropped.
pub struct Stopper(Option<oneshot::Sender<()>>);

impl Stopper {
    pub fn new() -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = oneshot::channel::<()>();
        (Stopper(Some(tx)), async move {
            let _ = rx.await;
        })
    }
    pub fn stop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct EmulatorHandle {
    pub addr: SocketAddr,
    pub emulator: Arc<Emulator>,
    pub tls: bool,
    _stop: Stopper,
}

impl EmulatorHandle {
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }
}

pub async fn spawn_emulator(tls: Option<&TestCa>) -> EmulatorHandle {
    spawn_emulator_with_latency(tls, Duration::ZERO).await
}

/// An emulator that waits `latency` before each answer.
pub async fn spawn_emulator_with_latency(
    tls: Option<&TestCa>,
    latency: Duration,
) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let emulator = Emulator::with_latency(SDKAPPID, ADMIN, key(), latency);
    let (stop, stopped) = Stopper::new();
    tokio::spawn(emulator::serve(
        listener,
        emulator.clone(),
        tls.map(|ca| ca.server_config.clone()),
        stopped,
    ));
    EmulatorHandle {
        addr,
        emulator,
        tls: tls.is_some(),
        _stop: stop,
    }
}

pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Stopper,
    pub task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Sends the shutdown signal (what SIGTERM does in the binary).
    pub fn signal_shutdown(&mut self) {
        self.stop.stop();
    }
}

/// A config for tests: listeners on port 0, the given endpoint, then `extra` TOML lines added
/// to the `[chat]` section or as further sections.
pub fn config_text(endpoint: &str, chat_extra: &str, sections: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_delay = "0s"
shutdown_grace = "5s"

[chat]
sdkappid = {SDKAPPID}
identifier = "{ADMIN}"
endpoint = "{endpoint}"
secret_key_file = "/not/read/in/tests"
{chat_extra}

[upstream]
connect_timeout = "1s"
request_timeout = "2s"
{sections}
"#
    )
}

pub async fn spawn_gateway(config: &str) -> GatewayHandle {
    spawn_gateway_with_key(config, key()).await
}

/// One request as a scripted upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub version: http::Version,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

pub type Script = Arc<dyn Fn(&Recorded) -> (Duration, Response<Full<Bytes>>) + Send + Sync>;

/// An HTTP(S) upstream that records every request and answers as the script says.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    tls: bool,
    _stop: Stopper,
}

impl RecordingUpstream {
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }
    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

pub fn ok_answer(body: &'static str) -> Script {
    Arc::new(move |_| (Duration::ZERO, json_response(body)))
}

pub fn json_response(body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn spawn_recording(tls: Option<&TestCa>, script: Script) -> RecordingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop, stopped) = Stopper::new();
    let acceptor = tls.map(|ca| tokio_rustls::TlsAcceptor::from(ca.server_config.clone()));
    let (seen2, conns2) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        tokio::pin!(stopped);
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let seen = seen2.clone();
            let script = script.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let script = script.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let authority = parts
                            .uri
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                parts
                                    .headers
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        let rec = Recorded {
                            method: parts.method,
                            version: parts.version,
                            authority,
                            path: parts.uri.path().to_string(),
                            query: parts.uri.query().unwrap_or("").to_string(),
                            headers: parts.headers,
                            body,
                        };
                        seen.lock().expect("lock").push(rec.clone());
                        let (delay, response) = script(&rec);
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(response)
                    }
                });
                let builder = chat_gateway::server::connection_builder();
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    RecordingUpstream {
        addr,
        seen,
        connections,
        tls: tls.is_some(),
        _stop: stop,
    }
}

/// An answer as the caller got it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn error_code(&self) -> i64 {
        self.json()["ErrorCode"].as_i64().expect("ErrorCode")
    }
    pub fn rejected(&self) -> Option<&str> {
        self.headers
            .get("x-chat-gateway-rejected")
            .and_then(|v| v.to_str().ok())
    }
    /// Asserts the contract's own-answer shape.
    pub fn assert_rejection(&self, status: u16, code: i64, reason: &str) {
        assert_eq!(self.status.as_u16(), status, "status; body {:?}", self.body);
        assert_eq!(
            self.rejected(),
            Some(reason),
            "reason header; body {:?}",
            self.body
        );
        let json = self.json();
        assert_eq!(json["ActionStatus"], "FAIL");
        assert_eq!(json["ErrorCode"], code, "{json}");
        assert!(
            json["ErrorInfo"].as_str().is_some_and(|s| !s.is_empty()),
            "{json}"
        );
        assert_eq!(
            self.headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    let req = Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("request");
    send(addr, req).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(addr, req).await
}

/// The value of one series in a Prometheus text scrape, e.g.
/// `chat_gateway_requests_total{api="a/b",outcome="ok"}`; 0 when absent.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn scrape(admin: SocketAddr) -> String {
    String::from_utf8(get(admin, "/metrics").await.body.to_vec()).expect("utf8")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 plumbing for fault injection (faults.rs, soak.rs): an upstream driven by hand
// over a plain `TcpStream`, so a test can reset, stall, truncate or garble at will, and a
// caller side that can send bytes no well-behaved client would.
// ---------------------------------------------------------------------------------------------

/// Largest request head the raw upstream reads.
const RAW_MAX_HEAD: usize = 64 * 1024;

/// One HTTP/1.1 request as read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RawRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads one request (head, then `Content-Length` bytes of body). `buf` carries bytes read
/// past the end of one request into the next, on a keep-alive connection. `None` on EOF, an
/// I/O error, or a head that is not HTTP/1.1 as the gateway sends it.
pub async fn read_raw_request<S>(stream: &mut S, buf: &mut Vec<u8>) -> Option<RawRequest>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let head_end = loop {
        if let Some(end) = find_head_end(buf) {
            break end;
        }
        if buf.len() > RAW_MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = Bytes::copy_from_slice(&buf[head_end..head_end + length]);
    buf.drain(..head_end + length);
    Some(RawRequest {
        method,
        target,
        headers,
        body,
    })
}

/// `HTTP/1.1 200 OK` with a JSON body and its `Content-Length` (keep-alive by default).
pub fn raw_json_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a raw upstream saw.
#[derive(Debug, Default)]
pub struct RawLog {
    pub accepted: std::sync::atomic::AtomicUsize,
    pub requests: Mutex<Vec<RawRequest>>,
}

impl RawLog {
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn record(&self, request: &RawRequest) {
        self.requests.lock().expect("lock").push(request.clone());
    }
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().expect("lock").clone()
    }
    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

/// One accepted connection of a raw upstream, handed to its script.
pub struct RawConn {
    pub stream: TcpStream,
    /// 0 for the first connection accepted, and so on.
    pub index: usize,
    pub log: Arc<RawLog>,
}

pub type RawScript = Arc<
    dyn Fn(RawConn) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A plain-TCP upstream whose every connection is driven by a script. Dropping it stops the
/// accept loop and every connection task.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub log: Arc<RawLog>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn_raw_upstream(script: RawScript) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    spawn_raw_upstream_on(listener, script)
}

/// Like [`spawn_raw_upstream`], on a listener the test bound itself.
pub fn spawn_raw_upstream_on(listener: TcpListener, script: RawScript) -> RawUpstream {
    let addr = listener.local_addr().expect("addr");
    let log = Arc::new(RawLog::default());
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        // Aborting this task drops the set, which aborts every connection task.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let index = log2
                .accepted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while connections.try_join_next().is_some() {}
            connections.spawn(script(RawConn {
                stream,
                index,
                log: log2.clone(),
            }));
        }
    });
    RawUpstream { addr, log, task }
}

/// Reads one HTTP/1.1 response (status line, headers, `Content-Length` body). `None` when
/// the connection ends (EOF, reset) before a whole response arrived.
pub async fn read_raw_response<S>(stream: &mut S) -> Option<Reply>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            http::HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Reply {
        status: StatusCode::from_u16(status).ok()?,
        headers,
        body: Bytes::copy_from_slice(&buf[head_end..head_end + length]),
    })
}

/// Sends `bytes` as they are on a fresh connection and reads one response; `None` when the
/// gateway closed the connection without a whole answer. Panics past `limit`.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Option<Reply> {
    use tokio::io::AsyncWriteExt;
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // A write error means the gateway already closed: what it answered (if anything)
        // is still to be read.
        let _ = stream.write_all(bytes).await;
        read_raw_response(&mut stream).await
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer and no close within {limit:?}"))
}

/// This process's resident set size in bytes (the gateway runs in-process in these tests).
pub fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Like [`spawn_gateway`], starting with `key` (use it when the config's `secret_key_file`
/// really exists and holds that key, so that reloads start from the same key).
pub async fn spawn_gateway_with_key(config: &str, key: SecretKey) -> GatewayHandle {
    let config = Config::parse(config).unwrap_or_else(|p| panic!("test config: {p}"));
    let callers = TcpListener::bind(config.server.listen).await.expect("bind");
    let admin = TcpListener::bind(config.server.admin_listen)
        .await
        .expect("bind");
    let addr = callers.local_addr().expect("addr");
    let admin_addr = admin.local_addr().expect("addr");
    let (stop, stopped) = Stopper::new();
    let task = tokio::spawn(async move {
        chat_gateway::run(
            config,
            key,
            chat_gateway::Listeners { callers, admin },
            stopped,
        )
        .await
        .expect("gateway run");
    });
    GatewayHandle {
        addr,
        admin: admin_addr,
        stop,
        task,
    }
}

/// A [`RawScript`] from an async closure over the connection.
pub fn raw_script<F, Fut>(f: F) -> RawScript
where
    F: Fn(RawConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move |conn| Box::pin(f(conn)))
}

/// Sends one request over a fresh HTTP/2 connection without TLS (prior knowledge).
pub async fn send_h2c(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Reads from `stream` until the peer closes it (EOF or reset); `false` if it is still open
/// after `limit`.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain).await.is_ok()
}
