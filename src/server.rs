//! Accept loops (hyper-util's auto builder: HTTP/1.1 and h2c) and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::Service;

use crate::lifecycle::Lifecycle;

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
    /// Also the HTTP/1.1 header-read deadline of caller connections.
    pub header_read_timeout: Duration,
}

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
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(256);
    builder
}

/// Serves callers until `signal` resolves, then follows the contract: readiness off at once,
/// keep serving for the drain delay, stop accepting, let requests in flight finish until the
/// grace period (counted from the signal) runs out.
pub async fn serve_callers<S>(
    listener: TcpListener,
    service: S,
    lifecycle: Arc<Lifecycle>,
    times: ShutdownTimes,
    signal: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = connection_builder_with(times.header_read_timeout);
    let graceful = GracefulShutdown::new();
    // The connections' tasks, so that whatever is still running when the grace period is
    // over can be stopped: run() returning means nothing of the gateway is left.
    let mut connections = JoinSet::new();
    tokio::pin!(signal);

    let signalled_at = loop {
        tokio::select! {
            biased;
            _ = &mut signal => break tokio::time::Instant::now(),
            accepted = listener.accept() => accept(&builder, &graceful, &mut connections, accepted, &service).await,
        }
    };
    lifecycle.start_draining();
    tracing::info!(drain_delay = ?times.drain_delay, "shutdown signal: readiness off, still serving");

    let drain_end = signalled_at + times.drain_delay;
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(drain_end) => break,
            accepted = listener.accept() => accept(&builder, &graceful, &mut connections, accepted, &service).await,
        }
    }
    lifecycle.start_closing();
    drop(listener);
    tracing::info!("drain delay over: no new connections; waiting for requests in flight");

    let grace_end = signalled_at + times.shutdown_grace;
    match tokio::time::timeout_at(grace_end, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => {
            tracing::warn!(
                connections = connections.len(),
                "shutdown grace over with requests still in flight: closing their connections"
            );
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn accept<S>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
    service: &S,
) where
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let stream = match accepted {
        Ok((stream, _peer)) => stream,
        Err(e) => {
            // Out of file descriptors and the like: pause briefly rather than spin, then go on.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let conn = builder
        .serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        )
        .into_owned();
    let conn = graceful.watch(conn);
    // Reap finished connections as new ones come, so the set stays as large as what is open.
    while connections.try_join_next().is_some() {}
    connections.spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "caller connection ended with an error");
        }
    });
}

/// Serves the admin endpoints until `stop` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    admin: Arc<crate::admin::Admin>,
    stop: impl Future<Output = ()>,
) {
    let builder = connection_builder();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| admin.clone().serve(req));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
}
