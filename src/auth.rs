//! Caller authentication for the shared-service deployment: bearer tokens from a file, one per
//! line (or `sha256:<hex>` of one), compared in constant time, re-read when the file changes.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file: {0}")]
    Io(std::io::ErrorKind),
    #[error("line {0}: a sha256: entry must be 64 hexadecimal digits")]
    BadHash(usize),
    #[error("the tokens file holds no token")]
    Empty,
}

/// The accepted tokens, kept only as SHA-256 digests: comparing digests in constant time
/// tells nothing about how much of a token was right, and no token sits in memory as text.
#[derive(Clone)]
pub struct Tokens(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.0.len())
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Blank lines and lines starting with `#` are ignored; surrounding whitespace is trimmed.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut digests = Vec::new();
        // A byte-order mark (editors on Windows) would glue itself to the first line, and
        // turn a `#` comment into a token.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let digest = match line.strip_prefix("sha256:") {
                Some(hex) => decode_hex(hex).ok_or(TokensError::BadHash(n + 1))?,
                None => Sha256::digest(line.as_bytes()).into(),
            };
            digests.push(digest);
        }
        if digests.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Tokens(Arc::new(digests)))
    }

    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokensError::Io(e.kind()))?;
        Tokens::parse(&text)
    }

    /// Whether `token` is one of ours. Every entry is compared, in constant time.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found = subtle::Choice::from(0);
        for digest in self.0.iter() {
            found |= digest.ct_eq(&presented);
        }
        found.into()
    }
}

/// The current token set, swapped whole on reload.
#[derive(Debug)]
pub struct Authenticator {
    tokens: ArcSwap<Tokens>,
}

impl Authenticator {
    pub fn new(tokens: Tokens) -> Arc<Self> {
        Arc::new(Authenticator {
            tokens: ArcSwap::from_pointee(tokens),
        })
    }

    /// Checks an `Authorization` header value: `Bearer <token>`.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = strip_bearer(value) else {
            return false;
        };
        !token.is_empty() && self.tokens.load().accepts(token)
    }

    /// Tokens in force.
    pub fn count(&self) -> usize {
        self.tokens.load().0.len()
    }

    /// Re-reads the file; on failure the old tokens stay in force (an unreadable or emptied
    /// file is far more often a botched deploy than a wish to lock every caller out; to
    /// revoke a token, write the file without it). Returns how many tokens the file gave: 0
    /// when it could not be used.
    pub fn reload(&self, path: &Path) -> usize {
        match Tokens::load(path) {
            Ok(tokens) => {
                let count = tokens.0.len();
                tracing::info!(entries = count, "caller tokens reloaded");
                self.tokens.store(Arc::new(tokens));
                count
            }
            Err(e) => {
                tracing::warn!(error = %e, "caller tokens not reloaded; the previous ones stay in force");
                0
            }
        }
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?;
    Some(token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_hashed_tokens() {
        let hashed = format!("{:x}", Sha256::digest(b"second-token"));
        let tokens = Tokens::parse(&format!("# callers\nfirst-token\n\n  sha256:{hashed}  \n"))
            .expect("tokens");
        assert!(tokens.accepts(b"first-token"));
        assert!(tokens.accepts(b"second-token"));
        assert!(!tokens.accepts(b"first-toke"));
        assert!(!tokens.accepts(b""));
        assert!(
            !tokens.accepts(format!("sha256:{hashed}").as_bytes()),
            "the hash is not itself a token"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_line() {
        let tokens = Tokens::parse("\u{feff}# callers\nreal-token\n").expect("tokens");
        assert!(!tokens.accepts("\u{feff}# callers".as_bytes()));
        assert!(!tokens.accepts(b"# callers"));
        assert!(tokens.accepts(b"real-token"));
        assert!(matches!(
            Tokens::parse("\u{feff}# only a comment\n"),
            Err(TokensError::Empty)
        ));
    }

    #[test]
    fn bad_files() {
        assert!(matches!(
            Tokens::parse("# nothing\n\n"),
            Err(TokensError::Empty)
        ));
        assert!(matches!(
            Tokens::parse("a\nsha256:xyz\n"),
            Err(TokensError::BadHash(2))
        ));
    }

    #[test]
    fn bearer_header_forms() {
        let auth = Authenticator::new(Tokens::parse("t0k3n").expect("tokens"));
        assert!(auth.check(Some(b"Bearer t0k3n")));
        assert!(auth.check(Some(b"bearer t0k3n")));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic t0k3n",
            b"t0k3n",
            b"Bearer t0k3n2",
            b"Bearert0k3n",
            b"\xff\xfe",
        ] {
            assert!(!auth.check(Some(bad)), "{bad:?}");
        }
        assert!(!auth.check(None));
    }

    #[test]
    fn debug_shows_no_digest() {
        let tokens = Tokens::parse("secret-token").expect("tokens");
        assert_eq!(format!("{tokens:?}"), "Tokens(1 entries)");
    }
}
