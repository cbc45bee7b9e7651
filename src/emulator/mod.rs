//! The Chat emulator: plays Tencent for the three group-counter APIs, so the gateway (and other
//! teams' integration tests) run without Tencent. It checks the query and the UserSig as
//! Tencent does, keeps counters in memory, and answers in Tencent's envelope, always HTTP 200.

pub mod store;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::credentials::unix_now;
use crate::envelope::fail_body;
use crate::usersig::{self, SecretKey};
use store::CounterStore;

/// Tencent refuses bodies far smaller than this; the emulator only needs a bound.
const MAX_BODY: usize = 1024 * 1024;

/// Open connections at most.
const MAX_CONNECTIONS: usize = 10_000;

/// How long a connection may sit idle between requests.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

pub struct Emulator {
    sdkappid: u64,
    admin: String,
    key: SecretKey,
    store: CounterStore,
    requests: AtomicU64,
    /// Added to every answer, so that a test or benchmark sees Tencent's round trip.
    latency: std::time::Duration,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("sdkappid", &self.sdkappid)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    pub fn new(sdkappid: u64, admin: &str, key: SecretKey) -> Arc<Self> {
        Emulator::with_latency(sdkappid, admin, key, std::time::Duration::ZERO)
    }

    /// An emulator that waits `latency` before answering each request.
    pub fn with_latency(
        sdkappid: u64,
        admin: &str,
        key: SecretKey,
        latency: std::time::Duration,
    ) -> Arc<Self> {
        Arc::new(Emulator {
            sdkappid,
            admin: admin.to_string(),
            key,
            store: CounterStore::new(),
            requests: AtomicU64::new(0),
            latency,
        })
    }

    pub fn latency(&self) -> std::time::Duration {
        self.latency
    }

    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// How many requests reached the emulator (any path, any outcome).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Answers one request as Tencent would: the HTTP status and the JSON body.
    pub fn answer(&self, method: &Method, uri: &http::Uri, body: &[u8]) -> Vec<u8> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if method != Method::POST {
            return fail_body(60009, "only POST is supported");
        }
        let Some(api) = uri.path().strip_prefix("/v4/") else {
            return fail_body(
                60009,
                "unknown resource: the path must be /v4/{service}/{command}",
            );
        };
        let query = match Query::parse(uri.query().unwrap_or("")) {
            Ok(q) => q,
            Err(info) => return fail_body(60002, info),
        };
        if query.sdkappid != self.sdkappid {
            return fail_body(60006, "SDKAppID invalid");
        }
        if let Err(e) = usersig::verify(
            &self.key,
            &query.usersig,
            query.sdkappid,
            &query.identifier,
            unix_now(),
        ) {
            return fail_body(e.error_code(), &format!("UserSig check failed: {e}"));
        }
        if query.identifier != self.admin {
            return fail_body(60010, "this request needs app admin permission");
        }
        self.store.handle(api, body)
    }
}

/// The five query parameters Tencent requires.
struct Query {
    sdkappid: u64,
    identifier: String,
    usersig: String,
}

impl Query {
    fn parse(query: &str) -> Result<Query, &'static str> {
        let (mut sdkappid, mut identifier, mut usersig, mut random, mut contenttype) =
            (None, None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| "query values must be UTF-8")?
                .into_owned();
            let slot = match k {
                "sdkappid" => &mut sdkappid,
                "identifier" => &mut identifier,
                "usersig" => &mut usersig,
                "random" => &mut random,
                "contenttype" => &mut contenttype,
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err("a query parameter is repeated");
            }
        }
        let sdkappid = sdkappid
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("sdkappid is missing or not a number")?;
        let identifier = identifier.ok_or("identifier is missing")?;
        let usersig = usersig.ok_or("usersig is missing")?;
        random
            .and_then(|r| r.parse::<u32>().ok())
            .ok_or("random is missing or not a 32-bit unsigned integer")?;
        if contenttype.as_deref() != Some("json") {
            return Err("contenttype must be json");
        }
        Ok(Query {
            sdkappid,
            identifier,
            usersig,
        })
    }
}

/// A rustls server config from PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &cert_pem[..]).collect();
    let certs = certs.map_err(|e| format!("certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("key PEM: {e}"))?
        .ok_or("no private key in the PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the emulator on `listener` (TLS when `tls` is given) until `stop` resolves, through
/// the gateway's own accept loop.
pub async fn serve(
    listener: TcpListener,
    emulator: Arc<Emulator>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()>,
) {
    let service = hyper::service::service_fn(move |req| handle(emulator.clone(), req));
    let mut options = crate::server::accept::ConnOptions::plain(
        crate::server::connection_builder(),
        crate::server::HEADER_READ_TIMEOUT,
    );
    // Idle connections stay longer than the gateway's pool keeps them (50 s), so that a
    // pooled HTTP/2 connection is not closed under a request about to be sent on it.
    options.idle_timeout = IDLE_TIMEOUT;
    options.tls = tls.map(|config| Arc::new(arc_swap::ArcSwap::new(config)));
    crate::server::serve_plain(listener, service, options, MAX_CONNECTIONS, stop).await;
}

async fn handle(
    emulator: Arc<Emulator>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !emulator.latency.is_zero() {
        tokio::time::sleep(emulator.latency).await;
    }
    let answer = emulator.answer(&parts.method, &parts.uri, &body);
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulator() -> (Arc<Emulator>, SecretKey) {
        let key = SecretKey::new("emulator-test-key").expect("key");
        (Emulator::new(1400000000, "administrator", key.clone()), key)
    }

    fn uri(sdkappid: u64, identifier: &str, sig: &str) -> http::Uri {
        format!("/v4/group_open_http_svc/get_group_counter?sdkappid={sdkappid}&identifier={identifier}&usersig={sig}&random=7&contenttype=json")
            .parse()
            .expect("uri")
    }

    fn code(body: &[u8]) -> i64 {
        crate::upstream::error_code(body).expect("ErrorCode")
    }

    #[test]
    fn checks_the_usersig_as_tencent_does() {
        let (e, key) = emulator();
        let now = unix_now();
        let body = br#"{"GroupId":"g1"}"#;
        let good = usersig::generate(&key, 1400000000, "administrator", now, 3600);
        assert_eq!(
            code(&e.answer(
                &Method::POST,
                &uri(1400000000, "administrator", &good),
                body
            )),
            0
        );
        let expired = usersig::generate(&key, 1400000000, "administrator", now - 7200, 3600);
        assert_eq!(
            code(&e.answer(
                &Method::POST,
                &uri(1400000000, "administrator", &expired),
                body
            )),
            70001
        );
        let other_key = SecretKey::new("wrong").expect("key");
        let forged = usersig::generate(&other_key, 1400000000, "administrator", now, 3600);
        assert_eq!(
            code(&e.answer(
                &Method::POST,
                &uri(1400000000, "administrator", &forged),
                body
            )),
            70009
        );
        assert_eq!(
            code(&e.answer(&Method::POST, &uri(1400000000, "someone", &good), body)),
            70013
        );
        let user = usersig::generate(&key, 1400000000, "someone", now, 3600);
        assert_eq!(
            code(&e.answer(&Method::POST, &uri(1400000000, "someone", &user), body)),
            60010
        );
        assert_eq!(
            code(&e.answer(
                &Method::POST,
                &uri(1400000001, "administrator", &good),
                body
            )),
            60006
        );
        assert_eq!(
            code(&e.answer(
                &Method::POST,
                &uri(1400000000, "administrator", "garbage"),
                body
            )),
            70003
        );
        assert_eq!(e.requests(), 7);
    }

    #[test]
    fn query_must_be_complete() {
        let (e, key) = emulator();
        let sig = usersig::generate(&key, 1400000000, "administrator", unix_now(), 3600);
        let missing_random: http::Uri = format!(
            "/v4/group_open_http_svc/get_group_counter?sdkappid=1400000000&identifier=administrator&usersig={sig}&contenttype=json"
        )
        .parse()
        .expect("uri");
        assert_eq!(
            code(&e.answer(&Method::POST, &missing_random, b"{}")),
            60002
        );
        assert_eq!(
            code(&e.answer(&Method::GET, &uri(1400000000, "administrator", &sig), b"{}")),
            60009
        );
    }
}
