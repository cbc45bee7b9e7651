//! Observe: the outermost layer. It gives each request an id, and when the final answer is
//! known (rejections included) records the metrics and writes the one log event per request.
//! Never logs a URI with its query, a body, or a header value.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, Request};
use tower::{Layer, Service};

use crate::api::{ApiTable, Label};
use crate::envelope::{Reason, REJECTED_HEADER};
use crate::exchange::{GatewayResponse, RequestId, UpstreamReport};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, Outcome};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    metrics: Metrics,
    table: Arc<ApiTable>,
    /// Tells a request the gateway cut at the end of the shutdown grace from one whose caller
    /// hung up.
    lifecycle: Arc<Lifecycle>,
    /// Request ids are `{prefix}-{counter}`: unique within the process, and across restarts
    /// thanks to the random prefix.
    prefix: u32,
    next: AtomicU64,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics, table: Arc<ApiTable>, lifecycle: Arc<Lifecycle>) -> Self {
        ObserveLayer {
            shared: Arc::new(Shared {
                metrics,
                table,
                lifecycle,
                prefix: rand::random(),
                next: AtomicU64::new(1),
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = std::convert::Infallible>,
{
    type Response = GatewayResponse;
    type Error = std::convert::Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let api = self.shared.table.label(req.uri().path());
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::new(self.shared.prefix, n);
        req.extensions_mut().insert(id.clone());
        ObserveFuture {
            inner: self.inner.call(req),
            started,
            api,
            id: Some(id),
            shared: self.shared.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// When dropped before its answer, it still records the request, as `client_closed` (the
    /// caller hung up) or `shutdown` (the gateway cut it when the grace period was over): an
    /// `Increase` in flight may have been applied, so it must leave a trace.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        api: Label,
        id: Option<RequestId>,
        shared: Arc<Shared>,
    }

    impl<F> PinnedDrop for ObserveFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(id) = this.id.take() {
                let elapsed = this.started.elapsed();
                let (outcome, message) = if this.shared.lifecycle.is_cutting() {
                    (Outcome::Shutdown, "cut by the gateway: the shutdown grace period was over")
                } else {
                    (Outcome::ClientClosed, "the caller closed the connection before the answer")
                };
                let api = this.shared.table.settle(this.api);
                api.metrics(&this.shared.metrics)
                    .unanswered(outcome, elapsed.as_secs_f64());
                tracing::info!(
                    target: "chat_gateway::access",
                    request_id = id.as_str(),
                    api = &*api.name,
                    outcome = outcome.as_str(),
                    duration_us = elapsed.as_micros() as u64,
                    "{message}"
                );
            }
        }
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<GatewayResponse, std::convert::Infallible>>,
{
    type Output = Result<GatewayResponse, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        let elapsed = this.started.elapsed();
        let report = response.extensions().get::<UpstreamReport>().copied();
        let rejected = response
            .headers()
            .get(REJECTED_HEADER)
            .and_then(|v| Reason::from_header(v.as_bytes()));
        let outcome = match (rejected, report) {
            (Some(reason), _) => Outcome::Rejected(reason),
            (None, Some(r)) if r.error_code == Some(0) && response.status().is_success() => {
                Outcome::Ok
            }
            _ => Outcome::UpstreamError,
        };
        let upstream = report.map(|r| r.elapsed).unwrap_or_default();
        let overhead = elapsed.saturating_sub(upstream);
        let api = this.shared.table.settle(this.api);
        api.metrics(&this.shared.metrics).request(
            outcome,
            elapsed.as_secs_f64(),
            overhead.as_secs_f64(),
        );
        let id = this.id.take();
        tracing::info!(
            target: "chat_gateway::access",
            request_id = id.as_ref().map_or("-", RequestId::as_str),
            api = &*api.name,
            status = response.status().as_u16(),
            error_code = report.and_then(|r| r.error_code),
            outcome = outcome.as_str(),
            duration_us = elapsed.as_micros() as u64,
            upstream_us = upstream.as_micros() as u64,
        );
        if let Some(id) = id {
            response
                .headers_mut()
                .insert(HeaderName::from_static(REQUEST_ID_HEADER), id.0);
        }
        Poll::Ready(Ok(response))
    }
}
