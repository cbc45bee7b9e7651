//! Drain: once the drain delay after a shutdown signal is over, requests that still arrive on
//! open keep-alive connections get the `draining` answer instead of starting new work.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use super::GatewayResponse;
use crate::error::GatewayError;
use crate::lifecycle::Lifecycle;

#[derive(Debug, Clone)]
pub struct DrainLayer {
    lifecycle: Arc<Lifecycle>,
}

impl DrainLayer {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        DrainLayer { lifecycle }
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Drain {
            inner,
            lifecycle: self.lifecycle.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    lifecycle: Arc<Lifecycle>,
}

impl<S, B> Service<Request<B>> for Drain<S>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.lifecycle.is_closing() {
            return Either::Left(ready(Err(GatewayError::Draining)));
        }
        Either::Right(self.inner.call(req))
    }
}
