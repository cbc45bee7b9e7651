//! Real Redis sets for one test: a Redis Cluster (`redis-server --cluster-enabled yes` nodes
//! joined by `redis-cli --cluster create`), and a master with a replica watched by three
//! `redis-sentinel`s; each on free 127.0.0.1 ports, every process killed by PID on drop, every
//! wait bounded.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{tls_cli_args, RedisServer};
use crate::support::*;

/// The app's hash tag: every key of the app sits in its slot.
pub fn app_tag() -> String {
    format!("{{chat-gateway:{SDKAPPID}}}")
}

/// Waits until `done` holds, up to `limit`; panics naming `what` otherwise.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- cluster -------------------------------------------------------------------------------

/// What every cluster node runs with.
const CLUSTER_OPTIONS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "500",
];

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// On TLS ports alone: the seed URLs are rediss://.
    tls: bool,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, every slot served, every replica in
    /// sync. A node that does not hear from another for 500 ms counts it failing, so that a
    /// replica takes over within a few seconds.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_with(&CLUSTER_OPTIONS))
            .collect();
        Self::create(nodes, replicas, Vec::new())
    }

    /// `masters` masters on TLS ports alone (`--port 0`), clients and the cluster bus
    /// verified by `ca`, with more options for each node (an ACL user, say).
    pub fn start_tls(ca: &TestCa, masters: usize, extra: &[&str]) -> Self {
        let mut options = CLUSTER_OPTIONS.to_vec();
        options.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        options.extend_from_slice(extra);
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_tls_only(ca, &options))
            .collect();
        Self::create(nodes, 0, tls_cli_args(ca))
    }

    /// `nodes` joined by `redis-cli --cluster create` (with `cli` options), then waited for.
    fn create(nodes: Vec<RedisServer>, replicas: usize, cli: Vec<String>) -> Self {
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(require_tool("redis-cli"))
            .args(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            tls: !cli.is_empty(),
        };
        wait_until(
            "cluster_state:ok on every node",
            Duration::from_secs(20),
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            },
        );
        wait_until("replicas in sync", Duration::from_secs(20), || {
            cluster
                .nodes
                .iter()
                .map(|n| n.cli(&["info", "replication"]))
                .filter(|info| info.contains("role:slave"))
                .all(|info| info.contains("master_link_status:up"))
        });
        cluster
    }

    /// Seed URLs for the gateway: every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let scheme = if self.tls { "rediss" } else { "redis" };
                format!("{scheme}://127.0.0.1:{}", n.port)
            })
            .collect()
    }

    /// `redis_nodes = [...]` for the TOML.
    pub fn nodes_toml(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The app's slot.
    pub fn app_slot(&self) -> u16 {
        self.alive()
            .cli(&["cluster", "keyslot", &app_tag()])
            .trim()
            .parse()
            .expect("keyslot")
    }

    /// A node still running.
    fn alive(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node still runs")
    }

    /// The index of the node that serves `slot` as a master not marked failing, as a running
    /// node sees the cluster.
    pub fn master_of(&self, slot: u16) -> Option<usize> {
        let nodes = self.alive().cli(&["cluster", "nodes"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                match (low.parse::<u16>(), high.parse::<u16>()) {
                    (Ok(low), Ok(high)) => (low..=high).contains(&slot),
                    _ => false,
                }
            });
            let port: u16 = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            serves.then(|| self.nodes.iter().position(|n| n.port == port))?
        })
    }

    /// The replica of the master at `master`.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let id = self.node_id(master);
        let nodes = self.alive().cli(&["cluster", "nodes"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&id.as_str()) {
                return None;
            }
            let port: u16 = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            self.nodes.iter().position(|n| n.port == port)
        })
    }

    pub fn node_id(&self, node: usize) -> String {
        self.nodes[node]
            .cli(&["cluster", "myid"])
            .trim()
            .to_string()
    }

    /// Moves `slot` from the master `from` to the master `to` as `redis-cli --cluster
    /// reshard` does: IMPORTING / MIGRATING, MIGRATE of its keys, then the new owner told to
    /// every master. One connection per node, so the slot is in transit for milliseconds.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let conn = |i: usize| {
            redis::Client::open(format!("redis://127.0.0.1:{}", self.nodes[i].port))
                .and_then(|c| c.get_connection())
                .expect("connection to a node")
        };
        let (mut source, mut target) = (conn(from), conn(to));
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let setslot = |c: &mut redis::Connection, state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query::<()>(c)
                .expect("setslot");
        };
        setslot(&mut target, "IMPORTING", &from_id);
        setslot(&mut source, "MIGRATING", &to_id);
        // Bounded: the app's keys expire as soon as their state is stale.
        for _ in 0..1_000 {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut source)
                .expect("getkeysinslot");
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut source)
                .expect("migrate");
        }
        setslot(&mut target, "NODE", &to_id);
        setslot(&mut source, "NODE", &to_id);
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to && node.is_running() {
                node.cli(&["cluster", "setslot", &slot.to_string(), "node", &to_id]);
            }
        }
    }
}

// --- sentinel ------------------------------------------------------------------------------

/// One `redis-sentinel`, killed by PID on drop.
pub struct SentinelProcess {
    pub port: u16,
    /// `redis-cli`'s TLS options (a sentinel on a TLS port alone) and password.
    tls_cli: Vec<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl SentinelProcess {
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require_tool("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.tls_cli)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A field of `SENTINEL MASTER <name>` as this sentinel sees it.
    pub fn master_field(&self, field: &str) -> Option<String> {
        let out = self.cli(&["sentinel", "master", SentinelSet::MASTER]);
        let lines: Vec<&str> = out.lines().collect();
        let at = lines.iter().position(|l| *l == field)?;
        lines.get(at + 1).map(|v| v.to_string())
    }
}

/// What sentinels that ask for a password are given: their config lines, and `redis-cli`'s.
struct SentinelAuth {
    lines: String,
    cli: Vec<String>,
}

/// A master, its replica, and three sentinels that watch them (quorum 2).
pub struct SentinelSet {
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
    /// On TLS ports alone: the sentinels' URLs are rediss://.
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl SentinelSet {
    pub const MASTER: &'static str = "mymaster";

    /// Started, the replica in sync and every sentinel aware of the replica and of the two
    /// other sentinels (what a failover needs).
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        Self::watched(master, replica, None, None)
    }

    /// As [`SentinelSet::start`], with the ACL user `user` (its `user` directive's words, the
    /// first its name) on both servers and on every sentinel, whose default user has the
    /// password `password` (sentinels need one another's password too).
    pub fn start_with_sentinel_auth(user: &[&str], password: &str) -> Self {
        let master = RedisServer::start_with(&[&["--user"], user].concat());
        let replica = RedisServer::start_with(
            &[
                &["--user"],
                user,
                &["--replicaof", "127.0.0.1", &master.port.to_string()],
            ]
            .concat(),
        );
        let auth = SentinelAuth {
            lines: format!(
                "requirepass {password}
sentinel sentinel-pass {password}
user {}
",
                user.join(" ")
            ),
            cli: vec!["-a".into(), password.into(), "--no-auth-warning".into()],
        };
        Self::watched(master, replica, None, Some(&auth))
    }

    /// As [`SentinelSet::start`], every server and sentinel on a TLS port alone, clients and
    /// replication verified by `ca`; `extra` options for both servers (an ACL user, say).
    pub fn start_tls(ca: &TestCa, extra: &[&str]) -> Self {
        let mut options = vec!["--tls-replication", "yes"];
        options.extend_from_slice(extra);
        let master = RedisServer::start_tls_only(ca, &options);
        let master_port = master.port.to_string();
        options.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = RedisServer::start_tls_only(ca, &options);
        Self::watched(master, replica, Some(ca), None)
    }

    /// Three sentinels on `master` (over TLS with `ca`, asking for `auth`), once the replica
    /// is in sync.
    fn watched(
        master: RedisServer,
        replica: RedisServer,
        ca: Option<&TestCa>,
        auth: Option<&SentinelAuth>,
    ) -> Self {
        wait_until("the replica in sync", Duration::from_secs(20), || {
            replica
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
        });
        let sentinels = (0..3)
            .map(|_| Self::sentinel(master.port, ca, auth))
            .collect();
        let set = SentinelSet {
            servers: vec![master, replica],
            sentinels,
            tls: ca.is_some(),
        };
        wait_until(
            "the sentinels see each other and the replica",
            Duration::from_secs(30),
            || {
                set.sentinels.iter().all(|s| {
                    s.master_field("num-other-sentinels").as_deref() == Some("2")
                        && s.master_field("num-slaves").as_deref() == Some("1")
                })
            },
        );
        set
    }

    /// The lines of a sentinel's config that put it on a TLS port alone (`ca`'s server
    /// certificate, clients verified, TLS to the servers), or its plain port.
    fn port_lines(port: u16, ca: Option<&TestCa>) -> String {
        let Some(ca) = ca else {
            return format!("port {port}\n");
        };
        let (cert, key) = ca.server_files();
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\n",
            cert.display(),
            key.display(),
            ca.ca_file().display()
        )
    }

    fn sentinel(
        master_port: u16,
        ca: Option<&TestCa>,
        auth: Option<&SentinelAuth>,
    ) -> SentinelProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "{}bind 127.0.0.1\ndir {}\n\
                 sentinel monitor {m} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {m} 500\n\
                 sentinel failover-timeout {m} 3000\n\
                 sentinel parallel-syncs {m} 1\n{}",
                Self::port_lines(port, ca),
                dir.path().display(),
                auth.map_or("", |a| a.lines.as_str()),
                m = Self::MASTER,
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new(require_tool("redis-sentinel"))
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-sentinel");
        let sentinel = SentinelProcess {
            port,
            tls_cli: [
                ca.map(tls_cli_args).unwrap_or_default(),
                auth.map(|a| a.cli.clone()).unwrap_or_default(),
            ]
            .concat(),
            child: Some(child),
            _dir: dir,
        };
        wait_until("redis-sentinel answers", Duration::from_secs(10), || {
            sentinel.cli(&["ping"]).contains("PONG")
        });
        sentinel
    }

    /// `redis_nodes = [...]` for the TOML: the sentinels.
    pub fn nodes_toml(&self) -> String {
        let quoted: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| {
                let scheme = if self.tls { "rediss" } else { "redis" };
                format!("\"{scheme}://127.0.0.1:{}\"", s.port)
            })
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The index of the server whose `ROLE` says master.
    pub fn master(&self) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.is_running() && s.cli(&["role"]).starts_with("master"))
    }
}
