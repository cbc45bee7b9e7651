//! The gateway's own admin UserSig: made at start, renewed in the background at half its life.
//!
//! Requests read the current sig through an `ArcSwap`, so signing a request never waits for
//! HMAC work and never takes a lock.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::metrics::Metrics;
use crate::usersig::{self, SecretKey};

/// Query-string escaping: everything but unreserved characters and `*`, which UserSigs use and
/// which Tencent's own samples send as it is.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'*');

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret key: {0}")]
    Io(std::io::ErrorKind),
    #[error("the secret key is empty")]
    Empty,
    #[error("environment variable is not set or not valid UTF-8")]
    EnvMissing,
}

/// Reads a secret key file (a trailing newline is ignored). The error never holds content.
pub fn read_secret_file(path: &Path) -> Result<SecretKey, SecretError> {
    let bytes = std::fs::read(path).map_err(|e| SecretError::Io(e.kind()))?;
    SecretKey::new(bytes).map_err(|_| SecretError::Empty)
}

pub fn read_secret_env(var: &str) -> Result<SecretKey, SecretError> {
    let value = std::env::var(var).map_err(|_| SecretError::EnvMissing)?;
    SecretKey::new(value).map_err(|_| SecretError::Empty)
}

/// One signed identity, ready to be put in front of a request's `random`.
pub struct Signed {
    /// `sdkappid=..&identifier=..&usersig=..&random=`: a request appends its random and
    /// `&contenttype=json`.
    query_prefix: Box<str>,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

impl Signed {
    pub fn query_prefix(&self) -> &str {
        &self.query_prefix
    }
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The prefix holds the UserSig: never print it.
        f.debug_struct("Signed")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

pub struct Credentials {
    sdkappid: u64,
    identifier: String,
    ttl: Duration,
    key: ArcSwap<SecretKey>,
    current: ArcSwap<Signed>,
    metrics: Metrics,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("sdkappid", &self.sdkappid)
            .field("identifier", &self.identifier)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Credentials {
    /// Signs once, so that the gateway starts with a valid sig.
    pub fn new(
        sdkappid: u64,
        identifier: &str,
        ttl: Duration,
        key: SecretKey,
        metrics: Metrics,
    ) -> Arc<Self> {
        let signed = sign(&key, sdkappid, identifier, ttl, unix_now());
        metrics.usersig_renewed(signed.expires_at);
        Arc::new(Credentials {
            sdkappid,
            identifier: identifier.to_string(),
            ttl,
            key: ArcSwap::from_pointee(key),
            current: ArcSwap::from_pointee(signed),
            metrics,
        })
    }

    /// The current sig: a lock-free read.
    pub fn current(&self) -> arc_swap::Guard<Arc<Signed>> {
        self.current.load()
    }

    /// Whether the current sig is still valid (readiness).
    pub fn can_sign(&self, now: u64) -> bool {
        self.current.load().expires_at > now
    }

    /// Signs anew with the current key. A clock that reads before 1970 cannot date a sig:
    /// the current one stays, and the failure is counted.
    pub fn renew(&self, now: u64) {
        if now == 0 {
            self.metrics.usersig_renewal_failed();
            tracing::error!("the system clock reads before 1970: the UserSig was not renewed");
            return;
        }
        let key = self.key.load();
        let signed = sign(&key, self.sdkappid, &self.identifier, self.ttl, now);
        self.metrics.usersig_renewed(signed.expires_at);
        self.current.store(Arc::new(signed));
    }

    /// Replaces the key (rotation); the next sig uses it.
    pub fn set_key(&self, key: SecretKey) {
        self.key.store(Arc::new(key));
    }

    /// How long to wait before the next renewal: half the sig's life.
    pub fn renew_after(&self) -> Duration {
        self.ttl / 2
    }

    /// Renews at half-life until `stop` resolves.
    pub async fn renew_in_background(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.renew_after()) => {
                    self.renew(unix_now());
                    tracing::debug!(expires_at = self.current().expires_at, "renewed the admin UserSig");
                }
            }
        }
    }
}

fn sign(key: &SecretKey, sdkappid: u64, identifier: &str, ttl: Duration, now: u64) -> Signed {
    let expire = ttl.as_secs();
    let sig = usersig::generate(key, sdkappid, identifier, now, expire);
    let identifier = utf8_percent_encode(identifier, QUERY_VALUE);
    let sig = utf8_percent_encode(&sig, QUERY_VALUE);
    Signed {
        query_prefix: format!("sdkappid={sdkappid}&identifier={identifier}&usersig={sig}&random=")
            .into_boxed_str(),
        issued_at: now,
        expires_at: now.saturating_add(expire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::new("0123456789abcdef").expect("key")
    }

    #[test]
    fn prefix_holds_a_sig_that_verifies() {
        let creds = Credentials::new(
            1400000000,
            "admin",
            Duration::from_secs(3600),
            key(),
            Metrics::new(),
        );
        let signed = creds.current();
        let prefix = signed.query_prefix();
        assert!(prefix.starts_with("sdkappid=1400000000&identifier=admin&usersig="));
        assert!(prefix.ends_with("&random="));
        let sig = prefix
            .split('&')
            .find_map(|kv| kv.strip_prefix("usersig="))
            .expect("usersig");
        let sig = percent_encoding::percent_decode_str(sig)
            .decode_utf8()
            .expect("utf8");
        usersig::verify(&key(), &sig, 1400000000, "admin", signed.issued_at + 1).expect("verifies");
        assert_eq!(signed.expires_at, signed.issued_at + 3600);
        assert!(creds.can_sign(signed.issued_at));
        assert!(!creds.can_sign(signed.expires_at));
    }

    /// The background loop renews at half-life, well before expiry, and keeps doing so; it
    /// stops when told.
    #[tokio::test(start_paused = true)]
    async fn the_background_loop_renews_at_half_life_until_stopped() {
        let creds = Credentials::new(1, "admin", Duration::from_secs(120), key(), Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(creds.clone().renew_in_background(async {
            let _ = stopped.await;
        }));
        let first = creds.current().clone();
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(
            Arc::ptr_eq(&first, &creds.current()),
            "not before half-life"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = creds.current().clone();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "renewed at half-life, 60 s before expiry"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !Arc::ptr_eq(&second, &creds.current()),
            "and again a half-life later"
        );
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the loop stops when told")
            .expect("join");
    }

    #[test]
    fn renewal_replaces_the_sig_and_uses_a_rotated_key() {
        let creds = Credentials::new(1, "admin", Duration::from_secs(120), key(), Metrics::new());
        assert_eq!(creds.renew_after(), Duration::from_secs(60));
        let new_key = SecretKey::new("another-key").expect("key");
        creds.set_key(new_key.clone());
        creds.renew(2_000_000_000);
        let signed = creds.current();
        assert_eq!(signed.issued_at, 2_000_000_000);
        let sig = signed
            .query_prefix()
            .split('&')
            .find_map(|kv| kv.strip_prefix("usersig="))
            .expect("usersig")
            .to_string();
        assert!(usersig::verify(&new_key, &sig, 1, "admin", 2_000_000_001).is_ok());
        assert!(usersig::verify(&key(), &sig, 1, "admin", 2_000_000_001).is_err());
    }

    #[test]
    fn identifier_is_escaped_in_the_query() {
        let creds = Credentials::new(1, "a&b=c", Duration::from_secs(120), key(), Metrics::new());
        assert!(creds
            .current()
            .query_prefix()
            .contains("identifier=a%26b%3Dc&"));
    }

    #[test]
    fn debug_never_prints_the_sig() {
        let creds = Credentials::new(1, "admin", Duration::from_secs(120), key(), Metrics::new());
        let text = format!("{creds:?} {:?}", creds.current());
        assert!(!text.contains("usersig"));
        assert!(!text.contains("eJ"));
    }

    #[test]
    fn secret_file_errors_never_hold_content() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(read_secret_file(&path), Err(SecretError::Empty)));
        assert!(matches!(
            read_secret_file(&dir.path().join("missing")),
            Err(SecretError::Io(std::io::ErrorKind::NotFound))
        ));
        std::fs::write(&path, "abc\n").expect("write");
        assert!(read_secret_file(&path).is_ok());
    }
}

#[cfg(test)]
mod renewal_failure_tests {
    use super::*;

    #[test]
    fn a_clock_before_1970_keeps_the_current_sig_and_counts_a_failure() {
        let metrics = Metrics::new();
        let creds = Credentials::new(
            1,
            "admin",
            Duration::from_secs(120),
            SecretKey::new("k").expect("key"),
            metrics.clone(),
        );
        let before = creds.current().issued_at;
        creds.renew(0);
        assert_eq!(creds.current().issued_at, before);
        let text = String::from_utf8(metrics.render()).expect("utf8");
        assert!(
            text.contains("chat_gateway_usersig_renewals_total{result=\"error\"} 1"),
            "{text}"
        );
    }
}
