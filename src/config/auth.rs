//! `[auth]`: how callers are authenticated (bearer tokens from a file), if at all.

use std::path::PathBuf;

use super::reader::{section, Reader};

section! {
    /// How callers are authenticated.
    pub struct AuthConfig in "auth" {
        /// One bearer token per line; absent: callers are not authenticated.
        tokens_file: Option<PathBuf> = None, Reader::path;
    }
}
