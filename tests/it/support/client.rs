//! The caller side: one request over a fresh HTTP/1.1 or h2c connection, the answer as
//! the caller got it, and reading a metrics scrape.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    /// Whether the answer says its request may have reached Tencent.
    pub fn in_doubt(&self) -> bool {
        match self.headers.get("x-chat-gateway-in-doubt") {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) => panic!("X-Chat-Gateway-In-Doubt is {v:?}, not \"true\""),
        }
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

/// A JSON POST with extra `headers`, over a fresh connection.
pub async fn post_with_headers(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
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
