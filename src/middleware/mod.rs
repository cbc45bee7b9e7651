//! The request pipeline's layers, one file each; `stack.rs` puts them in order.

pub mod allow;
pub mod auth;
pub mod body;
pub mod check;
pub mod drain;
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
