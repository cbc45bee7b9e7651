//! Which node is the master: asked of the sentinels, and heard from their `+switch-master`
//! announcements. The answer is taken from the newest configuration epoch seen, so that one
//! sentinel that has not heard of a failover yet does not send the gateway back.
//!
//! A sentinel is asked without the master's user and password (sentinels seldom share the
//! data nodes' ACL); one that answers `NOAUTH` (a sentinel with `requirepass` or ACL users) is
//! asked with them from then on, as most deployments give sentinels the same password.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue};
use redis::{RedisError, RedisResult};

use super::redis_auth::{NodeSettings, RedisSettings};

/// Longest one sentinel may take to answer (or to connect).
pub const ASK_TIMEOUT: Duration = Duration::from_millis(300);
/// Pause before listening again to a sentinel whose announcements stopped.
const RELISTEN_INTERVAL: Duration = Duration::from_millis(500);

/// A sentinel, with its connection once made.
struct Node {
    /// Its address and TLS settings, without a user or password.
    info: NodeSettings,
    /// The master's user and password, as they are now (the password file may change).
    credentials: Arc<RedisSettings>,
    /// It answered `NOAUTH`: it is asked with the credentials.
    wants_auth: AtomicBool,
    cached: Mutex<Option<MultiplexedConnection>>,
}

/// Redis asks the client to authenticate first.
fn asks_for_auth(e: &RedisError) -> bool {
    e.code() == Some("NOAUTH")
}

impl Node {
    fn new(info: &NodeSettings, credentials: &Arc<RedisSettings>) -> Self {
        Node {
            info: info.clone().anonymous(),
            credentials: credentials.clone(),
            wants_auth: AtomicBool::new(false),
            cached: Mutex::new(None),
        }
    }

    /// How this sentinel is connected to now.
    fn settings(&self) -> NodeSettings {
        if !self.wants_auth.load(Ordering::Relaxed) {
            return self.info.clone();
        }
        let NodeSettings { info, tls } = self.info.clone();
        self.credentials.with_credentials(info, tls)
    }

    /// Whether `e` asks for what this node was not given yet; from then on it is.
    fn learns_auth(&self, e: &RedisError) -> bool {
        asks_for_auth(e) && !self.wants_auth.swap(true, Ordering::Relaxed)
    }

    /// `cmd` on this node within [`ASK_TIMEOUT`]; a connection that gave no answer is dropped
    /// so that the next question opens a new one.
    async fn ask<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match tokio::time::timeout(ASK_TIMEOUT, self.ask_untimed(cmd)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.forget();
                Err(timed_out())
            }
        }
    }

    async fn ask_untimed<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.ask_once(cmd).await {
            Err(e) if self.learns_auth(&e) => {
                self.forget();
                self.ask_once(cmd).await
            }
            answer => answer,
        }
    }

    async fn ask_once<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let held = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut conn = match held {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(ASK_TIMEOUT)
                    .set_response_timeout(ASK_TIMEOUT);
                let conn = self
                    .settings()
                    .client()?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                conn
            }
        };
        let answer = cmd.query_async(&mut conn).await;
        if answer.as_ref().is_err_and(|e| e.code().is_none()) {
            self.forget();
        }
        answer
    }

    fn forget(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer in time",
    ))
}

/// The newest of the answers, or the last error.
fn newest<T>(answers: Vec<RedisResult<Option<(u64, T)>>>, none: &'static str) -> RedisResult<T> {
    let mut best: Option<(u64, T)> = None;
    let mut last_error = None;
    for answer in answers {
        match answer {
            Ok(Some(seen)) if best.as_ref().map_or(true, |b| seen.0 > b.0) => best = Some(seen),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    match (best, last_error) {
        (Some((_, found)), _) => Ok(found),
        (None, Some(e)) => Err(e),
        (None, None) => Err(RedisError::from((ErrorKind::ClientError, none))),
    }
}

// --- sentinel ------------------------------------------------------------------------------

/// The sentinels, and the name they know the master by.
pub struct Sentinels {
    nodes: Vec<Node>,
    master: String,
    /// A sentinel announced that the master switched.
    pub switched: tokio::sync::Notify,
}

impl Sentinels {
    /// The sentinels at `infos`, asked for `master`; `credentials` are given to those that
    /// ask for them.
    pub fn new(infos: &[NodeSettings], master: &str, credentials: &Arc<RedisSettings>) -> Self {
        Sentinels {
            nodes: (infos.iter()).map(|i| Node::new(i, credentials)).collect(),
            master: master.to_string(),
            switched: tokio::sync::Notify::new(),
        }
    }

    /// The master's address: of the sentinels that answer and see it up, the one with the
    /// newest configuration epoch (the sentinel that ran a failover knows first).
    pub async fn master(&self) -> RedisResult<(String, u16)> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("MASTER").arg(&self.master);
        let asks = self.nodes.iter().map(|node| async {
            let fields: HashMap<String, String> = node.ask(&cmd).await?;
            Ok(master_up(&fields).map(|(epoch, host, port)| (epoch, (host, port))))
        });
        let none = "no sentinel knows a master of that name that is up";
        newest(join_all(asks).await, none)
    }

    /// Every sentinel's `+switch-master` channel, for ever: an announcement for this master
    /// wakes the follower, which then asks the sentinels (an announcement is only a hint).
    pub async fn listen(&self) {
        join_all(self.nodes.iter().map(|node| async move {
            loop {
                match self.listen_to(&node.settings()).await {
                    // At once, with the credentials.
                    Err(e) if node.learns_auth(&e) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "not listening to a sentinel's announcements")
                    }
                    Ok(()) => {}
                }
                tokio::time::sleep(RELISTEN_INTERVAL).await;
            }
        }))
        .await;
    }

    /// One sentinel's announcements, until its connection ends.
    async fn listen_to(&self, info: &NodeSettings) -> RedisResult<()> {
        let client = info.clone().client()?;
        let mut pubsub = tokio::time::timeout(ASK_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out())??;
        pubsub.subscribe("+switch-master").await?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            // "<master name> <old ip> <old port> <new ip> <new port>"
            let payload: String = message.get_payload().unwrap_or_default();
            if payload.split(' ').next() == Some(self.master.as_str()) {
                self.switched.notify_one();
            }
        }
        Ok(())
    }
}

/// A sentinel's fields of a master it sees up: (config epoch, host, port).
fn master_up(fields: &HashMap<String, String>) -> Option<(u64, String, u16)> {
    let flags: Vec<&str> = fields.get("flags")?.split(',').collect();
    if !flags.contains(&"master") || flags.contains(&"s_down") || flags.contains(&"o_down") {
        return None;
    }
    let port = fields.get("port")?.parse().ok()?;
    let epoch = fields
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Some((epoch, fields.get("ip")?.clone(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_a_master_seen_up_is_taken() {
        let up = fields(&[
            ("ip", "127.0.0.1"),
            ("port", "7001"),
            ("flags", "master"),
            ("config-epoch", "3"),
        ]);
        assert_eq!(master_up(&up), Some((3, "127.0.0.1".into(), 7001)));
        for flags in ["master,s_down", "master,s_down,o_down", "slave", ""] {
            let mut down = up.clone();
            down.insert("flags".into(), flags.into());
            assert_eq!(master_up(&down), None, "{flags}");
        }
        let mut bad = up.clone();
        bad.insert("port".into(), "70000".into());
        assert_eq!(master_up(&bad), None);
    }

    #[test]
    fn the_newest_epoch_wins() {
        let answers = vec![
            Ok(Some((3, "old"))),
            Err(timed_out()),
            Ok(Some((4, "new"))),
            Ok(None),
        ];
        assert_eq!(newest(answers, "none").ok(), Some("new"));
        assert!(newest::<&str>(vec![Ok(None)], "none").is_err());
    }
}
