//! Rescue: the one place where a typed `GatewayError` becomes Tencent's envelope.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::envelope;
use crate::error::GatewayError;
use crate::exchange::{GatewayResponse, UpstreamReport};

#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Inner services are always ready or fail per call; a readiness error is answered
        // per request instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<GatewayResponse, GatewayError>>,
{
    type Output = Result<GatewayResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(response)) => Poll::Ready(Ok(response)),
            Poll::Ready(Err(error)) => Poll::Ready(Ok(answer(&error))),
        }
    }
}

/// The contract's answer for an error.
pub fn answer(error: &GatewayError) -> GatewayResponse {
    let (status, code) = error.status_and_code();
    let mut response = envelope::rejection(status, code, error.reason(), &error.to_string());
    if let Some(secs) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if error.in_doubt() {
        response
            .headers_mut()
            .insert(envelope::IN_DOUBT_HEADER, HeaderValue::from_static("true"));
    }
    if matches!(error, GatewayError::Unauthorized) {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(elapsed) = error.upstream_elapsed() {
        response.extensions_mut().insert(UpstreamReport {
            error_code: None,
            elapsed,
        });
    }
    response
}
