//! The gateway's metric families, on a registry of its own.
//!
//! Label values are bounded: `api` comes from the allow-list (or a capped set under `"*"`),
//! `error_code` is capped at [`MAX_ERROR_CODES`] distinct codes, then `other`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::envelope::Reason;

/// Distinct upstream ErrorCodes kept as their own label value.
pub const MAX_ERROR_CODES: usize = 100;

/// Whole request as the caller sees it, and the upstream round trip: Tencent answers in tens
/// to thousands of milliseconds and gives up after 3 s; the gateway waits up to its timeout.
const ROUND_TRIP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
];
/// The gateway's own work per request: microseconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
];

/// Callers per coalesced call: one (sent alone) to thousands (a live stream's likes).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// How a request ended, as the `outcome` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UpstreamError,
    Rejected(Reason),
    /// The caller went away before its answer was ready.
    ClientClosed,
    /// The gateway itself cut the request: the shutdown grace period was over.
    Shutdown,
}

impl Outcome {
    /// Every outcome, in [`Outcome::index`] order.
    pub fn all() -> impl Iterator<Item = Outcome> {
        [Outcome::Ok, Outcome::UpstreamError, Outcome::ClientClosed]
            .into_iter()
            .chain(Reason::ALL.into_iter().map(Outcome::Rejected))
            .chain([Outcome::Shutdown])
    }

    pub fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::UpstreamError => 1,
            Outcome::ClientClosed => 2,
            Outcome::Rejected(reason) => 3 + reason as usize,
            Outcome::Shutdown => 3 + Reason::ALL.len(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Rejected(reason) => reason.as_str(),
            Outcome::ClientClosed => "client_closed",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// The series of one API, resolved once: recording a request is then a few atomic adds, with
/// no label hashing or registry lock.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Indexed by [`Outcome::index`].
    outcomes: Vec<prometheus::IntCounter>,
    duration: prometheus::Histogram,
    overhead: prometheus::Histogram,
    upstream_duration: prometheus::Histogram,
    rate_limited_group: prometheus::IntCounter,
    rate_limited_app: prometheus::IntCounter,
    /// Made on first use (shadow mode only): group, app.
    shadow: std::sync::OnceLock<(prometheus::IntCounter, prometheus::IntCounter)>,
    /// Made on first use, so that an API that never coalesces, or never hears back, shows no
    /// empty series.
    coalesce: std::sync::OnceLock<(prometheus::Histogram, prometheus::IntCounter)>,
    upstream_ok: std::sync::OnceLock<prometheus::IntCounter>,
    name: Box<str>,
    metrics: Metrics,
}

impl ApiMetrics {
    /// One finished request.
    pub fn request(&self, outcome: Outcome, seconds: f64, overhead_seconds: f64) {
        self.outcomes[outcome.index()].inc();
        self.duration.observe(seconds);
        self.overhead.observe(overhead_seconds);
    }

    /// A request that ended without an answer (`ClientClosed` or `Shutdown`): counted, timed,
    /// but not in the overhead histogram (how much of its time was the upstream's is unknown).
    pub fn unanswered(&self, outcome: Outcome, seconds: f64) {
        self.outcomes[outcome.index()].inc();
        self.duration.observe(seconds);
    }

    pub fn upstream_duration(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }

    pub fn rate_limited(&self, scope: &str) {
        match scope {
            "group" => self.rate_limited_group.inc(),
            _ => self.rate_limited_app.inc(),
        }
    }

    /// A request the limits would have refused, forwarded in shadow mode.
    pub fn rate_limit_shadow(&self, scope: &str) {
        let (group, app) = self.shadow.get_or_init(|| {
            let family = &self.metrics.0.api.rate_limit_shadow;
            (
                family.with_label_values(&[&*self.name, "group"]),
                family.with_label_values(&[&*self.name, "app"]),
            )
        });
        match scope {
            "group" => group.inc(),
            _ => app.inc(),
        }
    }

    /// Callers answered from a call sent for others (reads answered from a batch's answer).
    pub fn answered_from_shared(&self, callers: u64) {
        self.coalesce_series().1.inc_by(callers);
    }

    fn coalesce_series(&self) -> &(prometheus::Histogram, prometheus::IntCounter) {
        self.coalesce.get_or_init(|| {
            let m = &self.metrics.0;
            (
                m.api.batch_size.with_label_values(&[&*self.name]),
                m.api.coalesced.with_label_values(&[&*self.name]),
            )
        })
    }

    /// One call sent for `callers` coalescing callers.
    /// One call sent for `callers` callers whose answers are counted later, once they are
    /// answered from it ([`Self::answered_from_shared`]): a merged call Tencent refuses whole
    /// answers no one, its callers are answered from the parts sent again.
    pub fn batch_sent(&self, callers: usize) {
        self.coalesce_series().0.observe(callers as f64);
    }

    pub fn coalesce_call(&self, callers: usize) {
        let (size, coalesced) = self.coalesce_series();
        size.observe(callers as f64);
        if callers > 1 {
            coalesced.inc_by(callers as u64);
        }
    }

    /// The ErrorCode of one upstream answer (`None`: unreadable). 0, by far the most common,
    /// is a resolved series; the others go through the bounded label set.
    pub fn upstream_error_code(&self, error_code: Option<i64>) {
        if error_code == Some(0) {
            self.upstream_ok
                .get_or_init(|| {
                    let m = &self.metrics.0;
                    m.api
                        .upstream_responses
                        .with_label_values(&[&*self.name, &m.error_codes.label(0)])
                })
                .inc();
        } else {
            self.metrics.upstream_error_code(&self.name, error_code);
        }
    }
}

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    api: ApiFamilies,
    upstream: UpstreamFamilies,
    gateway: GatewayFamilies,
    error_codes: BoundedLabels,
}

/// The families labelled by API.
struct ApiFamilies {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_responses: IntCounterVec,
    rate_limited: IntCounterVec,
    rate_limit_shadow: IntCounterVec,
    overhead: HistogramVec,
    coalesced: IntCounterVec,
    batch_size: HistogramVec,
}

/// The upstream's slots, second attempts and circuit.
struct UpstreamFamilies {
    upstream_in_flight: IntGauge,
    upstream_waiting: IntGauge,
    upstream_retries: IntCounterVec,
    circuit_open: IntGauge,
}

/// The gateway's own state: credentials, limiter, connections, log.
struct GatewayFamilies {
    usersig_expiry: IntGauge,
    usersig_renewals: IntCounterVec,
    secret_key_loaded: IntGauge,
    tracked_groups: IntGauge,
    caller_connections: IntGauge,
    connections_refused: prometheus::IntCounter,
    /// Brought up to [`crate::logging::dropped_lines`] at each scrape, under the lock (two
    /// scrapes at once must not both add the same lines).
    log_lines_dropped: std::sync::Mutex<prometheus::IntCounter>,
    trace_spans_dropped: prometheus::IntCounter,
    /// Registered on first use: it exists only with caller authentication.
    caller_tokens_loaded: std::sync::OnceLock<IntGauge>,
    config: ConfigFamilies,
}

/// The config file's reloads.
struct ConfigFamilies {
    reloads: IntCounterVec,
    restart_pending: IntGauge,
    last_success: IntGauge,
    last_refused: IntGauge,
}

impl ConfigFamilies {
    fn new(r: &Registry) -> Self {
        let reloads = counter_of(
            r,
            "chat_gateway_config_reloads_total",
            "Config file reloads (SIGHUP or a changed file), by result: applied, or refused (the file has problems; the running config stays).",
            "result",
            &["applied", "refused"],
        );
        ConfigFamilies {
            reloads,
            restart_pending: register(r, IntGauge::new(
                "chat_gateway_config_restart_pending",
                "1 while the config file changes a key that takes effect only at a restart (the log names it); 0 once file and running gateway agree.",
            )),
            last_success: register(r, IntGauge::new(
                "chat_gateway_config_last_reload_success_timestamp_seconds",
                "When the running config was last loaded, at start or by a reload (Unix seconds).",
            )),
            last_refused: register(r, IntGauge::new(
                "chat_gateway_config_last_reload_refused_timestamp_seconds",
                "When a config file was last refused (Unix seconds; 0: never). Later than the last success: the file in place is not in force.",
            )),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Registers a metric. The definitions are constants: a failure here is a programming error
/// caught by every test.
fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

/// A counter with one label, registered, its series for each of `values` shown at 0 from
/// the start (so that dashboards and alerts see them before the first event).
fn counter_of(r: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let counter = register(r, counter(name, help, &[label]));
    for value in values {
        counter.with_label_values(&[value]);
    }
    counter
}

/// A histogram labelled by API.
fn histogram(name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["api"],
    )
}

/// Brings a counter up to `total`, a count kept elsewhere (never down).
fn catch_up(counter: &prometheus::IntCounter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}

impl ApiFamilies {
    fn new(r: &Registry) -> Self {
        ApiFamilies {
            requests: register(r, counter(
                "chat_gateway_requests_total",
                "Requests answered, by API and outcome (ok, upstream_error or the rejection reason).",
                &["api", "outcome"],
            )),
            request_duration: register(r, histogram(
                "chat_gateway_request_duration_seconds",
                "Time from the request's arrival to its answer, as the caller sees it.",
                ROUND_TRIP_BUCKETS,
            )),
            upstream_duration: register(r, histogram(
                "chat_gateway_upstream_duration_seconds",
                "Round trip to Tencent (connect, send, read the answer).",
                ROUND_TRIP_BUCKETS,
            )),
            upstream_responses: register(r, counter(
                "chat_gateway_upstream_responses_total",
                "Answers from Tencent by the ErrorCode in their body (unparsable, or other past the cap).",
                &["api", "error_code"],
            )),
            rate_limited: register(r, counter(
                "chat_gateway_rate_limited_total",
                "Requests refused by the gateway's rate limits, by scope (group or app).",
                &["api", "scope"],
            )),
            rate_limit_shadow: register(r, counter(
                "chat_gateway_rate_limit_shadow_total",
                "Requests the rate limits would have refused, forwarded in shadow mode, by scope (group or app).",
                &["api", "scope"],
            )),
            overhead: register(r, histogram(
                "chat_gateway_overhead_seconds",
                "Time spent in the gateway itself, excluding the upstream round trip.",
                OVERHEAD_BUCKETS,
            )),
            coalesced: register(r, counter(
                "chat_gateway_coalesced_requests_total",
                "Callers answered from an upstream call they shared with others (coalescing).",
                &["api"],
            )),
            batch_size: register(r, histogram(
                "chat_gateway_coalesce_batch_size",
                "Callers per upstream call sent by the coalescing layer (1: sent alone).",
                BATCH_BUCKETS,
            )),
        }
    }
}

impl UpstreamFamilies {
    fn new(r: &Registry) -> Self {
        let upstream_retries = counter_of(
            r,
            "chat_gateway_upstream_retries_total",
            "Second attempts and failovers, by reason: connect_failover (primary unreachable, sent to the backup), usersig_expired (70001: renewed and resent), circuit_open (sent straight to the backup).",
            "reason",
            &["connect_failover", "usersig_expired", "circuit_open"],
        );
        UpstreamFamilies {
            upstream_in_flight: register(r, IntGauge::new(
                "chat_gateway_upstream_requests_in_flight",
                "Requests sent to Tencent and not yet answered.",
            )),
            upstream_waiting: register(r, IntGauge::new(
                "chat_gateway_upstream_requests_waiting",
                "Requests waiting for a free upstream slot (upstream.max_in_flight are in flight).",
            )),
            upstream_retries,
            circuit_open: register(r, IntGauge::new(
                "chat_gateway_upstream_circuit_open",
                "1 while requests skip the primary host after repeated connect failures.",
            )),
        }
    }
}

impl GatewayFamilies {
    fn new(r: &Registry) -> Self {
        let usersig_renewals = counter_of(
            r,
            "chat_gateway_usersig_renewals_total",
            "Renewals of the admin UserSig, by result.",
            "result",
            &["ok", "error"],
        );
        let secret_key_loaded = register(
            r,
            IntGauge::new(
                "chat_gateway_secret_key_loaded",
                "1 while the secret key in use is the one on disk, 0 after a failed reload.",
            ),
        );
        secret_key_loaded.set(1);
        GatewayFamilies {
            usersig_expiry: register(r, IntGauge::new(
                "chat_gateway_usersig_expiry_timestamp_seconds",
                "When the current admin UserSig expires (Unix seconds).",
            )),
            usersig_renewals,
            secret_key_loaded,
            tracked_groups: register(r, IntGauge::new(
                "chat_gateway_rate_limit_tracked_groups",
                "GroupIds whose rate-limit state is kept (quiet ones are forgotten at each cleanup).",
            )),
            caller_connections: register(r, IntGauge::new(
                "chat_gateway_caller_connections",
                "Caller connections open now (at most server.max_connections).",
            )),
            connections_refused: register(r, prometheus::IntCounter::new(
                "chat_gateway_connections_refused_total",
                "Caller connections closed at once because server.max_connections were open.",
            )),
            log_lines_dropped: std::sync::Mutex::new(register(r, prometheus::IntCounter::new(
                "chat_gateway_log_lines_dropped_total",
                "Log lines dropped because stderr did not keep up (requests never wait on the log).",
            ))),
            trace_spans_dropped: register(r, prometheus::IntCounter::new(
                "chat_gateway_trace_spans_dropped_total",
                "Trace spans lost: the export queue was full, or the collector failed or was too slow.",
            )),
            caller_tokens_loaded: std::sync::OnceLock::new(),
            config: ConfigFamilies::new(r),
        }
    }
}

impl Metrics {
    /// A gauge that exists only with some settings (the shared rate-limit backend's).
    pub fn register_gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric definition");
        // Registered twice only by a second limiter on one registry: the first one stays.
        let _ = self.0.registry.register(Box::new(g.clone()));
        g
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("chat_gateway_build_info", "The running version; always 1."),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        Metrics(Arc::new(Inner {
            api: ApiFamilies::new(&registry),
            upstream: UpstreamFamilies::new(&registry),
            gateway: GatewayFamilies::new(&registry),
            registry,
            error_codes: BoundedLabels::new(MAX_ERROR_CODES),
        }))
    }

    /// Resolves the series of one API (see [`crate::api::Api::metrics`], which caches them).
    pub fn api_metrics(&self, api: &str) -> ApiMetrics {
        let m = &self.0;
        ApiMetrics {
            outcomes: Outcome::all()
                .map(|o| m.api.requests.with_label_values(&[api, o.as_str()]))
                .collect(),
            duration: m.api.request_duration.with_label_values(&[api]),
            overhead: m.api.overhead.with_label_values(&[api]),
            upstream_duration: m.api.upstream_duration.with_label_values(&[api]),
            rate_limited_group: m.api.rate_limited.with_label_values(&[api, "group"]),
            rate_limited_app: m.api.rate_limited.with_label_values(&[api, "app"]),
            shadow: std::sync::OnceLock::new(),
            coalesce: std::sync::OnceLock::new(),
            upstream_ok: std::sync::OnceLock::new(),
            name: api.into(),
            metrics: self.clone(),
        }
    }

    /// The ErrorCode of one upstream answer (`None`: unreadable).
    pub fn upstream_error_code(&self, api: &str, error_code: Option<i64>) {
        let m = &self.0;
        let label = match error_code {
            Some(code) => m.error_codes.label(code),
            None => Arc::from("unparsable"),
        };
        m.api
            .upstream_responses
            .with_label_values(&[api, &label])
            .inc();
    }

    pub fn trace_spans_dropped(&self) -> &prometheus::IntCounter {
        &self.0.gateway.trace_spans_dropped
    }

    pub fn caller_connections(&self) -> &IntGauge {
        &self.0.gateway.caller_connections
    }

    pub fn connections_refused(&self) -> &prometheus::IntCounter {
        &self.0.gateway.connections_refused
    }

    /// How many tokens the tokens file gave at its last read: 0 when it was empty, missing or
    /// unreadable (the previous tokens then stay in force, which an alert must tell).
    pub fn caller_tokens_loaded(&self, count: usize) {
        let gauge = self.0.gateway.caller_tokens_loaded.get_or_init(|| {
            register(&self.0.registry, IntGauge::new(
                "chat_gateway_caller_tokens_loaded",
                "Tokens read from auth.tokens_file at its last change; 0 when it could not be used (the previous tokens stay in force).",
            ))
        });
        gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn upstream_in_flight(&self) -> &IntGauge {
        &self.0.upstream.upstream_in_flight
    }

    pub fn upstream_waiting(&self) -> &IntGauge {
        &self.0.upstream.upstream_waiting
    }

    pub fn usersig_renewed(&self, expires_at: u64) {
        self.0.gateway.usersig_expiry.set(expires_at as i64);
        self.0
            .gateway
            .usersig_renewals
            .with_label_values(&["ok"])
            .inc();
    }

    pub fn usersig_renewal_failed(&self) {
        self.0
            .gateway
            .usersig_renewals
            .with_label_values(&["error"])
            .inc();
    }

    pub fn tracked_groups(&self, n: usize) {
        self.0.gateway.tracked_groups.set(n as i64);
    }

    pub fn upstream_retry(&self, reason: &str) {
        self.0
            .upstream
            .upstream_retries
            .with_label_values(&[reason])
            .inc();
    }

    pub fn circuit_open(&self, open: bool) {
        self.0.upstream.circuit_open.set(i64::from(open));
    }

    /// The running config was loaded (at start, or by a reload that was applied).
    pub fn config_loaded(&self, unix_secs: u64) {
        let config = &self.0.gateway.config;
        config
            .last_success
            .set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
    }

    /// A reload was applied or refused, at `unix_secs`.
    pub fn config_reload(&self, applied: bool, unix_secs: u64) {
        let config = &self.0.gateway.config;
        let result = if applied { "applied" } else { "refused" };
        config.reloads.with_label_values(&[result]).inc();
        let at = i64::try_from(unix_secs).unwrap_or(i64::MAX);
        if applied {
            config.last_success.set(at);
        } else {
            config.last_refused.set(at);
        }
    }

    pub fn config_restart_pending(&self, pending: bool) {
        self.0
            .gateway
            .config
            .restart_pending
            .set(i64::from(pending));
    }

    pub fn secret_key_loaded(&self, loaded: bool) {
        self.0.gateway.secret_key_loaded.set(i64::from(loaded));
    }

    /// The Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        if let Ok(counter) = self.0.gateway.log_lines_dropped.lock() {
            catch_up(&counter, crate::logging::dropped_lines());
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.0.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }
}

/// A label set that keeps its first `cap` values and maps the rest to `other`.
pub struct BoundedLabels {
    cap: usize,
    seen: RwLock<HashMap<i64, Arc<str>>>,
}

impl BoundedLabels {
    pub fn new(cap: usize) -> Self {
        BoundedLabels {
            cap,
            seen: RwLock::new(HashMap::new()),
        }
    }

    pub fn label(&self, code: i64) -> Arc<str> {
        if let Ok(seen) = self.seen.read() {
            if let Some(label) = seen.get(&code) {
                return label.clone();
            }
        }
        let Ok(mut seen) = self.seen.write() else {
            return Arc::from("other");
        };
        let len = seen.len();
        if let Some(label) = seen.get(&code) {
            return label.clone();
        }
        if len >= self.cap {
            return Arc::from("other");
        }
        let label: Arc<str> = Arc::from(code.to_string());
        seen.insert(code, label.clone());
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        String::from_utf8(m.render()).expect("utf8")
    }

    #[test]
    fn a_counter_kept_elsewhere_is_caught_up_never_down() {
        let c = prometheus::IntCounter::new("c", "c").expect("counter");
        catch_up(&c, 5);
        catch_up(&c, 5);
        assert_eq!(c.get(), 5, "the same total twice counts once");
        catch_up(&c, 3);
        assert_eq!(c.get(), 5, "never down");
        catch_up(&c, 9);
        assert_eq!(c.get(), 9);
    }

    #[test]
    fn dropped_log_lines_are_on_every_scrape() {
        assert!(scrape(&Metrics::new())
            .lines()
            .any(|l| l.starts_with("chat_gateway_log_lines_dropped_total ")));
    }

    #[test]
    fn error_codes_are_capped() {
        let m = Metrics::new();
        for code in 0..200 {
            m.upstream_error_code("a/b", Some(code));
        }
        m.upstream_error_code("a/b", None);
        let text = scrape(&m);
        let values: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("chat_gateway_upstream_responses_total{"))
            .filter_map(|l| l.split("error_code=\"").nth(1))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(values.len(), 102, "{values:?}");
        assert!(values.contains("other"));
        assert!(values.contains("unparsable"));
        assert!(values.contains("99"));
        assert!(!values.contains("100"));
    }

    #[test]
    fn contract_families_exist() {
        let m = Metrics::new();
        let api = m.api_metrics("a/b");
        api.request(Outcome::Ok, 0.1, 0.00001);
        api.upstream_duration(0.1);
        api.rate_limited("group");
        api.upstream_error_code(Some(0));
        api.coalesce_call(3);
        let text = scrape(&m);
        for name in [
            "chat_gateway_requests_total{api=\"a/b\",outcome=\"ok\"} 1",
            "chat_gateway_request_duration_seconds_bucket",
            "chat_gateway_upstream_duration_seconds_bucket",
            "chat_gateway_upstream_responses_total{api=\"a/b\",error_code=\"0\"} 1",
            "chat_gateway_rate_limited_total{api=\"a/b\",scope=\"group\"} 1",
            "chat_gateway_overhead_seconds_bucket",
            "chat_gateway_upstream_requests_in_flight 0",
            "chat_gateway_upstream_requests_waiting 0",
            "chat_gateway_usersig_expiry_timestamp_seconds",
            "chat_gateway_usersig_renewals_total{result=\"ok\"}",
            "chat_gateway_secret_key_loaded 1",
            "chat_gateway_build_info{version=",
            "chat_gateway_coalesced_requests_total{api=\"a/b\"} 3",
            "chat_gateway_coalesce_batch_size_bucket{api=\"a/b\",le=\"5\"} 1",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
