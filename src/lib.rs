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
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod credentials;
pub mod emulator;
pub mod envelope;
pub mod error;
pub mod exchange;
pub mod heap;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod preflight;
pub mod rate_limit;
pub mod region;
pub mod reload;
pub mod sandbox;
pub mod server;
pub mod stack;
pub mod traces;
pub mod upstream;
pub mod usersig;
pub mod validated_apis;
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
    serve(config, None, key, listeners, shutdown, hurry).await
}

/// Like [`run_with_hurry`], for a config loaded from `path`: the file is read again on SIGHUP
/// and when its content changes, and applied while serving ([`reload`]).
pub async fn run_from_file(
    config: Config,
    path: std::path::PathBuf,
    key: SecretKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    hurry: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    serve(config, Some(path), key, listeners, shutdown, hurry).await
}

async fn serve(
    config: Config,
    path: Option<std::path::PathBuf>,
    key: SecretKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    hurry: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let assembly = stack::Assembly::new(&config, key)?;
    let parts = assembly.parts.clone();
    // Redis refusing the gateway's credentials or certificate is a setup error, not an outage.
    parts
        .limiter
        .start()
        .await
        .map_err(stack::BuildError::from)?;
    let service = reload::Current::new(assembly.pipeline());
    parts.metrics.config_loaded(credentials::unix_now());
    let caller_tls = caller_tls(&config)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = Stop(stop_rx);
    let mut tasks = spawn_tasks(&config, &parts, listeners.admin, caller_tls.as_ref(), &stop);
    if let Some(path) = path {
        let reloader =
            reload::Reloader::new(path, assembly, service.clone(), stack::Assembly::pipeline);
        tasks.push(tokio::spawn(reloader.run(stop.stopped())));
    }
    let options = conn_options(&config, &parts, caller_tls.as_ref());
    let limit = server::accept::ConnectionLimit::counted(
        config.server.max_connections,
        parts.metrics.caller_connections().clone(),
        parts.metrics.connections_refused().clone(),
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
        parts.lifecycle.clone(),
        server::ShutdownTimes {
            drain_delay: config.server.drain_delay,
            shutdown_grace: config.server.shutdown_grace,
            header_read_timeout: config.server.header_read_timeout,
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

/// Caller TLS, when configured: the files loaded, and a client CA file that holds CAs only.
fn caller_tls(config: &Config) -> Result<Option<Arc<server::tls::CallerTls>>, RunError> {
    let Some(files) = config.server.tls() else {
        return Ok(None);
    };
    if let Some(ca) = &files.client_ca_file {
        preflight::check_client_ca(ca).map_err(stack::BuildError::ClientCa)?;
    }
    Ok(Some(Arc::new(server::tls::CallerTls::new(files)?)))
}

/// The signal that stops the background tasks once the callers' server is done.
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// The background tasks, each until `stop`: the admin listener, UserSig renewal, the
/// limiter's cleanup and its own work, and the watches of the files the config names.
fn spawn_tasks(
    config: &Config,
    parts: &stack::StackParts,
    admin_listener: TcpListener,
    caller_tls: Option<&Arc<server::tls::CallerTls>>,
    stop: &Stop,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (metrics, credentials) = (parts.metrics.clone(), parts.credentials.clone());
    let admin = Arc::new(admin::Admin {
        metrics: metrics.clone(),
        lifecycle: parts.lifecycle.clone(),
        credentials: credentials.clone(),
        limiter: parts.limiter.clone(),
    });
    let mut tasks = vec![
        tokio::spawn(server::serve_admin(
            admin_listener,
            admin,
            config.server.header_read_timeout,
            stop.stopped(),
        )),
        tokio::spawn(credentials.clone().renew_in_background(stop.stopped())),
        tokio::spawn(rate_limit::clean_periodically(
            parts.limiter.clone(),
            config.rate_limit.cleanup_interval,
            metrics.clone(),
            stop.stopped(),
        )),
    ];
    if let Some(task) = parts.limiter.background(Box::pin(stop.stopped())) {
        tasks.push(tokio::spawn(task));
    }
    if let config::SecretSource::File(path) = &config.chat.secret {
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(watch::watch(
            path.clone(),
            watch::POLL_INTERVAL,
            move |path| reload_secret(path, &credentials, &metrics),
            stop.stopped(),
        )));
    }
    if let (Some(path), Some(authenticator)) =
        (&config.auth.tokens_file, parts.authenticator.clone())
    {
        metrics.caller_tokens_loaded(authenticator.count());
        tasks.push(tokio::spawn(watch::watch(
            path.clone(),
            watch::POLL_INTERVAL,
            move |path| metrics.caller_tokens_loaded(authenticator.reload(path)),
            stop.stopped(),
        )));
    }
    if let Some(tls) = caller_tls {
        for path in tls.paths() {
            let tls = tls.clone();
            tasks.push(tokio::spawn(watch::watch(
                path,
                watch::POLL_INTERVAL,
                move |_| tls.reload(),
                stop.stopped(),
            )));
        }
    }
    tasks
}

/// How each caller connection is served: HTTP/1.1 and h2, its deadlines, TLS, and the permits
/// that answers being written hold.
fn conn_options(
    config: &Config,
    parts: &stack::StackParts,
    caller_tls: Option<&Arc<server::tls::CallerTls>>,
) -> server::accept::ConnOptions {
    let header_read_timeout = config.server.header_read_timeout;
    server::accept::ConnOptions {
        builder: server::connection_builder_with(header_read_timeout),
        first_request_timeout: header_read_timeout,
        // As over HTTP/1.1, where the wait for the next request head is bounded the same way.
        idle_timeout: header_read_timeout,
        write_timeout: config.server.write_timeout,
        tls: caller_tls.map(|t| t.current()),
        answer_permits: Some(parts.in_flight.clone()),
    }
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
