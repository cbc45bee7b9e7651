//! The shape every synchronous step of the pipeline shares: look at the request (and perhaps
//! add an extension), then either pass it on or refuse it with a typed error. The response
//! future is named (no box): a refusal is a ready error, a pass is the inner service's future.

use std::task::{Context, Poll};

use futures_util::future::{ready, Either, Ready};
use http::Request;
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::exchange::GatewayResponse;

/// One synchronous step.
pub trait Check<B> {
    fn check(&self, req: &mut Request<B>) -> Result<(), GatewayError>;
}

/// Puts a [`Check`] in front of a service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    pub fn new(check: C) -> Self {
        CheckLayer { check }
    }
}

impl<S, C: Clone> Layer<S> for CheckLayer<C> {
    type Service = Checked<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            check: self.check.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Checked<S, C> {
    inner: S,
    check: C,
}

impl<S, C, B> Service<Request<B>> for Checked<S, C>
where
    S: Service<Request<B>, Response = GatewayResponse, Error = GatewayError>,
    C: Check<B>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Either<Ready<Result<GatewayResponse, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}
