//! Body: refuse what is too large before reading it (Content-Length), then read at most
//! `max_body_bytes` (chunked bodies) within `body_read_timeout`, so memory stays flat and no
//! slow caller holds a request open for ever.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

use super::{BoxFuture, GatewayResponse};
use crate::error::GatewayError;

#[derive(Debug, Clone, Copy)]
pub struct BodyLayer {
    max_bytes: usize,
    timeout: Duration,
}

impl BodyLayer {
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        BodyLayer { max_bytes, timeout }
    }
}

impl<S> Layer<S> for BodyLayer {
    type Service = ReadBody<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadBody {
            inner,
            max_bytes: self.max_bytes,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadBody<S> {
    inner: S,
    max_bytes: usize,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for ReadBody<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = BoxFuture<Result<GatewayResponse, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let max = self.max_bytes;
        let timeout = self.timeout;
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Err(GatewayError::BodyTooLarge { limit: max });
            }
            let read = tokio::time::timeout(timeout, Limited::new(body, max).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(GatewayError::BodyTooLarge { limit: max });
                }
                Err(_) => {
                    return Err(GatewayError::InvalidJson(format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(timeout)
                    )));
                }
                Ok(Err(_)) => {
                    return Err(GatewayError::InvalidJson(
                        "the request body could not be read to its end".into(),
                    ));
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
