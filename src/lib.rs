//! chat-gateway: a signing, validating, rate-limiting gateway in front of Tencent Cloud Chat's
//! REST API.
//!
//! Internal services `POST /v4/{service}/{command}` with a plain JSON body. The gateway checks
//! the body, adds the app's credentials and forwards the call over HTTPS:
//!
//! ```text
//! caller
//!   -> observe     request id, metrics, one log event
//!   -> rescue      typed errors become Tencent envelopes
//!   -> drain       after the drain delay, new requests are refused
//!   -> allow-list  POST /v4/{service}/{command}, allowed APIs only
//!   -> body        size limit, bounded read
//!   -> validate    a JSON object; counter payload rules
//!   -> rate limit  per GroupId, then per API for the app
//!   -> sign        the gateway's own query: sdkappid, identifier, usersig, random
//!   -> upstream    one attempt over the pooled rustls client
//!   -> Tencent
//! ```
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so tests can run many
//! gateways at once on port 0.

pub mod admin;
pub mod api;
pub mod config;
pub mod credentials;
pub mod emulator;
pub mod envelope;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod middleware;
pub mod rate_limit;
pub mod region;
pub mod sandbox;
pub mod server;
pub mod stack;
pub mod upstream;
pub mod usersig;
pub mod validation;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::credentials::Credentials;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::usersig::SecretKey;

/// The two listeners, already bound.
#[derive(Debug)]
pub struct Listeners {
    pub callers: TcpListener,
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] upstream::ClientSetupError),
}

/// Runs the gateway until `shutdown` resolves and the shutdown sequence of the contract is
/// done.
pub async fn run(
    config: Config,
    key: SecretKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let lifecycle = Arc::new(Lifecycle::new());
    let credentials = Credentials::new(
        config.chat.sdkappid,
        &config.chat.identifier,
        config.chat.usersig_ttl,
        key,
        metrics.clone(),
    );
    let client = upstream::build_client(
        config.chat.ca_file.as_deref(),
        config.upstream.connect_timeout,
    )?;
    let limiter: Arc<dyn rate_limit::RateLimiter> =
        Arc::new(rate_limit::LocalLimiter::new(&config.rate_limit));
    let parts = stack::StackParts {
        metrics: metrics.clone(),
        table: Arc::new(api::ApiTable::new(&config.apis)),
        lifecycle: lifecycle.clone(),
        credentials: credentials.clone(),
        primary: Arc::from(config.chat.endpoint.base()),
        max_body_bytes: config.server.max_body_bytes,
        limiter: limiter.clone(),
    };
    let service = stack::build(
        &parts,
        upstream::UpstreamService::new(client, config.upstream.request_timeout, metrics.clone()),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let admin = Arc::new(admin::Admin {
        metrics,
        lifecycle: lifecycle.clone(),
        credentials: credentials.clone(),
        limiter: limiter.clone(),
    });
    let admin_task = tokio::spawn(server::serve_admin(listeners.admin, admin, stopped()));
    let renew_task = tokio::spawn(credentials.renew_in_background(stopped()));
    let cleanup_task = tokio::spawn(rate_limit::clean_periodically(
        limiter,
        config.rate_limit.cleanup_interval,
        parts.metrics.clone(),
        stopped(),
    ));

    tracing::info!(
        listen = %listeners.callers.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %config.chat.endpoint,
        sdkappid = config.chat.sdkappid,
        "chat-gateway serving"
    );
    server::serve_callers(
        listeners.callers,
        service,
        lifecycle,
        server::ShutdownTimes {
            drain_delay: config.server.drain_delay,
            shutdown_grace: config.server.shutdown_grace,
        },
        shutdown,
    )
    .await;

    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = renew_task.await;
    let _ = cleanup_task.await;
    Ok(())
}
