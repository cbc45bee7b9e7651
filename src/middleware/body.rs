//! Body: refuse what is too large before reading it (Content-Length), then read at most
//! `max_body_bytes` (chunked bodies) within `body_read_timeout`, so memory stays flat and no
//! slow caller holds a request open for ever.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
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
            let read = tokio::time::timeout(timeout, read_all(Limited::new(body, max)));
            let bytes = match read.await {
                Ok(Ok(bytes)) => bytes,
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

/// The whole body. A body that arrives as one data frame (the usual case for a small JSON
/// request) is passed on as it came, without a copy or a frame queue; more frames are joined.
async fn read_all<B>(body: B) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            // Trailers carry nothing the gateway forwards.
            continue;
        };
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(earlier), None) => {
                let mut buf = BytesMut::with_capacity(earlier.len() + data.len());
                buf.extend_from_slice(earlier);
                buf.extend_from_slice(&data);
                first = None;
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn frames(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn one_frame_passes_as_it_came_and_more_are_joined() {
        let one = read_all(Full::new(Bytes::from_static(b"{\"a\":1}"))).await;
        assert_eq!(one.as_deref().ok(), Some(&b"{\"a\":1}"[..]));
        let many = read_all(frames(&["{\"a\"", ":", "1}"])).await;
        assert_eq!(many.as_deref().ok(), Some(&b"{\"a\":1}"[..]));
        let none = read_all(frames(&[])).await;
        assert_eq!(none.as_deref().ok(), Some(&b""[..]));
    }
}
