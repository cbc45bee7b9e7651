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
pub mod live;
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
    let live = live::Live::new(&assembly);
    let (stop_tx, stop) = live::Stop::new();
    let mut tasks = spawn_tasks(&parts, &live, listeners.admin, &stop);
    tracing::info!(
        listen = %listeners.callers.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = assembly.caller_tls.is_some(),
        upstream = %config.chat.endpoint,
        sdkappid = config.chat.sdkappid,
        "chat-gateway serving"
    );
    if let Some(path) = path {
        let reloader = reload::Reloader::new(
            path,
            assembly,
            service.clone(),
            stack::Assembly::pipeline,
            live.clone(),
        );
        tasks.push(tokio::spawn(reloader.run(stop.stopped())));
    }
    let times = {
        let live = live.clone();
        move || live.times()
    };
    server::serve_callers(
        listeners.callers,
        service,
        parts.lifecycle.clone(),
        times,
        live.callers(),
        live.limit(),
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

/// The background tasks, each until `stop`: the admin listener, the limiter's own work, and
/// what follows the config in force (UserSig renewal, the limiter's cleanup, the watches of
/// the files the config names: [`live::tasks`]).
fn spawn_tasks(
    parts: &stack::StackParts,
    live: &live::Live,
    admin_listener: TcpListener,
    stop: &live::Stop,
) -> Vec<tokio::task::JoinHandle<()>> {
    let admin = Arc::new(admin::Admin {
        metrics: parts.metrics.clone(),
        lifecycle: parts.lifecycle.clone(),
        running: Arc::new(live.subscribe()),
    });
    let mut tasks = vec![
        tokio::spawn(server::serve_admin(
            admin_listener,
            admin,
            live.admin(),
            stop.stopped(),
        )),
        tokio::spawn(live::tasks::follow(live.subscribe(), stop.stopped())),
    ];
    if let Some(task) = parts.limiter.background(Box::pin(stop.stopped())) {
        tasks.push(tokio::spawn(task));
    }
    tasks
}
