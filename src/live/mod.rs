//! What of a running gateway follows a reloaded config besides the pipeline: the options new
//! caller and admin connections get, the bounds on connections and on requests in flight,
//! the shutdown delays, and (in [`tasks`]) the background work that depends on the config:
//! UserSig renewal, the watches of the secret key, tokens and TLS files, the limiter's cleanup.
//!
//! The reloader hands each applied [`Assembly`] to [`Live::apply`]: connections and requests
//! already under way keep what they started with; new ones get the new values.

pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::server::accept::{ConnOptions, ConnectionLimit};
use crate::server::{self, LiveOptions, ShutdownTimes};
use crate::stack::Assembly;

/// The running gateway's settings outside the pipeline, and the assembly in force for those
/// who follow it ([`Live::subscribe`]).
pub struct Live {
    callers: LiveOptions,
    admin: LiveOptions,
    limit: ConnectionLimit,
    times: ArcSwap<ShutdownTimes>,
    published: watch::Sender<Arc<Assembly>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("callers", &self.callers.load())
            .field("times", &self.times.load())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// The settings of the gateway `assembly` starts.
    pub fn new(assembly: &Assembly) -> Arc<Live> {
        let (config, metrics) = (&assembly.config, &assembly.parts.metrics);
        Arc::new(Live {
            callers: Arc::new(ArcSwap::from_pointee(caller_options(assembly))),
            admin: Arc::new(ArcSwap::from_pointee(server::admin_options(
                config.server.header_read_timeout,
            ))),
            limit: ConnectionLimit::counted(
                config.server.max_connections,
                metrics.caller_connections().clone(),
                metrics.connections_refused().clone(),
            ),
            times: ArcSwap::from_pointee(shutdown_times(assembly)),
            published: watch::Sender::new(Arc::new(assembly.clone())),
        })
    }

    /// From now on `next` is in force (`running` was until now): new connections get its
    /// options, the bounds take its values, the followers see it.
    pub fn apply(&self, running: &Assembly, next: &Assembly) {
        let (was, now) = (&running.config.server, &next.config.server);
        resize_permits(&next.parts.in_flight, was.max_in_flight, now.max_in_flight);
        self.limit.resize(now.max_connections);
        self.callers.store(Arc::new(caller_options(next)));
        self.admin
            .store(Arc::new(server::admin_options(now.header_read_timeout)));
        self.times.store(Arc::new(shutdown_times(next)));
        if !Arc::ptr_eq(&running.parts.credentials, &next.parts.credentials) {
            next.parts.metrics.secret_key_loaded(true);
            tracing::info!(
                sdkappid = next.config.chat.sdkappid,
                identifier = %next.config.chat.identifier,
                "new [chat] credentials: signed a new UserSig with them"
            );
        }
        self.published.send_replace(Arc::new(next.clone()));
    }

    /// What new caller connections get.
    pub fn callers(&self) -> LiveOptions {
        self.callers.clone()
    }

    /// What new admin connections get.
    pub fn admin(&self) -> LiveOptions {
        self.admin.clone()
    }

    /// The bound on open caller connections.
    pub fn limit(&self) -> ConnectionLimit {
        self.limit.clone()
    }

    /// The shutdown delays in force.
    pub fn times(&self) -> ShutdownTimes {
        **self.times.load()
    }

    /// The assembly in force, now and after each reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Assembly>> {
        self.published.subscribe()
    }
}

fn shutdown_times(assembly: &Assembly) -> ShutdownTimes {
    ShutdownTimes {
        drain_delay: assembly.config.server.drain_delay,
        shutdown_grace: assembly.config.server.shutdown_grace,
    }
}

/// How each caller connection is served: HTTP/1.1 and h2, its deadlines, TLS, and the permits
/// that answers being written hold.
fn caller_options(assembly: &Assembly) -> ConnOptions {
    let server = &assembly.config.server;
    let header_read_timeout = server.header_read_timeout;
    ConnOptions {
        builder: server::connection_builder_with(header_read_timeout),
        first_request_timeout: header_read_timeout,
        // As over HTTP/1.1, where the wait for the next request head is bounded the same way.
        idle_timeout: header_read_timeout,
        write_timeout: server.write_timeout,
        tls: assembly.caller_tls.as_ref().map(|t| t.current()),
        answer_permits: Some(assembly.parts.in_flight.clone()),
    }
}

/// Makes the one semaphore behind `server.max_in_flight` hold `to` permits instead of `from`.
/// Raised: the difference is added. Lowered: the free permits are taken away at once, and
/// those held now as their requests end (a waiting acquire has them before anyone else, so
/// the new bound holds from now on). Never a second semaphore, which old and new requests
/// would both fill.
pub fn resize_permits(permits: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        permits.add_permits(to - from);
        return;
    }
    let held = (from - to) - permits.forget_permits(from - to);
    if held == 0 {
        return;
    }
    let permits = permits.clone();
    // The config bounds max_in_flight far below u32::MAX.
    let held = u32::try_from(held).unwrap_or(u32::MAX);
    tokio::spawn(async move {
        if let Ok(taken) = permits.acquire_many_owned(held).await {
            taken.forget();
        }
    });
}

/// Resolves when the sender says stop, or is gone.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A stop signal and what ends it (sending `true`, or dropping it).
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// The admin endpoint asks the assembly published last.
impl crate::admin::InForce for watch::Receiver<Arc<Assembly>> {
    fn can_sign(&self, now: u64) -> bool {
        self.borrow().parts.credentials.can_sign(now)
    }

    fn tracked_groups(&self) -> usize {
        self.borrow().parts.limiter.tracked_groups()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::admin::InForce;
    use crate::config::Config;
    use crate::usersig::SecretKey;

    /// Readiness asks the credentials of the assembly in force, not of the first one.
    #[tokio::test]
    async fn the_admin_asks_the_credentials_of_the_assembly_in_force() {
        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "k\n").expect("write");
        let text = |identifier: &str| {
            format!(
                "[chat]\nsdkappid = 1400000000\nregion = \"singapore\"\nidentifier = \"{identifier}\"\n\
                 secret_key_file = \"{}\"\n",
                key_file.display()
            )
        };
        let config = Config::parse(&text("first")).expect("valid");
        let first = Assembly::new(&config, SecretKey::new("k").expect("key")).expect("assembly");
        let next = first
            .reloaded(Config::parse(&text("next")).expect("valid"))
            .expect("reloaded");
        // The first identity's sig, dated 1970, has long expired.
        first.parts.credentials.renew(1);
        let (published, running) = watch::channel(Arc::new(first));
        let now = crate::credentials::unix_now();
        assert!(!running.can_sign(now));
        published.send_replace(Arc::new(next));
        assert!(running.can_sign(now));
    }

    #[tokio::test]
    async fn permits_resize_in_place_and_a_lowered_bound_waits_for_the_held_ones() {
        let permits = Arc::new(Semaphore::new(4));
        let held: Vec<_> = (0..3)
            .map(|_| permits.clone().try_acquire_owned().expect("free"))
            .collect();
        resize_permits(&permits, 4, 2);
        assert_eq!(permits.available_permits(), 0, "the free one is gone");
        drop(held);
        tokio::task::yield_now().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while permits.available_permits() != 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the held ones come back up to the new bound");
        resize_permits(&permits, 2, 5);
        assert_eq!(permits.available_permits(), 5);
    }
}
