//! The one place the limiter's Redis connections are made, by `redis_mode`: a standalone
//! Redis (a [`ConnectionManager`]), a Redis Cluster (redis-rs's cluster connection, which
//! follows `MOVED` / `ASK` and a replica taking over), or the master that Redis Sentinel names
//! (a [`ConnectionManager`] to it, replaced when the sentinels name another). Each node is a
//! [`ConnectionInfo`], so settings of the connection itself (TLS, credentials) are added here
//! once for every mode. The limiter and the fleet announcement run their commands through
//! [`RedisConn`] alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    RedisError, RedisResult,
};

use super::redis_auth::{refusal, NodeSettings, RedisAuthError, RedisRefused, RedisSettings};
use super::redis_watch::Sentinels;

use crate::config::redis::{check_url, password, redact, url_from_env, UrlError};
use crate::config::{RateLimitConfig, RedisBackend, RedisUrl, Topology};

/// Longest a (re)connection may take; only the background task waits for it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sentinels are asked which node is the master, besides at once when one
/// announces `+switch-master`: a failover is followed within this (plus one connection) of
/// the sentinels' switch even with their announcement lost, not when the old master fails a
/// check (it may stay writable for seconds).
pub const MASTER_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a cluster seed node may take to answer a `PING` before a new connection: a new
/// cluster connection waits for every node it starts from, and one that hangs (a host
/// stopped without closing its connections, whose replica takes over) must not make every
/// new connection fail, or the gateway would never reach the new master.
const SEED_TIMEOUT: Duration = Duration::from_millis(300);
/// Longest a connection to one cluster node may take: the layout a new connection learns may
/// still name a master that hangs, and the connection waits for every master it names.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A cluster command's retries (a `MOVED`, an `ASK`, a node reconnected); each check is cut
/// at `redis_timeout` anyway.
const CLUSTER_RETRIES: u32 = 3;

/// Why the Redis backend could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("rate_limit.redis_url_env: {0}")]
    Env(UrlError),
    #[error("rate_limit.redis_url: {0}")]
    Url(UrlError),
    #[error("rate_limit.redis_nodes: {0}")]
    Node(UrlError),
    #[error("rate_limit.redis_nodes: required with redis_mode = \"cluster\" or \"sentinel\"")]
    NoNodes,
    #[error("{key}: {0}", key = .0.key())]
    Auth(RedisAuthError),
    #[error(transparent)]
    Refused(RedisRefused),
}

/// Where the Redis is: its URLs, made into connection settings (with the user, the password
/// as it is now and the TLS files) for each new connection.
enum Target {
    Standalone(String),
    Cluster(Vec<String>),
    /// The sentinels, asked with TLS settings but without the user and password, which are
    /// the master's (sentinels seldom share the data nodes' ACL).
    Sentinel {
        sentinels: Vec<NodeSettings>,
    },
}

/// Makes the connections of one configured Redis.
pub struct Connector {
    target: Target,
    /// The sentinels, in sentinel mode.
    sentinels: Option<Sentinels>,
    /// The user, password and TLS files each new connection is made with.
    pub settings: Arc<RedisSettings>,
    /// What logs show: the URLs without any password.
    pub shown: String,
    /// The first node's host:port, as refusals at start-up name it (in sentinel mode, the
    /// master's: see [`Connector::refused_at`]).
    pub addr: String,
    /// Sentinel mode: the master last connected to (or tried).
    master_tried: Mutex<Option<String>>,
    /// The password of a standalone URL, to scrub from error texts.
    pub password: Option<String>,
}

impl Connector {
    pub fn new(config: &RateLimitConfig, backend: &RedisBackend) -> Result<Self, RedisSetupError> {
        let settings = Arc::new(RedisSettings::load(&backend.auth).map_err(RedisSetupError::Auth)?);
        // Each URL checked, and made into a node's settings once, so that a mistake is said
        // at start-up rather than at the first connection.
        let nodes = |urls: &[String]| -> Result<Vec<NodeSettings>, RedisSetupError> {
            if urls.is_empty() {
                return Err(RedisSetupError::NoNodes);
            }
            urls.iter()
                .map(|url| {
                    check_url(url, false).map_err(RedisSetupError::Node)?;
                    settings.node(url).map_err(RedisSetupError::Auth)
                })
                .collect()
        };
        let shown = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>();
        let (target, sentinels, shown, first, password) = match config.redis_topology() {
            Topology::Standalone => {
                let url = match &backend.url {
                    RedisUrl::Url(url) => {
                        check_url(url, false).map_err(RedisSetupError::Url)?;
                        url.clone()
                    }
                    RedisUrl::Env(var) => url_from_env(var).map_err(RedisSetupError::Env)?,
                };
                let node = settings.node(&url).map_err(RedisSetupError::Auth)?;
                let shown = redact(&url);
                let password = password(&url).map(str::to_string);
                (Target::Standalone(url), None, shown, node, password)
            }
            Topology::Cluster { nodes: urls } => {
                let first = nodes(&urls)?.swap_remove(0);
                let shown = format!("cluster {}", shown(&urls).join(", "));
                (Target::Cluster(urls), None, shown, first, None)
            }
            Topology::Sentinel { sentinels, master } => {
                let found = nodes(&sentinels)?;
                let first = found[0].clone();
                let asked: Vec<NodeSettings> =
                    found.into_iter().map(NodeSettings::anonymous).collect();
                let shown = format!(
                    "sentinel master {master:?} via {}",
                    shown(&sentinels).join(", ")
                );
                let watch = Sentinels::new(&asked, &master, &settings);
                (
                    Target::Sentinel { sentinels: asked },
                    Some(watch),
                    shown,
                    first,
                    None,
                )
            }
        };
        Ok(Connector {
            target,
            sentinels,
            settings,
            shown,
            addr: first.info.addr.to_string(),
            master_tried: Mutex::new(None),
            password,
        })
    }

    /// A node's settings as they are now (the password file may have changed).
    fn node(&self, url: &str) -> RedisResult<NodeSettings> {
        self.settings.node(url).map_err(setup_error)
    }

    /// The address a refusal names: the master the sentinels named (it refused, not they:
    /// they are asked without the user and password), or the first node.
    pub fn refused_at(&self) -> String {
        let tried = self.master_tried.lock().unwrap_or_else(|e| e.into_inner());
        tried.clone().unwrap_or_else(|| self.addr.clone())
    }

    fn trying_master(&self, host: &str, port: u16) {
        *self.master_tried.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("{host}:{port}"));
    }

    /// Whether the master is followed (sentinel mode).
    pub fn follows_a_master(&self) -> bool {
        self.sentinels.is_some()
    }

    /// A new connection: to the standalone Redis, to the cluster (its layout learned from the
    /// seed nodes; redis-rs's cluster client then follows `MOVED`, `ASK` and a replica taking
    /// over), or to the master the sentinels name now.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        match (&self.target, &self.sentinels) {
            (Target::Standalone(url), _) => {
                let client = self.node(url)?.client()?;
                let conn = ConnectionManager::new_with_config(client, manager_config()).await?;
                Ok(RedisConn::Standalone(conn))
            }
            (Target::Cluster(urls), _) => {
                let seeds = urls
                    .iter()
                    .map(|url| self.node(url))
                    .collect::<RedisResult<Vec<_>>>()?;
                let tls = seeds.first().and_then(|seed| seed.tls.clone());
                let mut builder = ClusterClientBuilder::new(live_seeds(&seeds).await?);
                if let Some(certs) = tls {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .connection_timeout(NODE_CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(5)
                    .max_retry_wait(50)
                    .build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
            (Target::Sentinel { sentinels }, Some(watch)) => {
                let (host, port) = watch.master().await?;
                let template = sentinels.first().ok_or_else(no_sentinel)?;
                self.trying_master(&host, port);
                connect_master(&self.settings, template, host, port).await
            }
            (Target::Sentinel { .. }, None) => Err(no_sentinel()),
        }
    }

    /// Sentinel mode: waits until the sentinels are to be asked again: after
    /// [`MASTER_POLL_INTERVAL`], or at once when one of them announces a switch (the other
    /// modes: never).
    pub async fn next_question(&self) {
        match &self.sentinels {
            None => std::future::pending().await,
            Some(watch) => tokio::select! {
                _ = tokio::time::sleep(MASTER_POLL_INTERVAL) => {}
                _ = watch.switched.notified() => {}
            },
        }
    }

    /// Sentinel mode: listens for ever to every sentinel's `+switch-master` announcements
    /// (the other modes: never returns, does nothing).
    pub async fn listen(&self) {
        match &self.sentinels {
            Some(watch) => watch.listen().await,
            None => std::future::pending().await,
        }
    }

    /// Sentinel mode: a connection to the master the sentinels name now, when that is not the
    /// one `current` is connected to; `None` while it is (or in the other modes, or when the
    /// sentinels do not answer: the next round asks again).
    pub async fn follow(&self, current: &RedisConn) -> Option<RedisResult<RedisConn>> {
        let (Some(watch), Target::Sentinel { sentinels }) = (&self.sentinels, &self.target) else {
            return None;
        };
        let (host, port) = watch.master().await.ok()?;
        if let RedisConn::Master { addr, .. } = current {
            if *addr == (host.clone(), port) {
                return None;
            }
        }
        let template = sentinels.first()?;
        self.trying_master(&host, port);
        Some(connect_master(&self.settings, template, host, port).await)
    }
}

/// A connection to the master at `host:port`: the sentinels' scheme and TLS files, the
/// configured user and current password.
async fn connect_master(
    settings: &RedisSettings,
    template: &NodeSettings,
    host: String,
    port: u16,
) -> RedisResult<RedisConn> {
    let info = master_info(&template.info, host.clone(), port);
    let client = settings
        .with_credentials(info, template.tls.clone())
        .client()?;
    let conn = ConnectionManager::new_with_config(client, manager_config()).await?;
    Ok(RedisConn::Master {
        conn,
        addr: (host, port),
    })
}

/// The seeds that answer a `PING` within [`SEED_TIMEOUT`]; all of them when none does (the
/// connection then fails, or finds one that just came back). When none answers and one
/// refused the gateway (credentials, certificate), that refusal: redis-rs's cluster client
/// would turn it into text, and start-up must tell it from a Redis that is down.
async fn live_seeds(seeds: &[NodeSettings]) -> RedisResult<Vec<ConnectionInfo>> {
    let pings = seeds.iter().map(|seed| async move {
        let ping = async {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(SEED_TIMEOUT)
                .set_response_timeout(SEED_TIMEOUT);
            let mut conn = seed
                .clone()
                .client()?
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        match tokio::time::timeout(SEED_TIMEOUT, ping).await {
            Ok(Ok(())) => Ok(seed.info.clone()),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        }
    });
    let (live, failed): (Vec<_>, Vec<_>) =
        join_all(pings).await.into_iter().partition(Result::is_ok);
    if !live.is_empty() {
        return Ok(live.into_iter().flatten().collect());
    }
    let refused = failed
        .into_iter()
        .filter_map(|failed| failed.err().flatten())
        .find(|e| refusal(e, "").is_some());
    match refused {
        Some(e) => Err(e),
        None => Ok(seeds.iter().map(|seed| seed.info.clone()).collect()),
    }
}

/// A node's settings that cannot be used (checked at start-up, so not expected here).
fn setup_error(e: RedisAuthError) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "Redis connection settings",
        e.to_string(),
    ))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(CONNECT_TIMEOUT)
        .set_number_of_retries(0)
}

fn no_sentinel() -> RedisError {
    RedisError::from((ErrorKind::EmptySentinelList, "no sentinel configured"))
}

/// The master's connection settings: the sentinels' (scheme, certificates, database), at the
/// address they name.
fn master_info(template: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match &template.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    ConnectionInfo {
        addr,
        redis: template.redis.clone(),
    }
}

/// A connection in use; cheap to clone (each clone shares the one underneath).
#[derive(Clone)]
pub enum RedisConn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    /// The master the sentinels named, at `addr`.
    Master {
        conn: ConnectionManager,
        addr: (String, u16),
    },
}

impl RedisConn {
    /// One command; in a cluster it goes to the node that serves its keys' slot.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            RedisConn::Standalone(conn) | RedisConn::Master { conn, .. } => {
                cmd.query_async(&mut conn.clone()).await
            }
            RedisConn::Cluster(conn) => cmd.query_async(&mut conn.clone()).await,
        }
    }

    /// `EVALSHA` of `script` with `keys` and `args`; on `NOSCRIPT` (a new master after a
    /// failover, a slot moved, `SCRIPT FLUSH`) the script's text by `EVAL`, which also caches
    /// it on that node. Both go to the node of the keys' slot, so no other node is needed.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        source: &str,
        keys: &[String],
        args: &[u64],
    ) -> RedisResult<T> {
        let call = |command: &str, body: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match self.query(&call("EVALSHA", script.get_hash())).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                self.query(&call("EVAL", source)).await
            }
            other => other,
        }
    }

    /// The sentinel-found master's address, as logs show it.
    pub fn master(&self) -> Option<String> {
        match self {
            RedisConn::Master {
                addr: (host, port), ..
            } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    #[test]
    fn the_master_keeps_the_sentinels_scheme_and_settings() {
        let template = "rediss://sentinel.example:26379/0"
            .into_connection_info()
            .expect("url");
        let info = master_info(&template, "10.0.0.9".into(), 6380);
        match info.addr {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                assert_eq!((host.as_str(), port, insecure), ("10.0.0.9", 6380, false));
            }
            other => panic!("not TLS: {other:?}"),
        }
        let plain = "redis://s:26379".into_connection_info().expect("url");
        assert_eq!(
            master_info(&plain, "h".into(), 1).addr,
            ConnectionAddr::Tcp("h".into(), 1)
        );
    }
}
