//! `rate_limit.redis_mode`: one standalone Redis (`redis_url` / `redis_url_env`), a Redis
//! Cluster (`redis_nodes`: seed nodes), or a master that Redis Sentinel watches (`redis_nodes`:
//! the sentinels, and `redis_sentinel_master`); the offline checks of those keys.

use toml::Value;

use super::reader::{Reader, Section};
use super::redis::{check_url, redact};
use super::Backend;
use super::RateLimitConfig;

/// The most nodes `redis_nodes` takes: seeds and sentinels are a handful; more is a mistake.
pub const MAX_NODES: usize = 100;

/// How the gateway finds the Redis that keeps the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

impl std::str::FromStr for RedisMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "standalone" => Ok(RedisMode::Standalone),
            "cluster" => Ok(RedisMode::Cluster),
            "sentinel" => Ok(RedisMode::Sentinel),
            _ => Err("must be \"standalone\", \"cluster\" or \"sentinel\"".into()),
        }
    }
}

/// Where the Redis of `backend = "redis"` is, by mode. A standalone Redis's URL is
/// [`RedisBackend::url`](super::RedisBackend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    /// Seed nodes: any of them tells the cluster's layout.
    Cluster {
        nodes: Vec<String>,
    },
    /// The sentinels, and the name they know the master by.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl RateLimitConfig {
    /// Where the Redis is, as `redis_mode` says.
    pub fn redis_topology(&self) -> Topology {
        match self.redis_mode {
            RedisMode::Standalone => Topology::Standalone,
            RedisMode::Cluster => Topology::Cluster {
                nodes: self.redis_nodes.clone(),
            },
            RedisMode::Sentinel => Topology::Sentinel {
                sentinels: self.redis_nodes.clone(),
                master: self.redis_sentinel_master.clone().unwrap_or_default(),
            },
        }
    }
}

/// `redis_nodes`: an array of strings.
pub fn read_nodes(r: &mut Reader, s: &Section, key: &str) -> Option<Vec<String>> {
    let value = s.table.get(key)?;
    let strings = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    });
    if strings.is_none() {
        let shown = match value {
            Value::Array(_) => None,
            other => Some(other.to_string()),
        };
        r.problem(
            &s.key(key),
            shown,
            "must be an array of redis:// or rediss:// URLs, e.g. [\"redis://10.0.0.5:7000\"]",
        );
    }
    strings
}

/// The mode's keys: `redis_nodes` and `redis_sentinel_master` only with the modes that use
/// them (and then required), no URL with cluster or sentinel, each node a URL without a
/// password or a database other than 0, all of one scheme.
pub fn check(r: &mut Reader, config: &RateLimitConfig) {
    let mode = config.redis_mode;
    let shown_mode = Some(format!("{:?}", mode.as_str()));
    let master = config.redis_sentinel_master.as_deref();
    let shown_master = master.map(|m| format!("{m:?}"));
    let has_nodes = !config.redis_nodes.is_empty();
    if config.backend == Backend::Local {
        let why =
            "set only with backend = \"redis\" (with backend = \"local\" it would be ignored)";
        if mode != RedisMode::Standalone {
            r.problem("rate_limit.redis_mode", shown_mode, why);
        }
        if has_nodes {
            r.problem("rate_limit.redis_nodes", None, why);
        }
        if master.is_some() {
            r.problem("rate_limit.redis_sentinel_master", shown_master, why);
        }
        return;
    }
    if mode == RedisMode::Standalone {
        if has_nodes {
            let why = "only with redis_mode = \"cluster\" (its seed nodes) or \"sentinel\" (the sentinels); a standalone Redis is redis_url or redis_url_env";
            r.problem("rate_limit.redis_nodes", None, why);
        }
    } else {
        check_nodes(r, mode, &config.redis_nodes);
    }
    match (mode, master) {
        (RedisMode::Sentinel, None) => r.problem(
            "rate_limit.redis_sentinel_master",
            None,
            "required with redis_mode = \"sentinel\": the name the sentinels know the master by (sentinel monitor <name> ...)",
        ),
        (RedisMode::Sentinel, Some(name)) if name.trim().is_empty() => r.problem(
            "rate_limit.redis_sentinel_master",
            shown_master,
            "must not be empty: the name the sentinels know the master by",
        ),
        (RedisMode::Sentinel, Some(_)) | (_, None) => {}
        (_, Some(_)) => r.problem(
            "rate_limit.redis_sentinel_master",
            shown_master,
            "only with redis_mode = \"sentinel\"",
        ),
    }
}

/// The URL keys are refused, and each node checked, for cluster and sentinel.
fn check_nodes(r: &mut Reader, mode: RedisMode, nodes: &[String]) {
    let what = match mode {
        RedisMode::Sentinel => "the sentinels",
        _ => "the cluster's seed nodes",
    };
    // A value of the wrong type is one problem already.
    let unreadable = r.problems.iter().any(|p| p.key == "rate_limit.redis_nodes");
    if nodes.is_empty() && !unreadable {
        r.problem(
            "rate_limit.redis_nodes",
            None,
            &format!(
                "required with redis_mode = \"{}\": {what}, e.g. [\"redis://10.0.0.5:{}\"]",
                mode.as_str(),
                if mode == RedisMode::Sentinel {
                    26379
                } else {
                    7000
                }
            ),
        );
    }
    if nodes.len() > MAX_NODES {
        let why = format!("at most {MAX_NODES} nodes ({} given)", nodes.len());
        r.problem("rate_limit.redis_nodes", None, &why);
    }
    let mut schemes = nodes
        .iter()
        .map(|n| n.get(..9).map(|s| s.starts_with("rediss")));
    if let Some(first) = schemes.next() {
        if schemes.any(|s| s != first) {
            let why = "all nodes must use one scheme: redis:// for all, or rediss:// (TLS) for all";
            r.problem("rate_limit.redis_nodes", None, why);
        }
    }
    for node in nodes {
        let shown = Some(format!("{:?}", redact(node)));
        if let Err(e) = check_url(node, false) {
            r.problem("rate_limit.redis_nodes", shown, &e.to_string());
        } else if !database_is_zero(node) {
            let why = "names a database: a cluster has database 0 only, and the sentinels have none; remove the /<db> part";
            r.problem("rate_limit.redis_nodes", shown, why);
        }
    }
}

/// The URL names no database, or database 0.
fn database_is_zero(url: &str) -> bool {
    redis::parse_redis_url(url).is_some_and(|u| {
        let path = u.path().trim_start_matches('/');
        path.is_empty() || path == "0"
    })
}

/// The message for a `redis_url` / `redis_url_env` set with cluster or sentinel.
pub fn url_refused(mode: RedisMode) -> String {
    let what = match mode {
        RedisMode::Sentinel => "the sentinels",
        _ => "the cluster's seed nodes",
    };
    format!(
        "not with redis_mode = \"{}\": list {what} in redis_nodes",
        mode.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    fn parse(lines: &str) -> Result<Topology, Vec<String>> {
        let text = format!("{MINIMAL}[rate_limit]\nbackend = \"redis\"\n{lines}\n");
        Config::parse(&text)
            .map(|c| c.rate_limit.redis_topology())
            .map_err(|p| p.0.into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn each_mode_reads_its_keys() {
        assert_eq!(
            parse("redis_url = \"redis://r:6379\""),
            Ok(Topology::Standalone)
        );
        assert_eq!(
            parse("redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\", \"redis://b:7000/0\"]"),
            Ok(Topology::Cluster {
                nodes: vec!["redis://a:7000".into(), "redis://b:7000/0".into()]
            })
        );
        assert_eq!(
            parse("redis_mode = \"sentinel\"\nredis_nodes = [\"rediss://s:26379\"]\nredis_sentinel_master = \"mymaster\""),
            Ok(Topology::Sentinel {
                sentinels: vec!["rediss://s:26379".into()],
                master: "mymaster".into()
            })
        );
    }

    #[test]
    fn the_example_switched_to_cluster_and_to_sentinel_parses() {
        let example = include_str!("../../config/gateway.example.toml")
            .replace("backend = \"local\"", "backend = \"redis\"")
            .replace("# redis_nodes =", "redis_nodes =");
        let cluster = example.replace("# redis_mode = \"standalone\"", "redis_mode = \"cluster\"");
        let config = Config::parse(&cluster).expect("valid");
        assert!(
            matches!(config.rate_limit.redis_topology(), Topology::Cluster { nodes } if nodes.len() == 3)
        );
        let sentinel = example
            .replace("# redis_mode = \"standalone\"", "redis_mode = \"sentinel\"")
            .replace("# redis_sentinel_master =", "redis_sentinel_master =");
        let config = Config::parse(&sentinel).expect("valid");
        assert!(
            matches!(config.rate_limit.redis_topology(), Topology::Sentinel { master, .. } if master == "mymaster")
        );
    }

    #[test]
    fn the_url_keys_are_refused_with_cluster_and_sentinel() {
        for mode in ["cluster", "sentinel"] {
            let problems = parse(&format!(
                "redis_mode = \"{mode}\"\nredis_nodes = [\"redis://a:7000\"]\nredis_sentinel_master = \"m\"\nredis_url_env = \"V\""
            ))
            .expect_err("refused");
            let url = problems
                .iter()
                .find(|p| p.starts_with("rate_limit.redis_url_env"))
                .expect("the URL key named");
            assert!(
                url.contains(&format!("not with redis_mode = \"{mode}\"")),
                "{url}"
            );
        }
    }

    #[test]
    fn more_nodes_than_the_cap_are_refused() {
        let nodes: Vec<String> = (0..=MAX_NODES)
            .map(|i| format!("\"redis://n{i}:7000\""))
            .collect();
        let problems = parse(&format!(
            "redis_mode = \"cluster\"\nredis_nodes = [{}]",
            nodes.join(", ")
        ))
        .expect_err("refused");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("at most 100 nodes (101 given)"),
            "{}",
            problems[0]
        );
    }
}
