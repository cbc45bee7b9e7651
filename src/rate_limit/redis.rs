//! The fleet-wide limiter: the same GCRA as [`LocalLimiter`], kept in Redis so that every
//! gateway of an app spends one budget.
//!
//! One check is one `EVALSHA` of `gcra.lua` (group then app, atomic, Redis server time).
//! What Redis says about when a saturated key can pass again is kept ([`Refused`]): until
//! then the gateway refuses such calls itself, and then one caller asks, so a flood of refused
//! callers does not become a flood of Redis commands. While Redis is slow or down a
//! [`LocalLimiter`](super::LocalLimiter) at this gateway's share of the numbers decides alone
//! (`1 / fleet size`, [`Fleet`]); a background task probes Redis (with the check itself, on a
//! key that holds nothing) and puts it back in use as soon as it works, and announces the
//! gateway while Redis answers, which is how the fleet's size is learned.
//! A connection that stays silent without closing is replaced ([`SILENT_CONNECTION_LIMIT`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::IntGauge;
use redis::{ErrorKind, RedisError};

use super::fleet::{Fleet, ANNOUNCE_INTERVAL};
use super::redis_auth::{refusal, RedisRefused};
use super::redis_budget::Budget;
pub use super::redis_conn::RedisSetupError;
use super::redis_conn::{Connector, RedisConn, CONNECT_TIMEOUT};
use super::refused::Learned;
use super::{BoxFuture, Decision, RateLimiter, Refusal, Scope, SetupError, StartFuture};
use crate::api::Api;
use crate::config::{RateLimitConfig, RedisBackend, Topology};
use crate::metrics::Metrics;
use futures_util::future::Shared as SharedFuture;

/// How often a down Redis is probed.
pub const DOWN_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A Redis that answered no check for this long is probed, so that an idle gateway's
/// `backend_up` still tells the truth.
pub const IDLE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A connection on which every check and probe has timed out for this long, with no answer
/// between, is dropped and the next probe opens a new one: it may be silent for good (a
/// half-open TCP connection, a stalled proxy) while Redis answers new connections at once, and
/// since each check is cut at `redis_timeout` the client's own timeout never fires. A slow
/// moment of Redis shorter than this costs no new connection, and a struggling Redis gets at
/// most about one new connection per this interval from each gateway.
pub const SILENT_CONNECTION_LIMIT: Duration = Duration::from_secs(1);

/// The check: see the script.
const GCRA: &str = include_str!("gcra.lua");

/// The Redis-backed limiter.
pub struct RedisLimiter {
    links: Arc<Links>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.links.current.load();
        f.debug_struct("RedisLimiter")
            .field("url", &shared.connector.shown)
            .field("up", &shared.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The Redis in use, and the one that new connection settings name (a reloaded config): it is
/// connected by the background task while the one in use still serves, then takes over.
struct Links {
    current: ArcSwap<Shared>,
    next: ArcSwapOption<Shared>,
    changed: tokio::sync::Notify,
}

/// What one connection's settings are made from: when a reloaded config changes them, a new
/// connection is made.
type LinkSettings = (RedisBackend, Topology);

struct Shared {
    link: LinkSettings,
    /// Makes the connections, by `redis_mode`; says how the Redis is shown in logs, and the
    /// password to scrub from error texts before they are logged.
    connector: Connector,
    conn: ArcSwapOption<RedisConn>,
    up: AtomicBool,
    /// The kinds of this outage logged so far (bits of [`OutageKind`]): each is said once, so
    /// that refused credentials found after a lost connection are named too.
    said_down: AtomicU8,
    /// Wakes the background task: Redis just went out of use, or its connection was dropped.
    probe_now: tokio::sync::Notify,
    /// Milliseconds since `epoch` of the last answer from Redis.
    last_answer_ms: AtomicU64,
    /// 1 + milliseconds since `epoch` of the first of the timeouts since Redis last answered on
    /// the connection; 0 while it answers.
    silent_since_ms: AtomicU64,
    epoch: Instant,
    timeout: Duration,
    script: redis::Script,
    /// The budgets in force: replaced whole by a reloaded config.
    budget: ArcSwap<Budget>,
    gauge: IntGauge,
    /// The fleet's size, and the local limiter that decides while Redis is not in use; kept
    /// when the connection settings change.
    fleet: Arc<Fleet>,
}

impl RedisLimiter {
    pub fn new(
        config: &RateLimitConfig,
        backend: &RedisBackend,
        sdkappid: u64,
        metrics: &Metrics,
    ) -> Result<Self, RedisSetupError> {
        let budget = Arc::new(Budget::new(config, sdkappid, backend.timeout));
        let gauge = metrics.register_gauge(
            "chat_gateway_rate_limit_backend_up",
            "1 while the shared rate-limit store (Redis) answers, 0 while the gateway limits locally.",
        );
        gauge.set(0);
        let fleet = Arc::new(Fleet::new(config, &budget.prefix, metrics));
        let shared = Shared::new(config, backend, budget, fleet, gauge)?;
        Ok(RedisLimiter {
            links: Arc::new(Links {
                current: ArcSwap::from_pointee(shared),
                next: ArcSwapOption::empty(),
                changed: tokio::sync::Notify::new(),
            }),
        })
    }

    fn shared(&self) -> Arc<Shared> {
        self.links.current.load_full()
    }

    /// The fleet size whose share the local fallback keeps.
    pub fn fleet_size(&self) -> u32 {
        self.shared().fleet.size()
    }

    /// Announces this gateway in Redis and learns the fleet's size, as the background task
    /// does every [`ANNOUNCE_INTERVAL`] while Redis is in use; nothing when it is not.
    pub async fn announce(&self) {
        self.shared().announce().await;
    }

    /// True while checks go to Redis.
    pub fn is_up(&self) -> bool {
        self.shared().up.load(Ordering::Relaxed)
    }

    /// One round of what the background task does (connect, probe with the check script);
    /// true when Redis is in use after it.
    pub async fn probe(&self) -> bool {
        self.shared().probe().await;
        self.is_up()
    }

    /// One check in Redis alone, without the memory of its waits; `None` when Redis is not in
    /// use or did not answer in time.
    /// The first contact, before the gateway serves: an error when Redis refuses the
    /// gateway's credentials or certificate. A Redis merely unreachable is no error: the
    /// gateway limits locally and the background task keeps trying.
    pub async fn reach(&self) -> Result<(), RedisRefused> {
        let shared = self.shared();
        match shared.try_probe().await {
            Ok(()) => shared.answered(),
            Err(why) => {
                if let Outage::Error(e) = &why {
                    if let Some(refused) = refusal(e, &shared.connector.refused_at()) {
                        return Err(refused);
                    }
                }
                shared.down(&why);
            }
        }
        Ok(())
    }

    pub async fn check_shared(
        &self,
        api: &Api,
        group: Option<&str>,
    ) -> Option<Result<(), Refusal>> {
        let shared = self.shared();
        let conn = shared.conn.load_full()?;
        let budget = shared.budget.load_full();
        shared
            .ask(&conn, &budget, &api.name, group)
            .await
            .map(Learned::result)
    }
}

/// The script's answer: {0, group_next, app_next}, or {1 | 2, wait}, in microseconds.
fn decode(answer: &[i64]) -> Option<Learned> {
    let micros = |i: usize| -> Option<Duration> {
        Some(Duration::from_micros(u64::try_from(*answer.get(i)?).ok()?))
    };
    let refused = |scope| {
        Some(Learned::Refused(Refusal {
            scope,
            retry_after: micros(1)?,
            group_spent: false,
        }))
    };
    match answer.first()? {
        0 => Some(Learned::Passed {
            group_next: micros(1)?,
            app_next: micros(2)?,
        }),
        1 => refused(Scope::Group),
        2 => refused(Scope::App),
        _ => None,
    }
}

impl Shared {
    fn new(
        config: &RateLimitConfig,
        backend: &RedisBackend,
        budget: Arc<Budget>,
        fleet: Arc<Fleet>,
        gauge: IntGauge,
    ) -> Result<Self, RedisSetupError> {
        Ok(Shared {
            link: (backend.clone(), config.redis_topology()),
            connector: Connector::new(config, backend)?,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            said_down: AtomicU8::new(0),
            probe_now: tokio::sync::Notify::new(),
            last_answer_ms: AtomicU64::new(0),
            silent_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            timeout: backend.timeout,
            script: redis::Script::new(GCRA),
            budget: ArcSwap::new(budget),
            fleet,
            gauge,
        })
    }

    /// What the background task does for this connection until `stop`: probes and
    /// announces, follows the master in sentinel mode, re-reads the password file.
    async fn serve(self: &Arc<Self>, stop: SharedFuture<BoxFuture>) {
        let watch = self.connector.settings.watch_password(stop);
        let watch = async move {
            match watch {
                Some(watch) => watch.await,
                None => std::future::pending().await,
            }
        };
        let follow = async {
            if self.connector.follows_a_master() {
                self.follow_master().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = self.keep_in_use() => {}
            _ = follow => {}
            _ = watch => {}
        }
    }

    /// The first probe of a connection made for new settings: in use at once if it answers.
    async fn first_contact(&self) {
        let limit = CONNECT_TIMEOUT + self.timeout;
        match tokio::time::timeout(limit, self.try_probe()).await {
            Ok(Ok(())) => self.answered(),
            Ok(Err(why)) => self.down(&why),
            Err(_) => self.down(&Outage::Timeout(limit)),
        }
    }

    /// One check in Redis under `budget`; `None` when Redis did not answer in time (or
    /// answered nonsense).
    async fn ask(
        &self,
        conn: &Arc<RedisConn>,
        budget: &Budget,
        api: &str,
        group: Option<&str>,
    ) -> Option<Learned> {
        let keys = budget.keys(api, group);
        match self.run(conn, &keys, &budget.numbers(api, group)).await {
            Ok(learned) => {
                self.answered();
                Some(learned)
            }
            Err(why) => {
                self.down(&why);
                None
            }
        }
    }

    /// Runs the script on `conn` within the timeout, keeping track of a silent connection.
    async fn run(
        &self,
        conn: &Arc<RedisConn>,
        keys: &[String],
        args: &[u64],
    ) -> Result<Learned, Outage> {
        let call = conn.run_script::<Vec<i64>>(&self.script, GCRA, keys, args);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => {
                self.silent_since_ms.store(0, Ordering::Relaxed);
                decode(&answer).ok_or_else(|| Outage::Answer(format!("{answer:?}")))
            }
            Ok(Err(e)) => {
                // An error from Redis itself (not from the socket) is an answer all the same.
                if e.code().is_some() {
                    self.silent_since_ms.store(0, Ordering::Relaxed);
                }
                Err(Outage::Error(e))
            }
            Err(_) => {
                self.timed_out(conn);
                Err(Outage::Timeout(self.timeout))
            }
        }
    }

    /// A call on `conn` timed out: past [`SILENT_CONNECTION_LIMIT`] of timeouts without an
    /// answer, the connection is dropped so that the next probe opens a new one.
    fn timed_out(&self, conn: &Arc<RedisConn>) {
        let now = self.now_ms() + 1;
        let since = match self.silent_since_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(since) => since,
        };
        if Duration::from_millis(now.saturating_sub(since)) < SILENT_CONNECTION_LIMIT {
            return;
        }
        self.renew(conn);
    }

    /// Drops `conn` so that the next probe opens a new one; only this connection: a late
    /// timeout of an old one leaves its replacement alone.
    fn renew(&self, conn: &Arc<RedisConn>) {
        let previous = self.conn.compare_and_swap(conn, None::<Arc<RedisConn>>);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, conn)) {
            self.silent_since_ms.store(0, Ordering::Relaxed);
            self.probe_now.notify_one();
            tracing::debug!(url = %self.connector.shown, "Redis connection silent: opening a new one");
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn answered(&self) {
        self.last_answer_ms.store(self.now_ms(), Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            self.fleet.reached();
            if self.said_down.swap(0, Ordering::Relaxed) != 0 {
                tracing::info!(url = %self.connector.shown, "Redis answers again: rate limits are shared by the fleet again");
            } else {
                tracing::info!(url = %self.connector.shown, "rate limits shared by the fleet through Redis");
            }
        }
    }

    fn down(&self, why: &Outage) {
        if self.up.swap(false, Ordering::Relaxed) {
            // Probe now rather than after the idle interval: Redis is back in use sooner.
            self.probe_now.notify_one();
        }
        self.gauge.set(0);
        let kind = why.kind();
        let said = self.said_down.fetch_or(kind as u8, Ordering::Relaxed);
        if said & kind as u8 != 0 {
            return;
        }
        if said == 0 {
            self.fleet.never_reached();
        }
        let error = self.scrub(why.to_string());
        let url = &self.connector.shown;
        let fleet_size = self.fleet.size();
        match kind {
            OutageKind::Auth => {
                tracing::error!(%url, %error, fleet_size, "Redis refused the gateway's credentials (WRONGPASS/NOAUTH): check rate_limit.redis_username and redis_password_env / redis_password_file (or the user and password of the Redis URL); limiting locally (each gateway alone, at 1/fleet_size of each budget) until Redis accepts them")
            }
            OutageKind::Refused => {
                tracing::error!(%url, %error, fleet_size, "Redis answers but refuses the rate-limit check (EVALSHA of the GCRA script): NOPERM means the URL's user may not run EVALSHA / SCRIPT or touch the {{chat-gateway:<sdkappid>}} keys (see its ACL); MOVED/ASK/CROSSSLOT mean the URL names a Redis Cluster node (set redis_mode = \"cluster\" and list the cluster's nodes in redis_nodes); limiting locally (each gateway alone, at 1/fleet_size of each budget) until the check runs")
            }
            OutageKind::Other => {
                tracing::warn!(%url, %error, fleet_size, "Redis is not answering: limiting locally (each gateway alone, at 1/fleet_size of each budget) until it does")
            }
        }
    }

    fn scrub(&self, mut text: String) -> String {
        let current = self.connector.settings.password();
        for pw in [
            self.connector.password.as_deref(),
            current.as_deref().map(String::as_str),
        ] {
            match pw {
                Some(pw) if !pw.is_empty() && text.contains(pw) => text = text.replace(pw, "***"),
                _ => {}
            }
        }
        text
    }

    /// One round of the background task: connect if need be, then run the check script as a
    /// probe (on a key that holds nothing; it loads the script if Redis lacks it). Only a probe
    /// that the check itself would pass puts Redis in use: a Redis that loads the script but
    /// refuses `EVALSHA` stays down. Returns when to come back.
    async fn probe(&self) -> Duration {
        if self.up.load(Ordering::Relaxed) {
            let quiet = Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.last_answer_ms.load(Ordering::Relaxed)),
            );
            if quiet < IDLE_PROBE_INTERVAL {
                return IDLE_PROBE_INTERVAL - quiet;
            }
        }
        match self.try_probe().await {
            Ok(()) => {
                self.answered();
                IDLE_PROBE_INTERVAL
            }
            Err(why) => {
                self.down(&why);
                DOWN_PROBE_INTERVAL
            }
        }
    }

    /// Connects if need be and runs the probe. A connection whose credentials Redis refuses
    /// is dropped: its client would only try them again when reconnecting, and the next one
    /// takes the password as it is now (the password file may have changed).
    async fn try_probe(&self) -> Result<(), Outage> {
        let conn = self.connection().await?;
        let probe = [format!("{}:probe", self.budget.load().prefix)];
        let why = match self.run(&conn, &probe, &[]).await {
            Ok(_) => return Ok(()),
            Err(why) => why,
        };
        // A cluster master that hangs gives the cluster client no error to learn the new
        // layout from: the next probe's new connection finds the replica that takes over,
        // without waiting for the silence limit.
        if matches!(*conn, RedisConn::Cluster(_)) && !why.is_answer() {
            self.renew(&conn);
        } else if why.kind() == OutageKind::Auth {
            // Not at once: the next probe, a probe interval later.
            self.conn.compare_and_swap(&conn, None::<Arc<RedisConn>>);
        }
        Err(why)
    }

    /// Announces this gateway once [`ANNOUNCE_INTERVAL`] has passed since Redis last took an
    /// announcement (at once after it comes back); returns how long until the next is due.
    /// Never on the request path: only the background task calls it.
    async fn announce_when_due(&self, last: &mut Option<Instant>) -> Duration {
        if last.map_or(true, |at| at.elapsed() >= ANNOUNCE_INTERVAL) {
            self.announce().await;
            if self.up.load(Ordering::Relaxed) {
                *last = Some(Instant::now());
            }
        }
        last.map_or(ANNOUNCE_INTERVAL, |at| {
            ANNOUNCE_INTERVAL.saturating_sub(at.elapsed())
        })
    }

    /// Announces this gateway while Redis is in use (its answer is one from Redis).
    async fn announce(&self) {
        if let Some(conn) = self.conn.load_full() {
            if self.up.load(Ordering::Relaxed) {
                // A lost connection or silence counts as a failed check would: an idle
                // gateway learns of an outage within an interval.
                match tokio::time::timeout(self.timeout, self.fleet.announce(&conn)).await {
                    Ok(Ok(())) => {
                        self.silent_since_ms.store(0, Ordering::Relaxed);
                        self.answered();
                    }
                    Ok(Err(e)) => self.down(&Outage::Error(e)),
                    Err(_) => {
                        self.timed_out(&conn);
                        self.down(&Outage::Timeout(self.timeout));
                    }
                }
            }
        }
    }

    /// Probes and announces, for ever: what the background task does in every mode.
    async fn keep_in_use(&self) {
        let mut announced = None;
        loop {
            let next = self.probe().await;
            let next = next.min(self.announce_when_due(&mut announced).await);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = self.probe_now.notified() => {}
            }
        }
    }

    /// Sentinel mode: asks the sentinels which node is the master every
    /// [`MASTER_POLL_INTERVAL`](super::redis_conn::MASTER_POLL_INTERVAL) and whenever one
    /// announces a switch, and moves the checks to a new master as soon as they name one (the
    /// old one may stay writable for a while: its answers would split the budget).
    async fn follow_master(&self) {
        tokio::select! {
            _ = self.connector.listen() => {}
            _ = self.ask_for_the_master() => {}
        }
    }

    async fn ask_for_the_master(&self) {
        loop {
            self.connector.next_question().await;
            // No connection yet: the probe asks the sentinels when it makes one.
            let Some(current) = self.conn.load_full() else {
                continue;
            };
            let found = tokio::time::timeout(CONNECT_TIMEOUT, self.connector.follow(&current));
            match found.await {
                Ok(Some(Ok(new))) => {
                    let master = new.master().unwrap_or_default();
                    let previous = self.conn.compare_and_swap(&current, Some(Arc::new(new)));
                    if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &current)) {
                        self.silent_since_ms.store(0, Ordering::Relaxed);
                        self.probe_now.notify_one();
                        tracing::info!(url = %self.connector.shown, %master, "the sentinels name a new master: rate-limit checks go to it");
                    }
                }
                Ok(Some(Err(e))) => {
                    let error = self.scrub(e.to_string());
                    tracing::warn!(url = %self.connector.shown, %error, "the sentinels name a new master that does not take a connection yet");
                }
                Ok(None) | Err(_) => {}
            }
        }
    }

    /// The connection in use, or a new one.
    async fn connection(&self) -> Result<Arc<RedisConn>, Outage> {
        if let Some(conn) = self.conn.load_full() {
            return Ok(conn);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect()).await {
            Ok(Ok(conn)) => {
                let conn = Arc::new(conn);
                self.silent_since_ms.store(0, Ordering::Relaxed);
                self.conn.store(Some(conn.clone()));
                Ok(conn)
            }
            Ok(Err(e)) => Err(Outage::Error(e)),
            Err(_) => Err(Outage::Timeout(CONNECT_TIMEOUT)),
        }
    }
}

/// Why Redis is not in use.
#[derive(Debug, thiserror::Error)]
enum Outage {
    #[error("{0}")]
    Error(RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer {0}")]
    Answer(String),
}

/// What an outage's log line says; each a bit of `said_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum OutageKind {
    /// The credentials are wrong.
    Auth = 1,
    /// Redis answers, but will not run the check for this user or on this node.
    Refused = 2,
    Other = 4,
}

impl Outage {
    /// Redis itself answered (an error of its own, or nonsense), as opposed to silence or a
    /// broken connection.
    fn is_answer(&self) -> bool {
        match self {
            Outage::Error(e) => e.code().is_some(),
            Outage::Answer(_) => true,
            Outage::Timeout(_) => false,
        }
    }

    fn kind(&self) -> OutageKind {
        let Outage::Error(e) = self else {
            return OutageKind::Other;
        };
        if e.kind() == ErrorKind::AuthenticationFailed {
            return OutageKind::Auth;
        }
        match e.code() {
            Some("NOAUTH" | "WRONGPASS") => OutageKind::Auth,
            Some("NOPERM" | "MOVED" | "ASK" | "CROSSSLOT") => OutageKind::Refused,
            _ => OutageKind::Other,
        }
    }
}

impl RateLimiter for RedisLimiter {
    fn check(&self, api: &Api, group: Option<&str>) -> Decision {
        let shared = self.links.current.load_full();
        // While Redis is not in use the local limiter decides alone.
        let conn = match shared.conn.load_full() {
            Some(conn) if shared.up.load(Ordering::Relaxed) => conn,
            _ => return Decision::now(shared.fleet.local().check_now(api, group)),
        };
        let budget = shared.budget.load_full();
        if let Some(refusal) = budget.refused.check(&api.name, group, Instant::now()) {
            return Decision::now(Err(refusal));
        }
        let api = api.clone();
        let group = group.map(str::to_string);
        Decision::later(async move {
            match shared
                .ask(&conn, &budget, &api.name, group.as_deref())
                .await
            {
                Some(learned) => {
                    let answered = Instant::now();
                    // Bounded: no wait longer than the budget allows is kept or told.
                    budget
                        .refused
                        .learn(&api.name, group.as_deref(), answered, learned)
                        .result()
                }
                // Redis silent: the local limiter decides, as while Redis is down.
                None => shared.fleet.local().check_now(&api, group.as_deref()),
            }
        })
    }

    fn cleanup(&self) -> usize {
        let shared = self.shared();
        shared.budget.load().refused.cleanup(Instant::now());
        shared.fleet.local().cleanup()
    }

    fn tracked_groups(&self) -> usize {
        self.shared().fleet.local().tracked_groups()
    }

    /// The same Redis under new budgets: the states in Redis convert themselves at their next
    /// check (see the script), the fallback keeps its share of the new budgets over its own
    /// state. New connection settings get a new connection, made in the background while the
    /// one in use serves.
    fn rebudgeted(
        &self,
        config: &RateLimitConfig,
        sdkappid: u64,
    ) -> Result<Option<Arc<dyn RateLimiter>>, SetupError> {
        let links = &self.links;
        let current = links.current.load_full();
        // The backend needs a restart: a config without Redis changes the budgets alone.
        let link: LinkSettings = match config.redis() {
            Some(backend) => (backend, config.redis_topology()),
            None => current.link.clone(),
        };
        let budget = Arc::new(Budget::new(config, sdkappid, link.0.timeout));
        let next = links.next.load_full();
        // Everything that can fail first: a refused reload changes nothing.
        let new_next = match &next {
            _ if link == current.link => None,
            Some(next) if next.link == link => Some(next.clone()),
            _ => Some(Arc::new(Shared::new(
                config,
                &link.0,
                budget.clone(),
                current.fleet.clone(),
                current.gauge.clone(),
            )?)),
        };
        current.fleet.rebudget(config, &budget.prefix);
        current.budget.store(budget.clone());
        if let Some(new_next) = &new_next {
            new_next.budget.store(budget);
        }
        let changed = !matches!((&next, &new_next), (Some(a), Some(b)) if Arc::ptr_eq(a, b));
        links.next.store(new_next);
        if changed {
            links.changed.notify_one();
        }
        Ok(Some(Arc::new(RedisLimiter {
            links: links.clone(),
        })))
    }

    fn start(&self) -> StartFuture<'_> {
        Box::pin(async move {
            self.reach()
                .await
                .map_err(|e| RedisSetupError::Refused(e).into())
        })
    }

    fn background(&self, stop: BoxFuture) -> Option<BoxFuture> {
        let links = self.links.clone();
        let stop = futures_util::FutureExt::shared(stop);
        Some(Box::pin(async move {
            loop {
                let current = links.current.load_full();
                tokio::select! {
                    _ = stop.clone() => return,
                    _ = current.serve(stop.clone()) => return,
                    _ = links.changed.notified() => {}
                }
                let Some(next) = links.next.load_full() else {
                    continue;
                };
                tokio::select! {
                    _ = stop.clone() => return,
                    _ = next.first_contact() => {}
                }
                // Only if no newer settings came meanwhile (they notified again).
                let taken = links.next.compare_and_swap(&next, None::<Arc<Shared>>);
                if taken.as_ref().is_some_and(|t| Arc::ptr_eq(t, &next)) {
                    tracing::info!(url = %next.connector.shown, up = next.up.load(Ordering::Relaxed), "new Redis connection settings in force");
                    links.current.store(next);
                }
            }
        }))
    }
}
