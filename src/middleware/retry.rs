//! Retry, only where it is safe: a request is sent again only when it provably never reached
//! Tencent. A connect-class failure (DNS, TCP connect, TLS handshake) on the primary host fails
//! over once to the backup host; a 70001 answer (UserSig expired: refused at authentication)
//! renews the sig and resends once. Nothing else is resent: a timeout or a reset after the
//! request was written may have applied an `Increase`, so it is answered, never repeated.
//!
//! A simple circuit keeps requests off a primary host that keeps failing to connect.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use tower::{Layer, Service};

use super::sign::UpstreamBase;
use super::{BoxFuture, GatewayResponse, UpstreamReport};
use crate::credentials::{unix_now, Credentials};
use crate::error::{GatewayError, UpstreamFailure};
use crate::metrics::Metrics;

/// Consecutive connect-class failures on the primary that open the circuit.
pub const CIRCUIT_THRESHOLD: u32 = 5;
/// How long an open circuit sends everything to the backup before the primary is tried again.
pub const CIRCUIT_COOL_DOWN: Duration = Duration::from_secs(30);

/// Tencent's "UserSig expired".
const USERSIG_EXPIRED: i64 = 70001;

/// The primary and backup upstream bases, and the circuit on the primary.
#[derive(Debug)]
pub struct Targets {
    primary: UpstreamBase,
    backup: Option<UpstreamBase>,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the circuit is open; 0 when closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cool_down: Duration,
    metrics: Metrics,
}

impl Targets {
    pub fn new(primary: Arc<str>, backup: Option<Arc<str>>, metrics: Metrics) -> Arc<Self> {
        Self::with_circuit(
            primary,
            backup,
            CIRCUIT_THRESHOLD,
            CIRCUIT_COOL_DOWN,
            metrics,
        )
    }

    pub fn with_circuit(
        primary: Arc<str>,
        backup: Option<Arc<str>>,
        threshold: u32,
        cool_down: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Targets {
            primary: UpstreamBase(primary),
            backup: backup.map(UpstreamBase),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: threshold.max(1),
            cool_down,
            metrics,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn primary(&self) -> Arc<str> {
        self.primary.0.clone()
    }

    /// Whether requests currently skip the primary.
    pub fn circuit_open(&self) -> bool {
        self.backup.is_some() && self.open_until_ms.load(Ordering::Acquire) > self.now_ms()
    }

    fn primary_failed_to_connect(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold && self.backup.is_some() {
            let until = self.now_ms() + self.cool_down.as_millis() as u64;
            if self.open_until_ms.swap(until, Ordering::AcqRel) <= self.now_ms() {
                tracing::warn!(
                    failures,
                    cool_down = ?self.cool_down,
                    "primary upstream keeps failing to connect: sending to the backup host"
                );
            }
            self.consecutive_failures.store(0, Ordering::Release);
            self.metrics.circuit_open(true);
        }
    }

    fn primary_answered(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            self.metrics.circuit_open(false);
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryLayer {
    targets: Arc<Targets>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
}

impl RetryLayer {
    pub fn new(targets: Arc<Targets>, credentials: Arc<Credentials>, metrics: Metrics) -> Self {
        RetryLayer {
            targets,
            credentials,
            metrics,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            targets: self.targets.clone(),
            credentials: self.credentials.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    targets: Arc<Targets>,
    credentials: Arc<Credentials>,
    metrics: Metrics,
}

/// A copy of the request for a second attempt: what signing and sending use (method, path,
/// the headers to forward, the API), with the body shared, not copied.
fn copy(req: &Request<Bytes>) -> Request<Bytes> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    if let Some(api) = req.extensions().get::<crate::api::Api>() {
        copy.extensions_mut().insert(api.clone());
    }
    copy
}

fn to(mut req: Request<Bytes>, base: &UpstreamBase) -> Request<Bytes> {
    req.extensions_mut().insert(base.clone());
    req
}

/// Adds an earlier attempt's time to what the final answer reports.
fn add_elapsed(
    result: Result<GatewayResponse, GatewayError>,
    earlier: Duration,
) -> Result<GatewayResponse, GatewayError> {
    match result {
        Ok(mut response) => {
            if let Some(report) = response.extensions_mut().get_mut::<UpstreamReport>() {
                report.elapsed += earlier;
            }
            Ok(response)
        }
        Err(GatewayError::UpstreamUnavailable { failure, elapsed }) => {
            Err(GatewayError::UpstreamUnavailable {
                failure,
                elapsed: elapsed + earlier,
            })
        }
        Err(GatewayError::UpstreamTimeout(elapsed)) => {
            Err(GatewayError::UpstreamTimeout(elapsed + earlier))
        }
        Err(e) => Err(e),
    }
}

fn elapsed_of(result: &Result<GatewayResponse, GatewayError>) -> Duration {
    match result {
        Ok(r) => r
            .extensions()
            .get::<UpstreamReport>()
            .map(|r| r.elapsed)
            .unwrap_or_default(),
        Err(e) => e.upstream_elapsed().unwrap_or_default(),
    }
}

impl<S> Service<Request<Bytes>> for Retry<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = BoxFuture<Result<GatewayResponse, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let targets = self.targets.clone();
        let credentials = self.credentials.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let on_primary = !targets.circuit_open();
            let first_target = match (&targets.backup, on_primary) {
                (Some(backup), false) => {
                    metrics.upstream_retry("circuit_open");
                    backup.clone()
                }
                _ => targets.primary.clone(),
            };
            let spare = copy(&req);
            let first = inner.call(to(req, &first_target)).await;
            match &first {
                Err(GatewayError::UpstreamUnavailable {
                    failure: UpstreamFailure::Connect,
                    ..
                }) if on_primary => {
                    targets.primary_failed_to_connect();
                    let Some(backup) = targets.backup.clone() else {
                        return first;
                    };
                    // Never reached the primary: the backup gets the one more attempt.
                    metrics.upstream_retry("connect_failover");
                    tracing::info!("primary upstream unreachable; trying the backup host");
                    let earlier = elapsed_of(&first);
                    let second = inner.call(to(spare, &backup)).await;
                    add_elapsed(second, earlier)
                }
                Ok(response)
                    if response
                        .extensions()
                        .get::<UpstreamReport>()
                        .and_then(|r| r.error_code)
                        == Some(USERSIG_EXPIRED) =>
                {
                    if on_primary {
                        targets.primary_answered();
                    }
                    // Refused at authentication, so nothing was applied: renew, resend once.
                    credentials.renew(unix_now());
                    metrics.upstream_retry("usersig_expired");
                    tracing::warn!(
                        "upstream said the UserSig expired; renewed it and resending once"
                    );
                    let earlier = elapsed_of(&first);
                    let second = inner.call(to(spare, &first_target)).await;
                    add_elapsed(second, earlier)
                }
                _ => {
                    // The primary was reached (whatever it said): the circuit stays closed.
                    if on_primary {
                        targets.primary_answered();
                    }
                    first
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(backup: bool, cool_down: Duration) -> Arc<Targets> {
        Targets::with_circuit(
            Arc::from("https://primary"),
            backup.then(|| Arc::from("https://backup")),
            3,
            cool_down,
            Metrics::new(),
        )
    }

    #[test]
    fn opens_after_threshold_and_probes_the_primary_after_the_cool_down() {
        let t = targets(true, Duration::from_millis(200));
        for _ in 0..2 {
            t.primary_failed_to_connect();
        }
        assert!(!t.circuit_open(), "below the threshold");
        t.primary_failed_to_connect();
        assert!(t.circuit_open(), "open at the threshold");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            !t.circuit_open(),
            "the primary is tried again after the cool-down"
        );
        // One failure of the probe does not reopen it: the count started again.
        t.primary_failed_to_connect();
        assert!(!t.circuit_open());
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        assert!(t.circuit_open(), "reopens after the threshold again");
        t.primary_answered();
        assert!(!t.circuit_open(), "a success closes it");
    }

    #[test]
    fn a_success_resets_the_count() {
        let t = targets(true, Duration::from_secs(30));
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        t.primary_answered();
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        assert!(!t.circuit_open());
    }

    #[test]
    fn without_a_backup_the_circuit_never_opens() {
        let t = targets(false, Duration::from_secs(30));
        for _ in 0..10 {
            t.primary_failed_to_connect();
        }
        assert!(!t.circuit_open());
    }
}
