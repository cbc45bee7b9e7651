//! The primary and backup upstream hosts, and a circuit that keeps requests off a primary that
//! keeps failing to connect.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Request extension: which upstream base (`https://host[:port]`) an attempt goes to; the
/// primary endpoint when absent.
#[derive(Debug, Clone)]
pub struct UpstreamBase(pub Arc<str>);

/// Consecutive connect-class failures on the primary that open the circuit.
pub const CIRCUIT_THRESHOLD: u32 = 5;
/// How long an open circuit sends everything to the backup before the primary is tried again.
pub const CIRCUIT_COOL_DOWN: Duration = Duration::from_secs(30);

/// The primary and backup upstream bases, and the circuit on the primary.
#[derive(Debug)]
pub struct Targets {
    pub(crate) primary: UpstreamBase,
    pub(crate) backup: Option<UpstreamBase>,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the circuit is open; 0 when closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cool_down: Duration,
    metrics: Metrics,
}

impl Targets {
    pub fn new(primary: Arc<str>, backup: Option<Arc<str>>, metrics: Metrics) -> Arc<Self> {
        Self::with_circuit(
            primary,
            backup,
            CIRCUIT_THRESHOLD,
            CIRCUIT_COOL_DOWN,
            metrics,
        )
    }

    pub fn with_circuit(
        primary: Arc<str>,
        backup: Option<Arc<str>>,
        threshold: u32,
        cool_down: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Targets {
            primary: UpstreamBase(primary),
            backup: backup.map(UpstreamBase),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: threshold.max(1),
            cool_down,
            metrics,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether `base` is the primary host (the sign layer's default target).
    pub fn is_primary(&self, base: &UpstreamBase) -> bool {
        Arc::ptr_eq(&base.0, &self.primary.0)
    }

    pub fn primary(&self) -> Arc<str> {
        self.primary.0.clone()
    }

    /// Whether requests currently skip the primary.
    pub fn circuit_open(&self) -> bool {
        self.backup.is_some() && self.open_until_ms.load(Ordering::Acquire) > self.now_ms()
    }

    pub(crate) fn primary_failed_to_connect(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold && self.backup.is_some() {
            let until = self.now_ms() + self.cool_down.as_millis() as u64;
            if self.open_until_ms.swap(until, Ordering::AcqRel) <= self.now_ms() {
                tracing::warn!(
                    failures,
                    cool_down = ?self.cool_down,
                    "primary upstream keeps failing to connect: sending to the backup host"
                );
            }
            self.consecutive_failures.store(0, Ordering::Release);
            self.metrics.circuit_open(true);
        }
    }

    pub(crate) fn primary_answered(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            self.metrics.circuit_open(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(backup: bool, cool_down: Duration) -> Arc<Targets> {
        Targets::with_circuit(
            Arc::from("https://primary"),
            backup.then(|| Arc::from("https://backup")),
            3,
            cool_down,
            Metrics::new(),
        )
    }

    #[test]
    fn opens_after_threshold_and_probes_the_primary_after_the_cool_down() {
        let t = targets(true, Duration::from_millis(200));
        for _ in 0..2 {
            t.primary_failed_to_connect();
        }
        assert!(!t.circuit_open(), "below the threshold");
        t.primary_failed_to_connect();
        assert!(t.circuit_open(), "open at the threshold");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            !t.circuit_open(),
            "the primary is tried again after the cool-down"
        );
        // One failure of the probe does not reopen it: the count started again.
        t.primary_failed_to_connect();
        assert!(!t.circuit_open());
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        assert!(t.circuit_open(), "reopens after the threshold again");
        t.primary_answered();
        assert!(!t.circuit_open(), "a success closes it");
    }

    #[test]
    fn a_success_resets_the_count() {
        let t = targets(true, Duration::from_secs(30));
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        t.primary_answered();
        t.primary_failed_to_connect();
        t.primary_failed_to_connect();
        assert!(!t.circuit_open());
    }

    #[test]
    fn without_a_backup_the_circuit_never_opens() {
        let t = targets(false, Duration::from_secs(30));
        for _ in 0..10 {
            t.primary_failed_to_connect();
        }
        assert!(!t.circuit_open());
    }
}
