//! A scripted HTTP(S) upstream that records every request it sees.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

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
