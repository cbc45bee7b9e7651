//! Body: refuse what is too large before reading it (Content-Length), then read at most
//! `max_body_bytes` (chunked bodies) within `body_read_timeout`, so memory stays flat and no
//! slow caller holds a request open for ever. A compressed body is read as it came (at most
//! `max_body_bytes` of it) and marked with its coding; it is decoded after the shed layer,
//! under an in-flight permit (see [`content_coding`](super::content_coding)).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::Body;
use http_body_util::Limited;
use pin_project_lite::pin_project;
use tokio::time::Timeout;
use tower::{Layer, Service};

use super::content_coding::{self, Coding};
use crate::error::GatewayError;
use crate::exchange::GatewayResponse;

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
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = BodyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let max = self.max_bytes;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return BodyFuture::Refused {
                error: Some(GatewayError::BodyTooLarge { limit: max }),
            };
        }
        let coding = match content_coding::of(&parts.headers) {
            Ok(coding) => coding,
            Err(error) => return BodyFuture::Refused { error: Some(error) },
        };
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        BodyFuture::Reading {
            read: tokio::time::timeout(self.timeout, ReadAll::new(Limited::new(body, max))),
            parts: Some(parts),
            inner: std::mem::replace(&mut self.inner, clone),
            max,
            timeout: self.timeout,
            coding,
        }
    }
}

pin_project! {
    /// Reads the body within the deadline, then calls the inner service with it.
    #[project = BodyProj]
    pub enum BodyFuture<S, B>
    where
        S: Service<Request<Bytes>>,
    {
        Reading {
            #[pin]
            read: Timeout<ReadAll<Limited<B>>>,
            parts: Option<http::request::Parts>,
            inner: S,
            max: usize,
            timeout: Duration,
            coding: Option<Coding>,
        },
        Calling {
            #[pin]
            call: S::Future,
        },
        Refused {
            error: Option<GatewayError>,
        },
    }
}

impl<S, B> Future for BodyFuture<S, B>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<GatewayResponse, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                BodyProj::Calling { call } => return call.poll(cx),
                BodyProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or(GatewayError::Internal("a refused body was polled twice"))))
                }
                BodyProj::Reading {
                    read,
                    parts,
                    inner,
                    max,
                    timeout,
                    coding,
                } => match (ready!(read.poll(cx)), parts.take()) {
                    (Ok(Ok(bytes)), Some(mut parts)) => {
                        // Decoded later, under an in-flight permit (see content_coding).
                        if let Some(coding) = *coding {
                            parts.extensions.insert(coding);
                        }
                        BodyFuture::Calling {
                            call: inner.call(Request::from_parts(parts, bytes)),
                        }
                    }
                    (result, _) => BodyFuture::Refused {
                        error: Some(read_error(result, *max, *timeout)),
                    },
                },
            };
            self.set(next);
        }
    }
}

/// What a failed read is answered with.
fn read_error<E>(
    result: Result<Result<Bytes, Box<dyn std::error::Error + Send + Sync>>, E>,
    max: usize,
    timeout: Duration,
) -> GatewayError {
    match result {
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            GatewayError::BodyTooLarge { limit: max }
        }
        Err(_) => GatewayError::InvalidJson(format!(
            "the request body did not arrive within {}",
            humantime::format_duration(timeout)
        )),
        _ => GatewayError::InvalidJson("the request body could not be read to its end".into()),
    }
}

pin_project! {
    /// The whole body. A body that arrives as one data frame (the usual case for a small
    /// JSON request) is passed on as it came, without a copy or a frame queue; more frames
    /// are joined.
    pub struct ReadAll<B> {
        #[pin]
        body: B,
        first: Option<Bytes>,
        joined: Option<BytesMut>,
    }
}

impl<B> ReadAll<B> {
    pub fn new(body: B) -> Self {
        ReadAll {
            body,
            first: None,
            joined: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Future for ReadAll<B> {
    type Output = Result<Bytes, B::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        while let Some(frame) = ready!(this.body.as_mut().poll_frame(cx)) {
            let Ok(data) = frame?.into_data() else {
                // Trailers carry nothing the gateway forwards.
                continue;
            };
            match (this.first.take(), this.joined.as_mut()) {
                (None, None) => *this.first = Some(data),
                (Some(earlier), None) => {
                    let mut buf = BytesMut::with_capacity(earlier.len() + data.len());
                    buf.extend_from_slice(&earlier);
                    buf.extend_from_slice(&data);
                    *this.joined = Some(buf);
                }
                (_, Some(buf)) => buf.extend_from_slice(&data),
            }
        }
        Poll::Ready(Ok(match this.joined.take() {
            Some(buf) => buf.freeze(),
            None => this.first.take().unwrap_or_default(),
        }))
    }
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
        let one = ReadAll::new(Full::new(Bytes::from_static(b"{\"a\":1}"))).await;
        assert_eq!(one.as_deref().ok(), Some(&b"{\"a\":1}"[..]));
        let many = ReadAll::new(frames(&["{\"a\"", ":", "1}"])).await;
        assert_eq!(many.as_deref().ok(), Some(&b"{\"a\":1}"[..]));
        let none = ReadAll::new(frames(&[])).await;
        assert_eq!(none.as_deref().ok(), Some(&b""[..]));
    }
}
