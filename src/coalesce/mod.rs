//! Hot-group coalescing: concurrent `Increase` / `Decrease` calls of one group share one
//! upstream call (and one rate-limit token), identical concurrent reads share one read.
//!
//! [`merge`] is the pure merge, [`group`] the per-group state, [`layer`] the pipeline layer
//! that forms, waits for, sends and answers batches.

pub mod group;
pub mod layer;
pub mod merge;

pub use layer::CoalesceLayer;

/// Marks a merged answer: how many callers shared the upstream call.
pub const COALESCED_HEADER: &str = "x-chat-gateway-coalesced";
