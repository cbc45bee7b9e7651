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
//!   -> auth        bearer tokens (or a client certificate), when configured
//!   -> allow-list  POST /v4/{service}/{command}, allowed APIs only
//!   -> body        size limit, bounded read
//!   -> shed        a bound on requests in flight; overload is refused at once
//!   -> validate    a JSON object; counter payload rules
//!   -> coalesce    concurrent increments (and identical reads) of one group share one call
//!   -> rate limit  per GroupId, then per API for the app
//!   -> retry       a second attempt only when the first never reached Tencent
//!   -> sign        the gateway's own query: sdkappid, identifier, usersig, random
//!   -> upstream    one attempt over the pooled rustls client
//!   -> Tencent
//! ```
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so tests can run many
//! gateways at once on port 0.

pub mod admin;
pub mod api;
pub mod apis;
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod credentials;
pub mod emulator;
pub mod envelope;
pub mod error;
pub mod heap;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod preflight;
pub mod rate_limit;
pub mod region;
pub mod sandbox;
pub mod server;
pub mod stack;
pub mod upstream;
pub mod usersig;
pub mod validation;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::usersig::SecretKey;

/// The two listeners, already bound.
#[derive(Debug)]
pub struct Listeners {
    pub callers: TcpListener,
    pub admin: TcpListener,
}

/// What can stop the gateway from starting.
pub type RunError = stack::BuildError;

/// Runs the gateway until `shutdown` resolves and the shutdown sequence of the contract is
/// done.
pub async fn run(
    config: Config,
    key: SecretKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    run_with_hurry(config, key, listeners, shutdown, std::future::pending()).await
}

/// Like [`run`]; `hurry` resolving after `shutdown` (a second signal) cuts the drain delay
/// short. Requests in flight still get the rest of the grace period.
pub async fn run_with_hurry(
    config: Config,
    key: SecretKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    hurry: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let (parts, service) = stack::gateway(&config, key)?;
    let caller_tls = match config.server.tls() {
        Some(files) => {
            if let Some(ca) = &files.client_ca_file {
                preflight::check_client_ca(ca).map_err(stack::BuildError::ClientCa)?;
            }
            Some(Arc::new(server::tls::CallerTls::new(files)?))
        }
        None => None,
    };
    let (metrics, credentials, lifecycle) = (
        parts.metrics.clone(),
        parts.credentials.clone(),
        parts.lifecycle.clone(),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        credentials: credentials.clone(),
        limiter: parts.limiter.clone(),
    });
    let mut tasks = vec![
        tokio::spawn(server::serve_admin(
            listeners.admin,
            admin,
            config.server.header_read_timeout,
            stopped(),
        )),
        tokio::spawn(credentials.clone().renew_in_background(stopped())),
        tokio::spawn(rate_limit::clean_periodically(
            parts.limiter.clone(),
            config.rate_limit.cleanup_interval,
            metrics.clone(),
            stopped(),
        )),
    ];
    if let Some(task) = parts.limiter.background(Box::pin(stopped())) {
        tasks.push(tokio::spawn(task));
    }
    if let config::SecretSource::File(path) = &config.chat.secret {
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(watch::watch(
            path.clone(),
            watch::POLL_INTERVAL,
            move |path| reload_secret(path, &credentials, &metrics),
            stopped(),
        )));
    }
    if let (Some(path), Some(authenticator)) =
        (&config.auth.tokens_file, parts.authenticator.clone())
    {
        let metrics = metrics.clone();
        metrics.caller_tokens_loaded(authenticator.count());
        tasks.push(tokio::spawn(watch::watch(
            path.clone(),
            watch::POLL_INTERVAL,
            move |path| metrics.caller_tokens_loaded(authenticator.reload(path)),
            stopped(),
        )));
    }
    if let Some(tls) = &caller_tls {
        for path in tls.paths() {
            let tls = tls.clone();
            tasks.push(tokio::spawn(watch::watch(
                path,
                watch::POLL_INTERVAL,
                move |_| tls.reload(),
                stopped(),
            )));
        }
    }
    let header_read_timeout = config.server.header_read_timeout;
    let options = server::accept::ConnOptions {
        builder: server::connection_builder_with(header_read_timeout),
        first_request_timeout: header_read_timeout,
        // As over HTTP/1.1, where the wait for the next request head is bounded the same way.
        idle_timeout: header_read_timeout,
        write_timeout: config.server.write_timeout,
        tls: caller_tls.as_ref().map(|t| t.current()),
        answer_permits: Some(parts.in_flight.clone()),
    };
    let limit = server::accept::ConnectionLimit::counted(
        config.server.max_connections,
        metrics.caller_connections().clone(),
        metrics.connections_refused().clone(),
    );

    tracing::info!(
        listen = %listeners.callers.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = caller_tls.is_some(),
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
            header_read_timeout,
        },
        options,
        limit,
        shutdown,
        hurry,
    )
    .await;

    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// A changed secret key file: the next UserSig uses the new key at once. An empty or
/// unreadable file keeps the old key (and says why, never what it holds).
fn reload_secret(path: &std::path::Path, credentials: &Credentials, metrics: &Metrics) {
    match credentials::read_secret_file(path) {
        Ok(key) => {
            credentials.set_key(key);
            credentials.renew(credentials::unix_now());
            metrics.secret_key_loaded(true);
            tracing::info!("secret key file changed: reloaded, and signed a new UserSig with it");
        }
        Err(e) => {
            metrics.secret_key_loaded(false);
            tracing::warn!(error = %e, "secret key file changed but could not be used; the previous key stays in use");
        }
    }
}
