//! The memory allocator of the `chat-gateway` process: mimalloc (declared in `main.rs`, so that
//! tests and benches keep their own), built with arena eager commit off (`.cargo/config.toml`).
//!
//! Why mimalloc: a request allocates and frees a few dozen small buffers (header maps, h2
//! frames, futures). In the load comparison (`benches/load/run.sh`, 64 connections) glibc malloc
//! cost 27.5-28.3 µs of CPU per request, mimalloc 23.7-24.1; in the hot-group scenario
//! (`hot.sh`) 19.3 against 10.3-14.8 µs per applied increment.
//!
//! Why eager commit off: by default mimalloc commits arena memory ahead of use, and the first
//! arena is made before `main` runs, so only a build-time default reaches it. At 1000
//! connections that default put peak RSS at 72-75 MB against glibc's 54 MB; committing on
//! demand keeps it at 52-54 MB for no measurable CPU. `MIMALLOC_ARENA_EAGER_COMMIT` (and the
//! other `MIMALLOC_*` variables) still override it at run time.

/// mimalloc's `mi_option_arena_eager_commit` (its enum's fifth entry, in v2 and v3 alike).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc's arena eager commit setting in effect: 0 off (this build's default), 1 on, 2 on
/// where the OS overcommits (mimalloc's own default).
#[allow(unsafe_code)]
pub fn arena_eager_commit() -> std::ffi::c_long {
    // SAFETY: mi_option_get reads an integer from mimalloc's option table (initialising it
    // from the environment on first use); thread-safe, no pointers.
    unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_turns_arena_eager_commit_off() {
        // Fails when the crate is built without `.cargo/config.toml`'s CFLAGS (mimalloc's own
        // default is 2). A builder who sets CFLAGS of their own replaces ours (`force = false`):
        // their choice, not checked here; so is `MIMALLOC_ARENA_EAGER_COMMIT` at run time.
        let own_cflags = option_env!("CFLAGS").filter(|f| !f.contains("MI_DEFAULT_ARENA_EAGER"));
        if own_cflags.is_none() && std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(super::arena_eager_commit(), 0);
        }
    }
}
