//! glibc malloc settings for a request-serving process.
//!
//! By default glibc hands memory back to the kernel whenever more than 128 KiB is free at the
//! top of the heap. Under load every request frees and allocates buffers of a few KiB, so the
//! heap top is trimmed with `brk` and grown again over and over, and each regrowth faults in
//! fresh zeroed pages: about one `brk` every ten requests, and 1-2 µs of CPU per request in the
//! load comparison (`benches/load`). Keeping up to [`TRIM_THRESHOLD`] of freed memory stops
//! that churn; the peak RSS (what a memory limit must allow) does not change, only how quickly
//! the process shrinks after a burst.

/// Freed memory kept at the top of the heap before glibc returns it.
pub const TRIM_THRESHOLD: usize = 16 << 20;
/// Extra memory requested each time the heap grows, so growth comes in fewer steps.
pub const TOP_PAD: usize = 1 << 20;

const _: () = assert!(TRIM_THRESHOLD <= i32::MAX as usize);

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    Applied,
    /// The operator set glibc's own trim settings (`GLIBC_TUNABLES` or `MALLOC_TRIM_THRESHOLD_`):
    /// theirs win.
    LeftToOperator,
    /// Not glibc on Linux: nothing to do.
    NotGlibc,
}

/// True when the environment already tunes glibc's trimming.
pub fn operator_tunes_malloc(tunables: Option<&str>, trim_env: Option<&str>) -> bool {
    trim_env.is_some()
        || tunables.is_some_and(|t| {
            t.split(':').any(|kv| {
                kv.starts_with("glibc.malloc.trim_threshold")
                    || kv.starts_with("glibc.malloc.top_pad")
            })
        })
}

/// Applies [`TRIM_THRESHOLD`] and [`TOP_PAD`] unless the operator tuned malloc already.
pub fn keep_freed_memory() -> Tuning {
    let tunables = std::env::var("GLIBC_TUNABLES").ok();
    let trim_env = std::env::var("MALLOC_TRIM_THRESHOLD_").ok();
    if operator_tunes_malloc(tunables.as_deref(), trim_env.as_deref()) {
        return Tuning::LeftToOperator;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() -> Tuning {
    // SAFETY: mallopt only changes allocator parameters; it is thread-safe and takes plain
    // integers. Both values fit in a c_int.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int);
    }
    Tuning::Applied
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::NotGlibc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_settings_win() {
        assert!(!operator_tunes_malloc(None, None));
        assert!(!operator_tunes_malloc(
            Some("glibc.malloc.tcache_count=0"),
            None
        ));
        assert!(operator_tunes_malloc(
            Some("glibc.malloc.tcache_count=0:glibc.malloc.trim_threshold=1048576"),
            None
        ));
        assert!(operator_tunes_malloc(Some("glibc.malloc.top_pad=0"), None));
        assert!(operator_tunes_malloc(None, Some("131072")));
    }

    /// With the tuning in place, 8 MiB freed at the top of the heap stays with the process;
    /// glibc's default would hand all but 128 KiB of it back at once.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[allow(unsafe_code)]
    fn freed_memory_is_kept() {
        // SAFETY: mallinfo2 only reads allocator statistics.
        let arena = || unsafe { libc::mallinfo2() }.arena;
        assert_eq!(apply(), Tuning::Applied);
        let before = arena();
        // Blocks under the mmap threshold, so they come from the heap.
        let blocks: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 32 * 1024]).collect();
        let grown = arena();
        drop(blocks);
        let after = arena();
        assert!(grown >= before + (7 << 20), "{before} -> {grown}");
        assert!(
            after >= before + (6 << 20),
            "freed memory was trimmed: {before} -> {grown} -> {after}"
        );
    }
}
