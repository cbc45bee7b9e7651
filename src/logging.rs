//! Log output: tracing events, written to stderr by a thread of their own.
//!
//! A request never waits on the log: lines are queued for the log thread, which writes them in
//! batches (one write carries many lines under load). When stderr cannot keep up (a stuck log
//! shipper) and the queue is full, lines are dropped rather than stalling requests; the count
//! is `chat_gateway_log_lines_dropped_total`.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// What the log thread writes to stderr at once, at most.
const BUFFER_BYTES: usize = 64 * 1024;
/// Lines queued for the log thread, at most: half a second of access log at 30 000 requests a
/// second, so a log reader's hiccup loses nothing. The
/// queue's slots are allocated and touched up front (~32 bytes each), so this is resident
/// memory: the crate's default (128 000) would add 4 MB to every gateway.
const QUEUED_LINES: usize = 16 * 1024;

/// The line format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber (level from `RUST_LOG`, default `info`). Keep the guard until
/// the process ends: dropping it flushes what is queued (waiting a second at most).
pub fn init(format: Format) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .thread_name("chat-gateway-log")
        .buffered_lines_limit(QUEUED_LINES)
        .finish(std::io::BufWriter::with_capacity(
            BUFFER_BYTES,
            std::io::stderr(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        Format::Human => builder.init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Log lines dropped so far because stderr did not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}
