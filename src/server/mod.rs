//! The listeners: one accept loop for callers, admin and the emulator (`accept`), caller TLS
//! (`tls`), the socket limits (`io`), and the shutdown sequence of the contract.

pub mod accept;
pub mod io;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

use crate::lifecycle::Lifecycle;
use accept::{accept_until, serve_connection, ConnOptions, ConnectionLimit};

/// Longest a caller may take to send its request headers, unless configured.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request head (request line and headers) buffered for HTTP/1.1, and largest header
/// list for HTTP/2. Larger ones are refused by the HTTP layer (431) before any of our code runs.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long the server keeps serving, and then waits, around a shutdown signal.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownTimes {
    pub drain_delay: Duration,
    pub shutdown_grace: Duration,
}

/// What each new connection of a listener gets: read once per accepted connection, so that
/// a reloaded config applies to the next ones and the open ones keep theirs.
pub type LiveOptions = Arc<ArcSwap<ConnOptions>>;

/// Admin connections open at once: scrapes and probes need a handful.
const MAX_ADMIN_CONNECTIONS: usize = 256;

pub fn connection_builder() -> auto::Builder<TokioExecutor> {
    connection_builder_with(HEADER_READ_TIMEOUT)
}

/// HTTP/1.1 and h2c with bounded heads and a deadline for the headers.
pub fn connection_builder_with(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        // Answers are a small head and a small JSON body: copying the body behind the head and
        // writing one buffer costs less than a vectored write of the two (measured: about
        // 0.4 µs a request at 64 connections, 6 of 7 alternating runs).
        .writev(false)
        .keep_alive(true);
    // Pings find peers that vanished without closing; the accept loop closes idle ones.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(header_read_timeout))
        .keep_alive_timeout(header_read_timeout);
    builder
}

/// Serves callers until `signal` resolves, then follows the contract: readiness off at once,
/// keep serving for the drain delay (cut short by `hurry`: a second signal), stop accepting,
/// let requests in flight finish until the grace period (counted from the signal) runs out.
/// `times` is asked when the signal comes: the delays in force then are the ones kept.
#[allow(clippy::too_many_arguments)]
pub async fn serve_callers<S>(
    listener: TcpListener,
    service: S,
    lifecycle: Arc<Lifecycle>,
    times: impl Fn() -> ShutdownTimes,
    options: LiveOptions,
    limit: ConnectionLimit,
    signal: impl Future<Output = ()>,
    hurry: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The connections' tasks, so that whatever is still running when the grace period is
    // over can be stopped: run() returning means nothing of the gateway is left.
    let mut connections = JoinSet::new();
    let mut spawn = |stream, slot| {
        // Reap finished connections as new ones come, so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            slot,
            TowerToHyperService::new(service.clone()),
            &options.load(),
            shutdown_rx.clone(),
        ));
    };

    accept_until(&listener, &limit, signal, &mut spawn).await;
    let signalled_at = tokio::time::Instant::now();
    let times = times();
    lifecycle.start_draining();
    tracing::info!(drain_delay = ?times.drain_delay, "shutdown signal: readiness off, still serving");

    let drain_end = signalled_at + times.drain_delay;
    let drained = async {
        tokio::select! {
            _ = tokio::time::sleep_until(drain_end) => {}
            _ = hurry => tracing::info!("second signal: drain delay cut short"),
        }
    };
    accept_until(&listener, &limit, drained, &mut spawn).await;
    lifecycle.start_closing();
    drop(listener);
    tracing::info!("drain delay over: no new connections; waiting for requests in flight");
    let _ = shutdown_tx.send(true);

    let grace_end = signalled_at + times.shutdown_grace;
    let all_closed = async { while connections.join_next().await.is_some() {} };
    match tokio::time::timeout_at(grace_end, all_closed).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                "shutdown grace over with requests still in flight: closing their connections"
            );
            lifecycle.start_cutting();
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// A plain HTTP service (admin endpoints, the emulator) the accept loop can serve.
pub trait PlainService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Clone
    + Send
    + 'static
{
}

impl<H> PlainService for H where
    H: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Clone
        + Send
        + 'static
{
}

/// Serves a plain HTTP service (admin endpoints, the emulator) on `listener` until `stop`
/// resolves, through the same accept loop and connection limits as callers.
pub async fn serve_plain<H>(
    listener: TcpListener,
    service: H,
    options: ConnOptions,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) where
    H: PlainService,
{
    let options = Arc::new(ArcSwap::from_pointee(options));
    serve_plain_live(listener, service, options, max_connections, stop).await;
}

/// Like [`serve_plain`], each new connection with the options in force when it is accepted.
pub async fn serve_plain_live<H>(
    listener: TcpListener,
    service: H,
    options: LiveOptions,
    max_connections: usize,
    stop: impl Future<Output = ()>,
) where
    H: PlainService,
{
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let limit = ConnectionLimit::new(max_connections);
    accept_until(&listener, &limit, stop, |stream, slot| {
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            slot,
            service.clone(),
            &options.load(),
            shutdown_rx.clone(),
        ));
    })
    .await;
    drop(listener);
    let _ = shutdown_tx.send(true);
    // Admin and emulator answers are immediate: a second is plenty for those under way.
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(1), all_closed)
        .await
        .is_err()
    {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// What admin connections get under `header_read_timeout`.
pub fn admin_options(header_read_timeout: Duration) -> ConnOptions {
    ConnOptions::plain(
        connection_builder_with(header_read_timeout),
        header_read_timeout,
    )
}

/// Serves the admin endpoints until `stop` resolves; each new connection with the options
/// in force when it is accepted ([`admin_options`]).
pub async fn serve_admin(
    listener: TcpListener,
    admin: Arc<crate::admin::Admin>,
    options: LiveOptions,
    stop: impl Future<Output = ()>,
) {
    let service =
        hyper::service::service_fn(move |req: Request<Incoming>| admin.clone().serve(req));
    serve_plain_live(listener, service, options, MAX_ADMIN_CONNECTIONS, stop).await;
}
