//! The config file of a running gateway, read again on SIGHUP and when its content changes
//! (looked at every [`POLL_INTERVAL`] through symlinks, as Kubernetes swaps the `..data` link
//! of a mounted ConfigMap; a touch that changes no byte is not a reload).
//!
//! The new file is checked as `check-config` checks it, and a file with any problem changes
//! nothing. Otherwise a new [`Assembly`] is made from the running one (keeping the limiter's
//! state, the coalescing batches, the upstream pool) and its pipeline is swapped in at once:
//! each request takes the pipeline in force once, at its start ([`Current`]), so requests in
//! flight finish under the settings they started with, and nothing on the request path locks.
//! What lives outside the pipeline (connection options and bounds, shutdown delays, the
//! background work over the credentials and files) follows through [`Live`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tower::{Service, ServiceExt};

use crate::config::{Config, Problem};
use crate::credentials::unix_now;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::stack::Assembly;

/// How often the file's content is looked at: a change is in force within this plus the time
/// a reload takes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The keys a running gateway keeps until it restarts: the listeners, the runtime, and the
/// limiter's backend. Every other key changes live: the pipeline is swapped, and the rest
/// (connection options and bounds, shutdown delays, credentials, file watches) follows
/// through [`Live`].
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.admin_listen",
    "server.worker_threads",
    "rate_limit.backend",
    "rate_limit.redis_mode",
];

/// Where Redis is, in each mode: kept with `rate_limit.backend` or `rate_limit.redis_mode`.
const REDIS_WHERE: &[&str] = &[
    "rate_limit.redis_url",
    "rate_limit.redis_url_env",
    "rate_limit.redis_nodes",
    "rate_limit.redis_sentinel_master",
];

/// A checked file against the running config: the config to apply (the file, with each key
/// that needs a restart at its running value), and those keys that differ.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub restart_pending: Vec<String>,
}

/// What of `file` applies to a gateway running `running`. Keys are compared by name; a key
/// this version does not have is skipped.
pub fn plan(running: &Config, mut file: Config) -> Plan {
    let mut restart_pending = Vec::new();
    for key in RESTART_ONLY {
        if file.same_at(running, key) == Some(false) {
            file.keep_at(running, key);
            restart_pending.push(key.to_string());
        }
    }
    // Where the running Redis is can only change within the running backend and mode: the
    // file's URL or nodes of another mode wait for the same restart.
    if (restart_pending.iter()).any(|k| k == "rate_limit.backend" || k == "rate_limit.redis_mode") {
        for key in REDIS_WHERE {
            if file.same_at(running, key) == Some(false) {
                file.keep_at(running, key);
                restart_pending.push(key.to_string());
            }
        }
    }
    restart_pending.sort();
    restart_pending.dedup();
    Plan {
        config: file,
        restart_pending,
    }
}

/// The pipeline in force. Each request loads it once (one atomic load, no lock) and runs on
/// its own clone of it to the end.
pub struct Current<S>(Arc<ArcSwap<S>>);

impl<S> Clone for Current<S> {
    fn clone(&self) -> Self {
        Current(self.0.clone())
    }
}

impl<S> Current<S> {
    pub fn new(service: S) -> Self {
        Current(Arc::new(ArcSwap::from_pointee(service)))
    }

    /// From the next request on, `service` serves.
    pub fn swap(&self, service: S) {
        self.0.store(Arc::new(service));
    }
}

impl<S, R> Service<R> for Current<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pipeline taken in `call` is made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        S::clone(&self.0.load()).oneshot(req)
    }
}

/// The SHA-256 of the file's bytes; `None` when it cannot be read.
fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Sha256::digest(bytes).into())
}

/// Nothing changes: each problem is logged as check-config names it, and counted.
fn refuse(metrics: &Metrics, trigger: &str, problems: &[Problem]) {
    for problem in problems {
        tracing::error!(
            key = %problem.key,
            value = problem.value.as_deref().unwrap_or_default(),
            why = %problem.why,
            "config file refused ({trigger}): {problem}; the running config stays"
        );
    }
    metrics.config_reload(false, unix_now());
}

/// Reloads the config file into a [`Current`] pipeline.
pub struct Reloader<S> {
    path: PathBuf,
    running: Assembly,
    current: Current<S>,
    build: fn(&Assembly) -> S,
    /// What follows the applied assembly outside the pipeline.
    live: Arc<Live>,
    /// The content last looked at (applied or refused), so that it is not looked at again.
    seen: Option<[u8; 32]>,
    /// SIGHUP, listened for from the start (its default action would end the process).
    hangup: Option<Signal>,
}

/// Resolves at the next SIGHUP; never when it cannot be listened for.
async fn hangup(signal: &mut Option<Signal>) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

impl<S> Reloader<S> {
    /// A reloader of the file at `path`, which `running` was loaded from; `build` makes the
    /// pipeline that `current` serves; `live` is told each applied assembly. Listens for
    /// SIGHUP from now on (within a runtime).
    pub fn new(
        path: PathBuf,
        running: Assembly,
        current: Current<S>,
        build: fn(&Assembly) -> S,
        live: Arc<Live>,
    ) -> Self {
        let seen = digest(&path);
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; the config file is still reloaded when it changes"))
            .ok();
        Reloader {
            path,
            running,
            current,
            build,
            live,
            seen,
            hangup,
        }
    }

    /// Reloads on SIGHUP and on a change of content, until `stop` resolves.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = hangup(&mut self.hangup) => {
                    self.seen = digest(&self.path);
                    self.reload("SIGHUP");
                }
                _ = ticker.tick() => {
                    let now = digest(&self.path);
                    if now != self.seen {
                        self.seen = now;
                        self.reload("the file changed");
                    }
                }
            }
        }
    }

    /// Checks the file and applies it, or refuses it whole.
    pub fn reload(&mut self, trigger: &str) {
        let metrics = self.running.parts.metrics.clone();
        let file = match crate::preflight::check_file(&self.path) {
            Ok(file) => file,
            Err(problems) => return refuse(&metrics, trigger, &problems),
        };
        let plan = plan(&self.running.config, file);
        let next = match self.running.reloaded(plan.config) {
            Ok(next) => next,
            Err(e) => {
                let problem = Problem {
                    key: String::new(),
                    value: None,
                    why: e.to_string(),
                };
                return refuse(&metrics, trigger, &[problem]);
            }
        };
        self.current.swap((self.build)(&next));
        self.live.apply(&self.running, &next);
        self.running = next;
        for key in &plan.restart_pending {
            tracing::warn!(
                key = %key,
                "config file changes {key}, which takes effect only at a restart: the running value stays"
            );
        }
        metrics.config_restart_pending(!plan.restart_pending.is_empty());
        metrics.config_reload(true, unix_now());
        tracing::info!(
            path = %self.path.display(),
            restart_pending = plan.restart_pending.len(),
            "config reloaded ({trigger})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::MINIMAL as FILE;

    #[test]
    fn restart_only_keys_keep_their_running_value_and_the_rest_applies() {
        let running = Config::parse(FILE).expect("valid");
        let text = format!(
            "{FILE}[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 100\n[rate_limit]\ngroup_burst = 3\n"
        );
        let applied = plan(&running, Config::parse(&text).expect("valid"));
        assert_eq!(applied.restart_pending, ["server.listen"]);
        assert_eq!(applied.config.server.listen, running.server.listen);
        assert_eq!(applied.config.server.max_body_bytes, 100);
        assert_eq!(applied.config.rate_limit.group_burst, 3);
        let same = plan(&running, running.clone());
        assert!(same.restart_pending.is_empty());
    }

    #[test]
    fn only_the_contracts_five_keys_wait_for_a_restart() {
        assert_eq!(
            RESTART_ONLY,
            [
                "server.listen",
                "server.admin_listen",
                "server.worker_threads",
                "rate_limit.backend",
                "rate_limit.redis_mode",
            ]
        );
        let running = Config::parse(FILE).expect("valid");
        let changed = [
            "[server]\nmax_connections = 7\nmax_in_flight = 7\nheader_read_timeout = \"7s\"\n\
             write_timeout = \"7s\"\ndrain_delay = \"7s\"\nshutdown_grace = \"30s\"\n\
             tls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_client_ca_file = \"/ca\"\n",
            "[auth]\ntokens_file = \"/t\"\n",
            "[rate_limit]\ncleanup_interval = \"7s\"\n",
        ]
        .concat();
        let chat = "sdkappid = 1400000007\nidentifier = \"other\"\nusersig_ttl = \"2h\"\n";
        let text = FILE.replacen("sdkappid = 1400000000\n", chat, 1);
        let text = text.replace("secret_key_file", "secret_key_env = \"K\"\n#");
        let file = Config::parse(&format!("{text}{changed}")).expect("valid");
        for key in [
            "server.max_connections",
            "server.tls_client_ca_file",
            "chat.sdkappid",
            "chat.identifier",
            "chat.usersig_ttl",
            "chat.secret_key_file",
            "chat.secret_key_env",
            "auth.tokens_file",
            "rate_limit.cleanup_interval",
        ] {
            assert_eq!(file.same_at(&running, key), Some(false), "{key} changed");
        }
        let applied = plan(&running, file.clone());
        assert!(
            applied.restart_pending.is_empty(),
            "{:?}",
            applied.restart_pending
        );
        assert_eq!(applied.config, file, "all of it applies");
    }

    /// The keys whose comment in the example file says "restart": `section.key` each.
    fn marked_restart(example: &str) -> Vec<String> {
        let (mut section, mut comment, mut marked) = ("", String::new(), Vec::new());
        for line in example.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                (section, comment) = (name, String::new());
                continue;
            }
            let text = line.trim_start_matches("# ");
            let key = text.split_once(" = ").map(|(k, _)| k);
            match key.filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
                Some(key) => {
                    if comment.contains("restart") {
                        marked.push(format!("{section}.{key}"));
                    }
                    comment.clear();
                }
                None => comment.push_str(text),
            }
        }
        marked
    }

    #[test]
    fn the_example_marks_the_restart_only_keys_and_no_other() {
        let example = include_str!("../config/gateway.example.toml");
        let mut marked = marked_restart(example);
        let mut keys: Vec<String> = RESTART_ONLY.iter().map(|k| k.to_string()).collect();
        marked.sort();
        keys.sort();
        assert_eq!(marked, keys);
    }

    #[test]
    fn with_redis_the_budgets_and_the_connection_apply_but_not_the_mode_of_redis() {
        let redis = format!(
            "{FILE}[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n"
        );
        let running = Config::parse(&redis).expect("valid");
        let moved = format!("{FILE}[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:2\"\ngroup_burst = 3\nmode = \"shadow\"\n");
        let applied = plan(&running, Config::parse(&moved).expect("valid"));
        assert!(applied.restart_pending.is_empty());
        let limits = &applied.config.rate_limit;
        assert_eq!(limits.group_burst, 3);
        assert_eq!(limits.mode, crate::config::LimitMode::Shadow);
        assert_eq!(limits.redis_url.as_deref(), Some("redis://127.0.0.1:2"));
        // Another mode: where Redis is waits for the restart with it, the budgets do not.
        let cluster = format!("{FILE}[rate_limit]\nbackend = \"redis\"\ngroup_burst = 4\nredis_mode = \"cluster\"\nredis_nodes = [\"redis://127.0.0.1:3\"]\n");
        let applied = plan(&running, Config::parse(&cluster).expect("valid"));
        assert_eq!(
            applied.restart_pending,
            [
                "rate_limit.redis_mode",
                "rate_limit.redis_nodes",
                "rate_limit.redis_url"
            ]
        );
        let limits = &applied.config.rate_limit;
        assert_eq!(limits.group_burst, 4);
        assert_eq!(limits.redis_url, running.rate_limit.redis_url);
        assert!(limits.redis_nodes.is_empty());
        assert!(limits.redis().is_some());
    }
}
