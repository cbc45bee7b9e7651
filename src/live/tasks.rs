//! The background work that depends on the config, in groups that follow the assembly in
//! force: a group whose inputs a reload changed is stopped and started again over the new
//! ones (its own stop signal), the others keep running untouched.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Stop;
use crate::config::SecretSource;
use crate::credentials::{self, Credentials};
use crate::metrics::Metrics;
use crate::stack::Assembly;
use crate::{rate_limit, watch as files};

/// Runs the groups over the assembly in force, following each published one, until `stop`
/// resolves; then stops them all and waits for them.
pub async fn follow(mut published: watch::Receiver<Arc<Assembly>>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let first = published.borrow_and_update().clone();
    let mut groups = Groups::start(first);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = published.changed() => {
                if changed.is_err() {
                    // Nothing more will be published: keep what runs until told to stop.
                    (&mut stop).await;
                    break;
                }
                let next = published.borrow_and_update().clone();
                groups.follow(next).await;
            }
        }
    }
    groups.end().await;
}

/// Tasks stopped together.
struct Group {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Group {
    fn start(spawn: impl FnOnce(&Stop) -> Vec<JoinHandle<()>>) -> Group {
        let (stop, stopped) = Stop::new();
        let tasks = spawn(&stopped);
        Group { stop, tasks }
    }

    async fn end(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Each group, and the assembly it was started over.
struct Groups {
    from: Arc<Assembly>,
    signing: Group,
    tokens: Group,
    tls: Group,
    cleanup: Group,
}

fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Groups {
    fn start(from: Arc<Assembly>) -> Groups {
        Groups {
            signing: signing(&from),
            tokens: tokens(&from),
            tls: tls(&from),
            cleanup: cleanup(&from),
            from,
        }
    }

    /// Restarts the groups whose inputs differ in `next`.
    async fn follow(&mut self, next: Arc<Assembly>) {
        let (was, now) = (&self.from, &next);
        if !Arc::ptr_eq(&was.parts.credentials, &now.parts.credentials) {
            std::mem::replace(&mut self.signing, signing(now))
                .end()
                .await;
        }
        if !same(&was.parts.authenticator, &now.parts.authenticator) {
            std::mem::replace(&mut self.tokens, tokens(now)).end().await;
        }
        if !same(&was.caller_tls, &now.caller_tls) {
            std::mem::replace(&mut self.tls, tls(now)).end().await;
        }
        if !Arc::ptr_eq(&was.parts.limiter, &now.parts.limiter)
            || was.config.rate_limit.cleanup_interval != now.config.rate_limit.cleanup_interval
        {
            std::mem::replace(&mut self.cleanup, cleanup(now))
                .end()
                .await;
        }
        self.from = next;
    }

    async fn end(self) {
        for group in [self.signing, self.tokens, self.tls, self.cleanup] {
            group.end().await;
        }
    }
}

/// UserSig renewal at half-life, and the watch of the secret key file.
fn signing(assembly: &Assembly) -> Group {
    let (credentials, metrics) = (&assembly.parts.credentials, &assembly.parts.metrics);
    Group::start(|stop| {
        let mut tasks = vec![tokio::spawn(
            credentials.clone().renew_in_background(stop.stopped()),
        )];
        if let SecretSource::File(path) = &assembly.config.chat.secret {
            let (credentials, metrics) = (credentials.clone(), metrics.clone());
            tasks.push(tokio::spawn(files::watch(
                path.clone(),
                files::POLL_INTERVAL,
                move |path| reload_secret(path, &credentials, &metrics),
                stop.stopped(),
            )));
        }
        tasks
    })
}

/// The watch of the tokens file.
fn tokens(assembly: &Assembly) -> Group {
    let metrics = assembly.parts.metrics.clone();
    let watched =
        (assembly.config.auth.tokens_file.clone()).zip(assembly.parts.authenticator.clone());
    Group::start(|stop| {
        let Some((path, authenticator)) = watched else {
            return Vec::new();
        };
        metrics.caller_tokens_loaded(authenticator.count());
        vec![tokio::spawn(files::watch(
            path,
            files::POLL_INTERVAL,
            move |path| metrics.caller_tokens_loaded(authenticator.reload(path)),
            stop.stopped(),
        ))]
    })
}

/// The watches of the caller TLS files.
fn tls(assembly: &Assembly) -> Group {
    Group::start(|stop| {
        let Some(tls) = &assembly.caller_tls else {
            return Vec::new();
        };
        (tls.paths().into_iter())
            .map(|path| {
                let tls = tls.clone();
                tokio::spawn(files::watch(
                    path,
                    files::POLL_INTERVAL,
                    move |_| tls.reload(),
                    stop.stopped(),
                ))
            })
            .collect()
    })
}

/// The limiter's cleanup, at the interval in force.
fn cleanup(assembly: &Assembly) -> Group {
    Group::start(|stop| {
        vec![tokio::spawn(rate_limit::clean_periodically(
            assembly.parts.limiter.clone(),
            assembly.config.rate_limit.cleanup_interval,
            assembly.parts.metrics.clone(),
            stop.stopped(),
        ))]
    })
}

/// A changed secret key file: the next UserSig uses the new key at once. An empty or
/// unreadable file keeps the old key (and says why, never what it holds).
fn reload_secret(path: &Path, credentials: &Credentials, metrics: &Metrics) {
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
