//! The pooled HTTPS client to Tencent (hyper-util + hyper-rustls), and the service at the
//! bottom of the pipeline that sends one attempt and reads its answer.
//!
//! Never log or display the request URI or a client error that may hold it: the UserSig is in
//! the query string.

mod decode;
pub mod targets;

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::api::Api;
use crate::error::{GatewayError, UpstreamFailure};
use crate::exchange::{BoxFuture, GatewayResponse, UpstreamReport};
use crate::metrics::Metrics;

/// Largest upstream answer the gateway passes on. Counter answers are a few hundred bytes;
/// this leaves room for the bulkier v4 APIs under `allow = ["*"]`.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// How much of an answer is read to find its ErrorCode.
const ERROR_CODE_PREFIX: usize = 4096;

pub type HttpsClient = Client<TimeoutConnector<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// Bounds the whole connection set-up (DNS, TCP connect and TLS handshake) by
/// `connect_timeout`: hyper's own connect timeout covers only the TCP connect, so a peer that
/// accepts and then stalls the handshake would otherwise hold the request until
/// `request_timeout`, and not count as the connect failure it is.
#[derive(Debug, Clone)]
pub struct TimeoutConnector<C> {
    inner: C,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("connection set-up took longer than {0:?}")]
pub struct ConnectTimedOut(Duration);

impl<C> Service<http::Uri> for TimeoutConnector<C>
where
    C: Service<http::Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<Result<C::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as Self::Error),
            }
        })
    }
}

/// Reads PEM certificates; the error says why in words, never with file content.
pub fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("chat.ca_file: {0}")]
    CaFile(String),
    #[error("chat.ca_file: a certificate was refused: {0}")]
    BadCertificate(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
}

/// The pooled client: public web roots plus `ca_file`, TLS 1.2 and 1.3, HTTP/2 when the server
/// offers it by ALPN, keep-alive, connect timeout. Up to `max_idle` connections stay open per
/// host: as many as attempts may be under way (`upstream.max_in_flight`), so that a burst of
/// slow answers does not end in closing and re-opening (re-handshaking) connections.
pub fn build_client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    max_idle: usize,
) -> Result<HttpsClient, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path).map_err(ClientSetupError::CaFile)? {
            roots.add(cert).map_err(ClientSetupError::BadCertificate)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ClientSetupError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    // Plain http is reachable only for loopback endpoints: the config refuses anything else.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(max_idle)
        .build(TimeoutConnector {
            inner: https,
            timeout: connect_timeout,
        }))
}

/// Sends one attempt and reads the answer within `request_timeout`, with at most
/// `upstream.max_in_flight` attempts under way at once.
#[derive(Clone)]
pub struct UpstreamService {
    /// Shared, not cloned per request: a client clone copies its connector, pool handle,
    /// executor and timers.
    client: Arc<HttpsClient>,
    /// One permit per attempt under way. Over HTTP/1.1 each attempt holds a connection, so
    /// this is also the most connections open per host: without it, a thousand callers make a
    /// thousand TLS connections (~40 KB of buffers each) where a few dozen carry the load.
    slots: Arc<Semaphore>,
    request_timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamService")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamService {
    pub fn new(
        client: HttpsClient,
        request_timeout: Duration,
        max_in_flight: usize,
        metrics: Metrics,
    ) -> Self {
        UpstreamService {
            client: Arc::new(client),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            request_timeout,
            metrics,
        }
    }
}

impl UpstreamService {
    /// The same pool and slots under another `request_timeout` (a reloaded config).
    pub fn with_request_timeout(&self, request_timeout: Duration) -> Self {
        UpstreamService {
            request_timeout,
            ..self.clone()
        }
    }
}

/// Waits up to `limit` for a free attempt slot. `None` when none freed in time: the request
/// was never sent, so the caller may safely try again.
async fn take_slot(
    slots: &Arc<Semaphore>,
    limit: Duration,
    metrics: &Metrics,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    let waiting = metrics.upstream_waiting().clone();
    waiting.inc();
    let permit = tokio::time::timeout(limit, slots.clone().acquire_owned()).await;
    waiting.dec();
    // The semaphore is never closed, so an acquire error cannot happen; treat it as no slot.
    permit.ok().and_then(Result::ok)
}

impl Service<Request<Full<Bytes>>> for UpstreamService {
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = BoxFuture<Result<GatewayResponse, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let client = self.client.clone();
        let slots = self.slots.clone();
        let metrics = self.metrics.clone();
        let timeout = self.request_timeout;
        // The allow-list always sets the API; a bare request (a test's) is labelled `other`.
        let api = req.extensions().get::<Api>().cloned();
        Box::pin(async move {
            let name: &str = api.as_ref().map_or(crate::api::OTHER, |a| &a.name);
            let time_round_trip = |seconds: f64| {
                if let Some(api) = &api {
                    api.metrics(&metrics).upstream_duration(seconds);
                }
            };
            // A request waits for a slot at most request_timeout; the attempt then gets its
            // own request_timeout, which is what the setting promises ("send to last byte").
            let Some(slot) = take_slot(&slots, timeout, &metrics).await else {
                tracing::warn!(api = name, timeout = ?timeout, "no upstream slot freed in time; not sent");
                return Err(GatewayError::Overloaded);
            };
            let started = Instant::now();
            let in_flight = InFlight::enter(&metrics);
            let result = tokio::time::timeout(timeout, round_trip(&client, req)).await;
            drop(in_flight);
            drop(slot);
            let elapsed = started.elapsed();
            match result {
                Err(_) => {
                    time_round_trip(elapsed.as_secs_f64());
                    tracing::warn!(api = name, timeout = ?timeout, "upstream did not answer in time");
                    Err(GatewayError::UpstreamTimeout(elapsed))
                }
                Ok(Err(failure)) => {
                    // A failed connect never reached Tencent: it is no round trip to time.
                    if failure != UpstreamFailure::Connect {
                        time_round_trip(elapsed.as_secs_f64());
                    }
                    tracing::warn!(api = name, failure = %failure, "upstream request failed");
                    Err(GatewayError::UpstreamUnavailable { failure, elapsed })
                }
                Ok(Ok(mut response)) => {
                    let error_code = error_code(response.body_bytes());
                    time_round_trip(elapsed.as_secs_f64());
                    match &api {
                        Some(api) => api.metrics(&metrics).upstream_error_code(error_code),
                        None => metrics.upstream_error_code(name, error_code),
                    }
                    let response = response.finish(UpstreamReport {
                        error_code,
                        elapsed,
                    });
                    Ok(response)
                }
            }
        })
    }
}

/// The answer as it came, body read in full.
struct Answer {
    response: Response<Bytes>,
}

impl Answer {
    fn body_bytes(&mut self) -> &[u8] {
        self.response.body()
    }

    /// Status, Content-Type and body go back unchanged (a gzip or deflate body decoded, see
    /// [`decode`]); other upstream headers stay behind, except a Content-Encoding the gateway
    /// could not undo: without it the caller could not read the body.
    fn finish(self, report: UpstreamReport) -> GatewayResponse {
        let (parts, body) = self.response.into_parts();
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = parts.status;
        for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
            if let Some(value) = parts.headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response.extensions_mut().insert(report);
        response
    }
}

async fn round_trip(
    client: &HttpsClient,
    req: Request<Full<Bytes>>,
) -> Result<Answer, UpstreamFailure> {
    let response = client.request(req).await.map_err(|e| {
        // `e` may carry the URI: only its class is kept.
        if e.is_connect() {
            UpstreamFailure::Connect
        } else {
            UpstreamFailure::Io
        }
    })?;
    let (mut parts, body) = response.into_parts();
    // hyper skips 100-199 interim answers but hands back a 101: no answer a caller can use
    // (and an upgraded connection is no HTTP answer at all).
    if parts.status.is_informational() {
        return Err(UpstreamFailure::BadResponse);
    }
    let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(UpstreamFailure::ResponseTooLarge)
        }
        Err(_) => return Err(UpstreamFailure::BadResponse),
    };
    let body = decode::plain(&mut parts.headers, body, MAX_RESPONSE_BYTES);
    Ok(Answer {
        response: Response::from_parts(parts, body),
    })
}

/// Decrements the in-flight gauge however the attempt ends (including cancellation).
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &Metrics) -> Self {
        let gauge = metrics.upstream_in_flight().clone();
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The top-level `ErrorCode` of a Tencent answer, read from at most the first 4 KiB; the rest
/// of the body is not parsed. `None` when there is none or it is not an integer.
pub fn error_code(body: &[u8]) -> Option<i64> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Find<'a>(&'a mut Option<i64>);

    impl<'de> Visitor<'de> for Find<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "ErrorCode" {
                    *self.0 = map.next_value::<i64>().ok();
                    // Stop here: the rest of the body need not be parsed. The deserializer
                    // reports the unread rest as an error, which the caller ignores.
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let prefix = &body[..body.len().min(ERROR_CODE_PREFIX)];
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(prefix);
    let _ = de.deserialize_map(Find(&mut found));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_is_read_without_the_rest() {
        assert_eq!(
            error_code(br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[]}"#),
            Some(0)
        );
        assert_eq!(
            error_code(br#"{"ActionStatus":"FAIL","ErrorInfo":"x","ErrorCode":10010}"#),
            Some(10010)
        );
        // Truncated after the code: still found.
        assert_eq!(
            error_code(br#"{"ErrorCode":70001,"GroupCounter":[{"Key":"#),
            Some(70001)
        );
        // A code inside a nested object or a string is not the answer's code.
        assert_eq!(
            error_code(br#"{"Inner":{"ErrorCode":5},"Text":"\"ErrorCode\":6"}"#),
            None
        );
        assert_eq!(error_code(br#"{"ErrorCode":"10010"}"#), None);
        assert_eq!(error_code(b"<html>502</html>"), None);
        assert_eq!(error_code(b""), None);
        assert_eq!(error_code(br#"{"ErrorCode":-1}"#), Some(-1));
        let mut long = br#"{"Pad":""#.to_vec();
        long.extend(std::iter::repeat_n(b'x', 5000));
        long.extend(br#"","ErrorCode":1}"#);
        assert_eq!(error_code(&long), None, "beyond the prefix is not read");
    }

    #[test]
    fn ca_file_errors_say_why() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not pem").expect("write");
        assert!(read_ca_file(&path)
            .expect_err("no certs")
            .contains("no PEM certificate"));
        assert!(read_ca_file(&dir.path().join("missing"))
            .expect_err("missing")
            .contains("cannot read"));
    }
}
