//! Notices when a file changes, by polling its metadata (following symlinks). Polling catches
//! Kubernetes' way of updating a mounted Secret: the `..data` symlink is swapped, so the path
//! resolves to a new inode, which no event on the old file would report.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often watched files are looked at: one `stat` a second costs nothing.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a file's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Calls `on_change` whenever the file at `path` looks different from the last time, until
/// `stop` resolves. A file that disappears counts as a change too (the callback reports it).
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    mut on_change: impl FnMut(&Path) + Send,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut last = stamp(&path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {
                let now = stamp(&path);
                if now != last {
                    last = now;
                    on_change(&path);
                }
            }
        }
    }
}
