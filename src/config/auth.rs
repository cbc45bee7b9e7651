//! `[auth]`: how callers are authenticated (bearer tokens from a file), if at all.

use std::path::PathBuf;

use super::reader::section;

section! {
    /// How callers are authenticated.
    pub struct AuthConfig in "auth" {
        /// One bearer token per line; absent: callers are not authenticated.
        tokens_file: Option<PathBuf> = None, |r, s, k| r.string(s, k).map(|f| Some(f.into()));
    }
}
