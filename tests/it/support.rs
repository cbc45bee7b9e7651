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
pub const UPDATE: &str = "/v4/group_open_http_svc/update_group_counter";
pub const GET: &str = "/v4/group_open_http_svc/get_group_counter";
pub const DELETE: &str = "/v4/group_open_http_svc/delete_group_counter";

pub fn key() -> SecretKey {
    SecretKey::new(SECRET).expect("key")
}

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
        let server = rcgen::CertificateParams::new(names)
            .expect("params")
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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let emulator = Emulator::new(SDKAPPID, ADMIN, key());
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
            key(),
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
