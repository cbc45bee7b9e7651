//! Raw HTTP/1.1 plumbing for fault injection (faults/, soak.rs): an upstream driven by hand
//! over a plain `TcpStream`, so a test can reset, stall, truncate or garble at will, and a
//! caller side that can send bytes no well-behaved client would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

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

/// A [`RawScript`] from an async closure over the connection.
pub fn raw_script<F, Fut>(f: F) -> RawScript
where
    F: Fn(RawConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move |conn| Box::pin(f(conn)))
}
