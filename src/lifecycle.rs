//! Where the process is in its life: serving, draining (readiness off, still serving), closing
//! (new requests get the `draining` answer).

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    closing: AtomicBool,
    cutting: AtomicBool,
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle::default()
    }

    /// The shutdown signal arrived: `/readyz` turns 503 at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The drain delay is over: stop taking new work.
    pub fn start_closing(&self) {
        self.draining.store(true, Ordering::Release);
        self.closing.store(true, Ordering::Release);
    }

    /// The shutdown grace is over: what is still running is cut by the gateway itself.
    pub fn start_cutting(&self) {
        self.cutting.store(true, Ordering::Release);
    }

    pub fn is_cutting(&self) -> bool {
        self.cutting.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}
