//! The request pipeline's layers, one file each; `stack.rs` puts them in order.

pub mod allow;
pub mod auth;
pub mod body;
pub mod check;
pub mod content_coding;
pub mod drain;
pub mod leftover;
pub mod observe;
pub mod rate_limit;
pub mod rescue;
pub mod retry;
pub mod shed;
pub mod sign;
pub mod validate;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;

/// Every answer in the pipeline has a fully read body: Tencent's answers are small, and the
/// gateway reads them anyway to label metrics by ErrorCode.
pub type GatewayResponse = http::Response<Full<Bytes>>;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Response extension: what the upstream said and how long it took, for metrics and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamReport {
    /// The `ErrorCode` of the answer's body, if it had one.
    pub error_code: Option<i64>,
    /// Time spent waiting on the upstream (all attempts).
    pub elapsed: Duration,
}

/// Request extension: the id the observe layer gave the request, sent upstream and back to
/// the caller so that a request can be followed on both sides. `{prefix:08x}-{n:x}`.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// Formats the id without a `String`; its bytes are then shared by every copy (the
    /// upstream header, the answer's header) for one allocation in all.
    pub fn new(prefix: u32, n: u64) -> Self {
        let mut id = IdBytes {
            buf: [0; 25],
            len: 0,
        };
        id.push_hex(u64::from(prefix), 8);
        id.buf[id.len] = b'-';
        id.len += 1;
        id.push_hex(n, 1);
        // Hex digits and a dash are always a valid header value.
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(id))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        RequestId(value)
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// The bytes of a request id, at most `ffffffff-ffffffffffffffff`.
struct IdBytes {
    buf: [u8; 25],
    len: usize,
}

impl IdBytes {
    /// `n` in lowercase hex, at least `min_digits` digits.
    fn push_hex(&mut self, n: u64, min_digits: usize) {
        let digits = ((64 - n.leading_zeros() as usize).div_ceil(4)).max(min_digits);
        for i in (0..digits).rev() {
            let nibble = ((n >> (i * 4)) & 0xf) as u8;
            self.buf[self.len] = b"0123456789abcdef"[usize::from(nibble)];
            self.len += 1;
        }
    }
}

impl AsRef<[u8]> for IdBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        for (prefix, n) in [
            (0u32, 0u64),
            (0xabcd, 1),
            (u32::MAX, u64::MAX),
            (0x1234_5678, 0x9abc_def0),
        ] {
            assert_eq!(
                RequestId::new(prefix, n).as_str(),
                format!("{prefix:08x}-{n:x}")
            );
        }
    }
}
