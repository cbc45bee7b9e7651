//! The one accept loop (callers, admin and the emulator) and the life of one connection:
//! a cap on open connections, back-off on accept errors, a deadline for the first request
//! (TLS handshake and protocol sniffing included), an idle limit, a write timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::io::{Account, Watched, LARGE_ANSWER_BYTES};
use super::MAX_HEADERS;

/// Request extension: the caller presented a client certificate that chains to
/// `server.tls_client_ca_file` (rustls checked it during the handshake).
#[derive(Debug, Clone, Copy)]
pub struct ClientCertified;

/// At most `max` connections open at once; more are closed as soon as they are accepted.
/// Clones share the bound, which [`ConnectionLimit::resize`] changes for the next accepts.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    max: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    gauge: Option<prometheus::IntGauge>,
    refused: Option<prometheus::IntCounter>,
}

/// One open connection's place under the limit; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            max: Arc::new(AtomicUsize::new(max)),
            open: Arc::new(AtomicUsize::new(0)),
            gauge: None,
            refused: None,
        }
    }

    /// Also counted: open connections in a gauge, refused ones in a counter.
    pub fn counted(
        max: usize,
        gauge: prometheus::IntGauge,
        refused: prometheus::IntCounter,
    ) -> Self {
        ConnectionLimit {
            gauge: Some(gauge),
            refused: Some(refused),
            ..ConnectionLimit::new(max)
        }
    }

    /// From the next accepted connection on, at most `max` are open at once. Connections
    /// already open stay open (when lowered, the next ones wait for them to close).
    pub fn resize(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    fn take(&self) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max.load(Ordering::Acquire) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            if let Some(c) = &self.refused {
                c.inc();
            }
            return None;
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Some(Slot {
            open: self.open.clone(),
            gauge: self.gauge.clone(),
        })
    }
}

/// Pause after the n-th accept error in a row: 5 ms, doubling, at most a second.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(5u64 << failures.min(8)).min(Duration::from_secs(1))
}

/// Accepts connections until `stop` resolves, handing each one under the limit to
/// `on_accept`. An accept error (out of file descriptors, say) leaves the connection queued
/// in the kernel: retrying at once would spin on the same error, so the loop pauses, longer
/// while errors repeat, and says so once per streak.
pub async fn accept_until(
    listener: &TcpListener,
    limit: &ConnectionLimit,
    stop: impl Future,
    mut on_accept: impl FnMut(TcpStream, Slot),
) {
    tokio::pin!(stop);
    let mut failures: u32 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if failures > 0 {
                    tracing::info!(failures, "accepting connections again");
                    failures = 0;
                }
                // Past the limit the connection is closed at once (dropped unread).
                let Some(slot) = limit.take() else { continue };
                let _ = stream.set_nodelay(true);
                on_accept(stream, slot);
            }
            Err(e) => {
                let pause = backoff(failures);
                if failures == 0 {
                    tracing::warn!(error = %e, ?pause, "accept failed; pausing before the next try");
                } else {
                    tracing::debug!(error = %e, ?pause, failures, "accept failed again");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// What every connection of one listener gets.
#[derive(Clone)]
pub struct ConnOptions {
    pub builder: auto::Builder<TokioExecutor>,
    /// A connection that has not started a request by then is closed.
    pub first_request_timeout: Duration,
    /// A connection with no request under way for this long is closed (gracefully).
    pub idle_timeout: Duration,
    /// A write that makes no progress for this long fails the connection.
    pub write_timeout: Duration,
    /// TLS, with the config new connections get (swapped when the files change).
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// Large answers hold one of these permits (`server.max_in_flight`) until written.
    pub answer_permits: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for ConnOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnOptions")
            .field("first_request_timeout", &self.first_request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ConnOptions {
    /// Plain connections with the given first-request and idle limits.
    pub fn plain(builder: auto::Builder<TokioExecutor>, timeout: Duration) -> Self {
        ConnOptions {
            builder,
            first_request_timeout: timeout,
            idle_timeout: timeout,
            write_timeout: timeout,
            tls: None,
            answer_permits: None,
        }
    }
}

/// Requests under way on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    seen: AtomicBool,
    /// Milliseconds after `started` when the last request ended.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            last_done_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.seen.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.started + Duration::from_millis(self.last_done_ms.load(Ordering::Acquire))
    }
}

/// One request under way; its end is noted when dropped (answered or cancelled).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_done_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's service: notes activity, marks certified callers, refuses heads with
/// too many fields (HTTP/1.1 does so in the parser; HTTP/2 has only a size limit), and
/// charges large answers to the connection's account.
struct Tracked<H> {
    inner: H,
    activity: Arc<Activity>,
    certified: bool,
    account: Arc<Account>,
    answer_permits: Option<Arc<Semaphore>>,
}

impl<H, B> hyper::service::Service<Request<Incoming>> for Tracked<H>
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    B: Body + From<Bytes>,
{
    type Response = Response<B>;
    type Error = H::Error;
    type Future = TrackedFuture<H::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        if req.headers().len() > MAX_HEADERS {
            return TrackedFuture {
                inner: None,
                busy: Some(busy),
                account: self.account.clone(),
                permits: None,
            };
        }
        if self.certified {
            req.extensions_mut().insert(ClientCertified);
        }
        TrackedFuture {
            inner: Some(self.inner.call(req)),
            busy: Some(busy),
            account: self.account.clone(),
            permits: self.answer_permits.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: Option<F>,
        busy: Option<Busy>,
        account: Arc<Account>,
        permits: Option<Arc<Semaphore>>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            this.busy.take();
            let mut response = Response::new(B::from(Bytes::new()));
            *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return Poll::Ready(Ok(response));
        };
        let result = std::task::ready!(inner.poll(cx));
        this.busy.take();
        if let (Ok(response), Some(permits)) = (&result, this.permits.as_ref()) {
            if let Some(bytes) = response.body().size_hint().exact() {
                if bytes >= LARGE_ANSWER_BYTES {
                    this.account.charge(bytes, permits);
                }
            }
        }
        Poll::Ready(result)
    }
}

/// Serves one accepted connection until it ends, `shutdown` turns true (then it finishes
/// what is under way, refuses more and closes), or one of the connection's limits is hit.
pub fn serve_connection<H, B>(
    stream: TcpStream,
    slot: Slot,
    service: H,
    options: &ConnOptions,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let options = options.clone();
    async move {
        let _slot = slot;
        let activity = Arc::new(Activity::new());
        let account = Arc::new(Account::default());
        let io = Watched::new(stream, options.write_timeout, account.clone());
        let first_deadline = activity.started + options.first_request_timeout;
        let tracked = |certified| Tracked {
            inner: service,
            activity: activity.clone(),
            certified,
            account: account.clone(),
            answer_permits: options.answer_permits.clone(),
        };
        match &options.tls {
            None => drive(io, tracked(false), &options, &activity, shutdown).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                let stream = match tokio::time::timeout_at(first_deadline, acceptor.accept(io))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake not done within the first-request deadline");
                        return;
                    }
                };
                let certified = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                drive(stream, tracked(certified), &options, &activity, shutdown).await
            }
        }
    }
}

async fn drive<I, H, B>(
    io: I,
    service: Tracked<H>,
    options: &ConnOptions,
    activity: &Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    H::Future: Send + 'static,
    H::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = options
        .builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let stop = async move {
        // A dropped sender means the listener is gone: stop too.
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut stopping = false;
    let mut check_at = activity.started + options.first_request_timeout;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut stop, if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                if activity.in_flight.load(Ordering::Acquire) > 0 {
                    check_at = now + options.idle_timeout;
                    continue;
                }
                if !activity.seen.load(Ordering::Acquire) {
                    // Nothing, part of a preface, or part of a head: close without a word.
                    tracing::debug!("no request within the first-request deadline; closing");
                    return;
                }
                let idle_until = activity.idle_since() + options.idle_timeout;
                if now < idle_until {
                    check_at = idle_until;
                } else if stopping {
                    // Told to close and still not closed after a whole idle period.
                    return;
                } else {
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                    check_at = now + options.idle_timeout;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_second() {
        assert_eq!(backoff(0), Duration::from_millis(5));
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(20), Duration::from_secs(1));
    }

    #[test]
    fn the_limit_counts_and_gives_back() {
        let limit = ConnectionLimit::new(2);
        let a = limit.take().expect("first");
        let _b = limit.take().expect("second");
        assert!(limit.take().is_none());
        drop(a);
        assert!(limit.take().is_some());
    }

    #[test]
    fn a_resized_limit_applies_to_the_next_connections_and_keeps_the_open_ones() {
        let limit = ConnectionLimit::new(3);
        let shared = limit.clone();
        let a = limit.take().expect("first");
        let _b = limit.take().expect("second");
        shared.resize(1);
        assert!(limit.take().is_none(), "two open, one allowed");
        drop(a);
        assert!(limit.take().is_none(), "still one open, one allowed");
        shared.resize(4);
        assert!(limit.take().is_some());
    }
}
