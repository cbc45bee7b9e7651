//! `[auth]`: how callers are authenticated (bearer tokens from a file), if at all.

use std::path::PathBuf;

use toml::Table;

use super::reader::Reader;

pub const KEYS: &[&str] = &["tokens_file"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    pub tokens_file: Option<PathBuf>,
}

pub fn read(r: &mut Reader, t: &Table) -> AuthConfig {
    AuthConfig {
        tokens_file: r.string(t, "auth", "tokens_file").map(PathBuf::from),
    }
}
