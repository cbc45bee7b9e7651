//! The rest of an HTTP/2 request body the gateway answered without reading (not allowed,
//! unauthorized, draining, a coding it cannot decode). Once such an answer is sent, h2 resets
//! the stream with NO_ERROR (RFC 9113 section 8.1), which tells the caller to stop sending
//! and keep the answer; but some clients (libcurl, curl 7.88 among them) fail the whole
//! request when the stream is reset while they are still sending, and the answer is lost.
//! So an untouched body is read to its end in the background and thrown away, as long as it
//! stays within `max_body_bytes` and `body_read_timeout` (what any request may send): a
//! caller that finishes in time sees its stream end cleanly; past either bound the stream is
//! reset with NO_ERROR as before. A body declared larger than the limit is never read.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// How much of an untouched body is read away, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Discard {
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl Discard {
    /// The request with its body wrapped: an HTTP/2 body not declared larger than the limit
    /// is read away if the request is answered before it is touched.
    pub fn wrap<B>(self, req: Request<B>) -> Request<Leftover<B>>
    where
        B: Body + Unpin + Send + 'static,
    {
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let rule = (req.version() == Version::HTTP_2
            && !declared.is_some_and(|n| n > self.max_bytes as u64))
        .then_some(self);
        req.map(|body| Leftover {
            body: Some(body),
            touched: false,
            rule,
        })
    }
}

/// A request body that is read away when dropped untouched (see the module).
#[derive(Debug)]
pub struct Leftover<B: Body + Unpin + Send + 'static> {
    body: Option<B>,
    /// Some of it was asked for: the pipeline read it, and answers for what it found.
    touched: bool,
    rule: Option<Discard>,
}

impl<B: Body + Unpin + Send + 'static> Body for Leftover<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.touched = true;
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().map_or(true, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body + Unpin + Send + 'static> Drop for Leftover<B> {
    fn drop(&mut self) {
        let (Some(body), Some(rule), false) = (self.body.take(), self.rule, self.touched) else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Without a runtime (a bench, say) the body is just dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(read_away(body, rule));
        }
    }
}

/// Reads frames until the body ends, passes `max_bytes`, fails or takes longer than
/// `timeout`; then drops it (h2 resets the stream with NO_ERROR if it had not ended).
async fn read_away<B: Body + Unpin>(mut body: B, rule: Discard) {
    let reading = async {
        let mut seen: usize = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(bytes::Buf::remaining(data));
                if seen > rule.max_bytes {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(rule.timeout, reading).await;
}
