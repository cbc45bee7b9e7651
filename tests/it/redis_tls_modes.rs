//! TLS (a client certificate, every port TLS alone) and an ACL user in `redis_mode =
//! "cluster"` and `"sentinel"`, on real servers: a TLS cluster (its bus over TLS too) shared by
//! two gateways as `gateway`, refusals at start named as in standalone mode, and a TLS
//! master, replica and sentinels whose failover the gateway follows.

use std::path::Path;
use std::time::Duration;

use crate::redis_cluster::mode_sections;
use crate::redis_limits::wait_for_gauge;
use crate::redis_sentinel::{follows_in, Failover};
use crate::redis_server::RedisServer;
use crate::redis_sets::{RedisCluster, SentinelSet};
use crate::redis_tls::{client_cert_lines, exits_saying, write_password};
use crate::support::*;

const GATEWAY_PW: &str = "gw-pw-Modes-Secret-37";

/// The ACL user `gateway` with [`GATEWAY_PW`], as `redis-server` options; the default user
/// stays (without a password) for the servers' own links and the test's `redis-cli`.
fn gateway_user() -> Vec<String> {
    [
        "--user",
        "gateway",
        "on",
        &format!(">{GATEWAY_PW}"),
        "~*",
        "&*",
        "+@all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A 3-master cluster on TLS ports alone, with the `gateway` user on every node. (Started
/// before any gateway, so blocking the test's thread meanwhile holds nothing up.)
fn tls_cluster(ca: &TestCa) -> RedisCluster {
    let user = gateway_user();
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    RedisCluster::start_tls(ca, 3, &user)
}

/// The gateway's user, password file, CA and client certificate lines.
fn auth_lines(ca: &TestCa, password_file: &Path, with_ca: bool) -> String {
    let mut lines = format!(
        "redis_username = \"gateway\"\nredis_password_file = \"{}\"\n{}",
        password_file.display(),
        client_cert_lines(ca)
    );
    if with_ca {
        lines.push_str(&format!("redis_ca_file = \"{}\"\n", ca.ca_file().display()));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_on_a_tls_cluster_as_an_acl_user() {
    let ca = TestCa::new();
    let cluster = tls_cluster(&ca);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let emulator = spawn_emulator(None).await;
    // Four calls at once, then one a second: fewer than eight pass in the run below, where
    // each gateway alone would pass four.
    let extra = format!(
        "redis_timeout = \"1s\"\ngroup_per_second = 1000\ngroup_burst = 1000\napp_per_second = 1\napp_burst = 4\n{}",
        auth_lines(&ca, &password, true)
    );
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let text = mode_sections("cluster", &cluster.nodes_toml(), &extra);
        let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", &text)).await;
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(10)).await;
        gateways.push(gw);
    }
    let master = cluster
        .master_of(cluster.app_slot())
        .expect("the app's master");
    let clients = cluster.nodes[master].cli(&["client", "list"]);
    assert!(clients.contains(" user=gateway "), "{clients}");
    crate::redis_tls::two_gateways_pass_one_budget(&gateways, &emulator).await;
}

#[tokio::test]
async fn a_tls_cluster_refusing_the_password_or_untrusted_at_start_stops_the_gateway() {
    let ca = TestCa::new();
    let cluster = tls_cluster(&ca);
    let dir = tempfile::tempdir().expect("dir");
    let first = cluster.nodes[0].port;

    let wrong = write_password(dir.path(), "not-the-Password-29");
    let section = mode_sections(
        "cluster",
        &cluster.nodes_toml(),
        &auth_lines(&ca, &wrong, true),
    );
    let said = format!("Redis at 127.0.0.1:{first} refused the username/password");
    let text = exits_saying(&section, &said);
    assert!(!text.contains("not-the-Password-29"), "{text}");

    // No redis_ca_file: the public roots do not vouch for the test CA.
    let right = write_password(dir.path(), GATEWAY_PW);
    let section = mode_sections(
        "cluster",
        &cluster.nodes_toml(),
        &auth_lines(&ca, &right, false),
    );
    let said = format!("the certificate of Redis at 127.0.0.1:{first} is not trusted");
    let text = exits_saying(&section, &said);
    assert!(text.contains("redis_ca_file"), "says what to set: {text}");
    assert!(!text.contains(GATEWAY_PW), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_sentinel_set_with_an_acl_user_is_used_and_its_failover_followed() {
    let ca = TestCa::new();
    let user = gateway_user();
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    let set = SentinelSet::start_tls(&ca, &user);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let auth = auth_lines(&ca, &password, true);
    // The master, before the failover and after it, is used as `gateway`.
    let as_gateway = |master: &RedisServer| {
        let clients = master.cli(&["client", "list"]);
        assert!(clients.contains(" user=gateway "), "{clients}");
    };
    follows_in(set, &auth, Failover::Asked, as_gateway).await;
}

#[test]
fn a_sentinel_found_master_refusing_the_password_at_start_stops_the_gateway_naming_the_master() {
    let ca = TestCa::new();
    let user = gateway_user();
    let user: Vec<&str> = user.iter().map(String::as_str).collect();
    let set = SentinelSet::start_tls(&ca, &user);
    let dir = tempfile::tempdir().expect("dir");
    let wrong = write_password(dir.path(), "not-the-Password-58");
    let extra = format!(
        "redis_sentinel_master = \"{}\"\n{}",
        SentinelSet::MASTER,
        auth_lines(&ca, &wrong, true)
    );
    // The master refused, not the sentinels (asked without the password): its address.
    let master = set.servers[0].port;
    let said = format!("Redis at 127.0.0.1:{master} refused the username/password");
    let text = exits_saying(&mode_sections("sentinel", &set.nodes_toml(), &extra), &said);
    assert!(!text.contains("not-the-Password-58"), "{text}");
}

/// Sentinels that ask for a password (`requirepass`, and the `gateway` user): answered
/// `NOAUTH`, the gateway asks them as `gateway`, finds the master and follows its failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinels_that_ask_for_a_password_are_asked_with_the_gateways_user() {
    let set = tokio::task::spawn_blocking(move || {
        let user = gateway_user();
        let user: Vec<&str> = user[1..].iter().map(String::as_str).collect();
        SentinelSet::start_with_sentinel_auth(&user, "sentinel-pw-Secret-41")
    });
    let set = set.await.expect("sentinel set");
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let auth = format!(
        "redis_username = \"gateway\"\nredis_password_file = \"{}\"\n",
        password.display()
    );
    let as_gateway = |master: &RedisServer| {
        let clients = master.cli(&["client", "list"]);
        assert!(clients.contains(" user=gateway "), "{clients}");
    };
    follows_in(set, &auth, Failover::Asked, as_gateway).await;
}
