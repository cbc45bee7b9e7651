//! The whole request pipeline on one screen, outermost layer first.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceBuilder};

use crate::api::ApiTable;
use crate::credentials::Credentials;
use crate::error::GatewayError;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::middleware::allow::AllowLayer;
use crate::middleware::body::BodyLayer;
use crate::middleware::drain::DrainLayer;
use crate::middleware::observe::ObserveLayer;
use crate::middleware::rate_limit::RateLimitLayer;
use crate::middleware::rescue::RescueLayer;
use crate::middleware::sign::SignLayer;
use crate::middleware::validate::ValidateLayer;
use crate::middleware::GatewayResponse;
use crate::rate_limit::RateLimiter;

/// What the layers share; made once when the gateway starts.
#[derive(Clone)]
pub struct StackParts {
    pub metrics: Metrics,
    pub table: Arc<ApiTable>,
    pub lifecycle: Arc<Lifecycle>,
    pub credentials: Arc<Credentials>,
    /// `https://host[:port]` of the primary upstream.
    pub primary: Arc<str>,
    pub max_body_bytes: usize,
    pub limiter: Arc<dyn RateLimiter>,
}

/// Builds the pipeline over `upstream`, the service that sends one attempt (the pooled
/// client in production, a stand-in in benches).
pub fn build<B, U>(
    parts: &StackParts,
    upstream: U,
) -> impl Service<Request<B>, Response = GatewayResponse, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    U: Service<Request<Full<Bytes>>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    U::Future: Send,
{
    ServiceBuilder::new()
        // Sees every final answer, rejections included: request id, metrics, the log event.
        .layer(ObserveLayer::new(
            parts.metrics.clone(),
            parts.table.clone(),
        ))
        // The one place where typed errors become Tencent envelopes with the reason header.
        .layer(RescueLayer)
        // After the drain delay, new requests on open connections are refused.
        .layer(DrainLayer::new(parts.lifecycle.clone()))
        // Method and path, before a byte of the body is read.
        .layer(AllowLayer::new(parts.table.clone()))
        // Size limit: Content-Length first, then a bounded read.
        .layer(BodyLayer::new(parts.max_body_bytes))
        // A JSON object; counter payloads keep Tencent's rules.
        .layer(ValidateLayer)
        // Per GroupId, then per API for the app: only valid requests spend tokens.
        .layer(RateLimitLayer::new(
            parts.limiter.clone(),
            parts.metrics.clone(),
        ))
        // Caller query and credential headers out; sdkappid, identifier, usersig, random in.
        .layer(SignLayer::new(
            parts.credentials.clone(),
            parts.primary.clone(),
        ))
        // One attempt over the pooled rustls client, within request_timeout.
        .service(upstream)
}
