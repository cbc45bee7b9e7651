//! The whole request pipeline on one screen, outermost layer first, and what it is built
//! from ([`Assembly`]: made at start, and again, keeping the long-lived state, at each reload).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceBuilder};

use crate::api::ApiTable;
use crate::auth::{Authenticator, Tokens, TokensError};
use crate::coalesce::CoalesceLayer;
use crate::config::{Config, SecretSource};
use crate::credentials::{read_secret_env, read_secret_file, Credentials};
use crate::error::GatewayError;
use crate::exchange::GatewayResponse;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::middleware::allow::Allow;
use crate::middleware::auth::Authenticate;
use crate::middleware::body::BodyLayer;
use crate::middleware::check::CheckLayer;
use crate::middleware::content_coding::Decode;
use crate::middleware::drain::Drain;
use crate::middleware::leftover::Discard;
use crate::middleware::observe::ObserveLayer;
use crate::middleware::rate_limit::LimitLayer;
use crate::middleware::rescue::RescueLayer;
use crate::middleware::retry::RetryLayer;
use crate::middleware::shed::ShedLayer;
use crate::middleware::sign::SignLayer;
use crate::middleware::validate::Validate;
use crate::rate_limit::{self, RateLimiter};
use crate::server::tls::CallerTls;
use crate::traces::{TraceSetupError, Tracing};
use crate::upstream::targets::Targets;
use crate::upstream::{build_client, ClientSetupError, UpstreamService};
use crate::usersig::SecretKey;

/// What the layers share; made when the gateway starts, and again (keeping the long-lived
/// state) at each reload.
#[derive(Clone)]
pub struct StackParts {
    pub metrics: Metrics,
    pub table: Arc<ApiTable>,
    pub lifecycle: Arc<Lifecycle>,
    pub credentials: Arc<Credentials>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    /// The `server.max_in_flight` permits, shared with the server for answers being written.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The rate-limit backend under the config's mode (shadow or enforce).
    pub limiter: Arc<dyn RateLimiter>,
    /// The backend alone: what a reload builds new budgets over.
    pub backend: Arc<dyn RateLimiter>,
    /// `None`: callers are not authenticated.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Primary and backup upstream, and the circuit between them.
    pub targets: Arc<Targets>,
    /// Hot-group coalescing, with its per-group state.
    pub coalesce: CoalesceLayer,
    /// Traces, when `[tracing]` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector.
    pub tracing: Option<Arc<Tracing>>,
}

/// What can stop the gateway from being assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Client(#[from] ClientSetupError),
    #[error("auth.tokens_file: {0}")]
    Tokens(#[from] TokensError),
    #[error("{key}: {0}", key = .0.key())]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("server.tls_client_ca_file: {0}")]
    ClientCa(String),
    /// The secret key of a reloaded `[chat]` could not be read (never its content).
    #[error("{key}: {why}")]
    Secret {
        key: &'static str,
        why: crate::credentials::SecretError,
    },
    #[error(transparent)]
    RateLimit(#[from] rate_limit::SetupError),
    #[error(transparent)]
    Tracing(#[from] TraceSetupError),
}

/// The body of a caller's request.
pub type Incoming = hyper::body::Incoming;

/// A gateway's parts with the config they were made from, the pooled upstream client and
/// caller TLS: what the pipeline and the listeners are built from, and what a reload starts
/// from.
#[derive(Clone)]
pub struct Assembly {
    pub config: Config,
    pub parts: StackParts,
    pub upstream: UpstreamService,
    /// `None`: callers connect over plain TCP.
    pub caller_tls: Option<Arc<CallerTls>>,
}

impl Assembly {
    /// Everything from a checked config.
    pub fn new(config: &Config, key: SecretKey) -> Result<Assembly, BuildError> {
        let caller_tls = caller_tls(config)?;
        let parts = StackParts::from_config(config, key)?;
        let upstream = upstream_service(config, &parts.metrics)?;
        Ok(Assembly {
            config: config.clone(),
            parts,
            upstream,
            caller_tls,
        })
    }

    /// The same gateway under `config` (checked, with the keys that need a restart at their
    /// running values). Kept: metrics, the limiter's state and its backend, the coalescing
    /// batches, the in-flight permits (the server resizes them); the credentials, the tokens,
    /// caller TLS, the upstream pool and circuit, and the trace exporter, unless what they
    /// depend on changed. The files `config` names are read first: one that cannot be read
    /// fails the reload before anything new is signed or started.
    pub fn reloaded(&self, config: Config) -> Result<Assembly, BuildError> {
        let (old, parts) = (&self.config, &self.parts);
        let Reread {
            key,
            authenticator,
            caller_tls,
        } = self.reread(&config)?;
        let targets = if (&config.chat.endpoint, &config.chat.backup_endpoint)
            == (&old.chat.endpoint, &old.chat.backup_endpoint)
        {
            parts.targets.clone()
        } else {
            targets(&config, &parts.metrics)
        };
        let upstream = if (
            &config.chat.ca_file,
            config.upstream.connect_timeout,
            config.upstream.max_in_flight,
        ) == (
            &old.chat.ca_file,
            old.upstream.connect_timeout,
            old.upstream.max_in_flight,
        ) {
            self.upstream
                .with_request_timeout(config.upstream.request_timeout)
        } else {
            upstream_service(&config, &parts.metrics)?
        };
        // A new exporter only for new tracing settings: the running one keeps its queue.
        let tracing = if config.tracing == old.tracing {
            parts.tracing.clone()
        } else {
            match config.tracing.settings(|name| std::env::var(name).ok()) {
                Some(settings) => Some(Tracing::start(&settings, &parts.metrics)?),
                None => None,
            }
        };
        let credentials = match key {
            None => parts.credentials.clone(),
            Some(key) => credentials(&config, key, &parts.metrics),
        };
        // Last, once nothing can fail: the Redis limiter's new budgets are in force for the
        // checks of every pipeline from then on.
        let backend = (parts
            .backend
            .rebudgeted(&config.rate_limit, config.chat.sdkappid)?)
        .unwrap_or_else(|| parts.backend.clone());
        let limiter =
            rate_limit::with_mode(backend.clone(), config.rate_limit.mode, &parts.metrics);
        let parts = StackParts {
            tracing,
            credentials,
            authenticator,
            coalesce: (parts.coalesce).reloaded(config.coalesce.clone(), limiter.clone()),
            table: Arc::new(parts.table.reloaded(&config.apis)),
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            limiter,
            backend,
            targets,
            ..parts.clone()
        };
        Ok(Assembly {
            config,
            parts,
            upstream,
            caller_tls,
        })
    }

    /// What `config` names in files, read first (a failure leaves no trace): the secret key
    /// for a new identity, the tokens and caller TLS for new paths; the running ones otherwise.
    fn reread(&self, config: &Config) -> Result<Reread, BuildError> {
        let old = &self.config;
        let key = if same_identity(old, config) {
            None
        } else {
            Some(read_secret(&config.chat.secret)?)
        };
        let authenticator = if config.auth.tokens_file == old.auth.tokens_file {
            self.parts.authenticator.clone()
        } else {
            authenticator(config)?
        };
        let caller_tls = if config.server.tls() == old.server.tls() {
            self.caller_tls.clone()
        } else {
            caller_tls(config)?
        };
        Ok(Reread {
            key,
            authenticator,
            caller_tls,
        })
    }

    /// The pipeline over the pooled client. One function, so that every build (at start and
    /// at each reload) has one type, which the server swaps.
    pub fn pipeline(
        &self,
    ) -> impl Service<Request<Incoming>, Response = GatewayResponse, Error = Infallible, Future: Send>
           + Clone
           + Send
           + Sync
           + 'static {
        build(&self.parts, self.upstream.clone())
    }
}

/// What a reload read from the files its config names ([`Assembly::reloaded`]).
struct Reread {
    /// `Some`: the identity changed, and this key signs its first UserSig.
    key: Option<SecretKey>,
    authenticator: Option<Arc<Authenticator>>,
    caller_tls: Option<Arc<CallerTls>>,
}

/// Whether the UserSig `new` asks for is the one `old` signs: same app, identifier, life and
/// key source (a changed key in the same file is the secret watch's business).
fn same_identity(old: &Config, new: &Config) -> bool {
    let (old, new) = (&old.chat, &new.chat);
    (old.sdkappid, &old.identifier, old.usersig_ttl, &old.secret)
        == (new.sdkappid, &new.identifier, new.usersig_ttl, &new.secret)
}

fn read_secret(source: &SecretSource) -> Result<SecretKey, BuildError> {
    match source {
        SecretSource::File(path) => read_secret_file(path).map_err(|why| BuildError::Secret {
            key: "chat.secret_key_file",
            why,
        }),
        SecretSource::Env(var) => read_secret_env(var).map_err(|why| BuildError::Secret {
            key: "chat.secret_key_env",
            why,
        }),
    }
}

/// Signs the first UserSig of `config`'s identity with `key`.
fn credentials(config: &Config, key: SecretKey, metrics: &Metrics) -> Arc<Credentials> {
    Credentials::new(
        config.chat.sdkappid,
        &config.chat.identifier,
        config.chat.usersig_ttl,
        key,
        metrics.clone(),
    )
}

fn authenticator(config: &Config) -> Result<Option<Arc<Authenticator>>, BuildError> {
    match &config.auth.tokens_file {
        Some(path) => Ok(Some(Authenticator::new(Tokens::load(path)?))),
        None => Ok(None),
    }
}

/// Caller TLS, when configured: the files loaded, and a client CA file that holds CAs only.
fn caller_tls(config: &Config) -> Result<Option<Arc<CallerTls>>, BuildError> {
    let Some(files) = config.server.tls() else {
        return Ok(None);
    };
    if let Some(ca) = &files.client_ca_file {
        crate::preflight::check_client_ca(ca).map_err(BuildError::ClientCa)?;
    }
    Ok(Some(Arc::new(CallerTls::new(files)?)))
}

fn upstream_service(config: &Config, metrics: &Metrics) -> Result<UpstreamService, BuildError> {
    let client = build_client(
        config.chat.ca_file.as_deref(),
        config.upstream.connect_timeout,
        config.upstream.max_in_flight,
    )?;
    Ok(UpstreamService::new(
        client,
        config.upstream.request_timeout,
        config.upstream.max_in_flight,
        metrics.clone(),
    ))
}

fn targets(config: &Config, metrics: &Metrics) -> Arc<Targets> {
    Targets::new(
        Arc::from(config.chat.endpoint.base()),
        (config.chat.backup_endpoint.as_ref()).map(|b| Arc::from(b.base())),
        metrics.clone(),
    )
}

impl StackParts {
    /// Everything the layers share, made from a checked config and the secret key. Signs the
    /// first UserSig and reads the tokens file.
    pub fn from_config(config: &Config, key: SecretKey) -> Result<StackParts, BuildError> {
        let metrics = Metrics::new();
        let credentials = credentials(config, key, &metrics);
        let authenticator = authenticator(config)?;
        let targets = targets(config, &metrics);
        let backend = rate_limit::backend(&config.rate_limit, config.chat.sdkappid, &metrics)?;
        let limiter = rate_limit::with_mode(backend.clone(), config.rate_limit.mode, &metrics);
        let tracing = match config.tracing.settings(|name| std::env::var(name).ok()) {
            Some(settings) => Some(Tracing::start(&settings, &metrics)?),
            None => None,
        };
        Ok(StackParts {
            tracing,
            coalesce: CoalesceLayer::new(config.coalesce.clone(), limiter.clone(), metrics.clone()),
            table: Arc::new(ApiTable::new(&config.apis)),
            lifecycle: Arc::new(Lifecycle::new()),
            credentials,
            max_body_bytes: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
            limiter,
            backend,
            authenticator,
            targets,
            metrics,
        })
    }
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
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    U: Service<Request<Full<Bytes>>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    U::Future: Send,
{
    ServiceBuilder::new()
        // Sees every final answer, rejections included: request id, metrics, the log event,
        // the request's span.
        .layer(ObserveLayer::new(
            parts.metrics.clone(),
            parts.table.clone(),
            parts.lifecycle.clone(),
            parts.tracing.clone(),
        ))
        .service(build_unobserved(parts, upstream))
}

/// The pipeline below the observe layer: no request id, metrics or log event. Benches use it
/// to show what observing costs.
pub fn build_unobserved<B, U>(
    parts: &StackParts,
    upstream: U,
) -> impl Service<Request<B>, Response = GatewayResponse, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    U: Service<Request<Full<Bytes>>, Response = GatewayResponse, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    U::Future: Send,
{
    let discard = Discard {
        max_bytes: parts.max_body_bytes,
        timeout: parts.body_read_timeout,
    };
    ServiceBuilder::new()
        // HTTP/2: the rest of a body answered before it was read is read away (bounded), so
        // that clients still sending keep the answer.
        .map_request(move |req: Request<B>| discard.wrap(req))
        // The one place where typed errors become Tencent envelopes with the reason header.
        .layer(RescueLayer)
        // After the drain delay, new requests on open connections are refused.
        .layer(CheckLayer::new(Drain::new(parts.lifecycle.clone())))
        // Bearer tokens or a client certificate (shared-service mode), before anything else
        // about the request.
        .layer(CheckLayer::new(Authenticate::new(
            parts.authenticator.clone(),
        )))
        // Method and path, before a byte of the body is read.
        .layer(CheckLayer::new(Allow::new(parts.table.clone())))
        // Size limit: Content-Length first, then a bounded read within a deadline.
        .layer(BodyLayer::new(
            parts.max_body_bytes,
            parts.body_read_timeout,
        ))
        // A bound on requests in flight: overload is refused at once, never queued. Taken
        // once the body is in, so slow senders hold connections, not permits; large answers
        // hold one again while they are written (see server::io).
        .layer(ShedLayer::shared(parts.in_flight.clone()))
        // A compressed body is decoded here, under the permit, to at most max_body_bytes.
        .layer(CheckLayer::new(Decode::new(parts.max_body_bytes)))
        // A JSON object; counter payloads keep Tencent's rules.
        .layer(CheckLayer::new(Validate))
        // Concurrent increments of one group share one call and one token (taken here).
        .layer(parts.coalesce.clone())
        // Per GroupId, then per API for the app: only valid requests spend tokens.
        .layer(LimitLayer::new(
            parts.limiter.clone(),
            parts.metrics.clone(),
        ))
        // A second attempt only when the first provably never reached Tencent (or 70001).
        .layer(RetryLayer::new(
            parts.targets.clone(),
            parts.credentials.clone(),
            parts.metrics.clone(),
        ))
        // Caller query and headers out; the gateway's own headers and sdkappid, identifier,
        // usersig, random in.
        .layer(SignLayer::new(
            parts.credentials.clone(),
            parts.targets.primary(),
        ))
        // One attempt over the pooled rustls client, within request_timeout.
        .service(upstream)
}
