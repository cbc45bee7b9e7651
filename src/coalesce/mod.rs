//! Hot-group coalescing: concurrent `Increase` / `Decrease` calls of one group share one
//! upstream call (and one rate-limit token), identical concurrent reads share one read.
//!
//! [`merge`] is the pure merge, [`group`] the per-group state, [`layer`] the pipeline layer;
//! `writes` drives a batch of increments, `reads` the group's reads, `line` the order in which
//! a group's batches and reads take its tokens, `answer` splits a shared call's answer,
//! `trace` gives a batch's call its spans.

mod answer;
pub mod group;
pub mod layer;
mod line;
pub mod merge;
mod reads;
mod trace;
mod writes;

pub use layer::CoalesceLayer;

/// Marks a merged answer: how many callers shared the upstream call.
pub const COALESCED_HEADER: &str = "x-chat-gateway-coalesced";
