//! `redis_mode = "sentinel"` on a real master, replica and three sentinels: the gateway finds
//! the master through the sentinels and, after a failover (asked for, or the master killed),
//! sends its checks to the new master within 2 s of the promotion, while no request waits
//! longer than `redis_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_cluster::{mode_sections, Load};
use crate::redis_limits::{wait_for_gauge, UP};
use crate::redis_server::RedisServer;
use crate::redis_sets::{wait_until, SentinelSet};
use crate::support::*;

const TIMEOUT: Duration = Duration::from_millis(100);

pub(crate) enum Failover {
    /// `SENTINEL FAILOVER`: the old master stays up (and is turned into a replica).
    Asked,
    /// The master killed by PID: the sentinels agree it is down, then promote the replica.
    MasterKilled,
}

/// Starts the set and a gateway on it under load, fails the master over, and checks that the
/// gateway uses the new master within 2 s of the promotion.
async fn follows(failover: Failover) {
    let set = tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .expect("sentinel set");
    follows_in(set, "", failover, |_| {}).await;
}

/// A gateway on `set` (with `auth` lines in its `[rate_limit]`) under load: `check_master`
/// of the master it uses, then the failover, which it follows within 2 s of the promotion,
/// and `check_master` of the new master.
pub(crate) async fn follows_in(
    mut set: SentinelSet,
    auth: &str,
    failover: Failover,
    check_master: impl Fn(&RedisServer),
) {
    assert_eq!(set.master(), Some(0), "the first server starts as master");
    let emulator = spawn_emulator(None).await;
    let extra = format!(
        "redis_sentinel_master = \"{}\"\nredis_timeout = \"{}ms\"\ngroup_per_second = 100000\ngroup_burst = 100000\napp_per_second = 100000\napp_burst = 100000\n{auth}",
        SentinelSet::MASTER,
        TIMEOUT.as_millis()
    );
    let text = mode_sections("sentinel", &set.nodes_toml(), &extra);
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", &text)).await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(10)).await;
    assert!(
        set.servers[0].calls("evalsha") > 0,
        "checks go to the master"
    );
    check_master(&set.servers[0]);
    let addrs: [SocketAddr; 1] = [gw.addr];
    let load = Load::start(&addrs);
    tokio::time::sleep(Duration::from_millis(300)).await;

    match failover {
        Failover::Asked => {
            let said = set.sentinels[0].cli(&["sentinel", "failover", SentinelSet::MASTER]);
            assert!(said.contains("OK"), "SENTINEL FAILOVER: {said}");
        }
        Failover::MasterKilled => set.servers[0].kill(),
    }
    let set = Arc::new(set);
    let promoted = {
        let set = set.clone();
        tokio::task::spawn_blocking(move || {
            wait_until("the replica is promoted", Duration::from_secs(30), || {
                set.servers[1].cli(&["role"]).starts_with("master")
            });
            (Instant::now(), set.servers[1].calls("evalsha"))
        })
    };
    let (promotion, evalsha_then) = promoted.await.expect("promotion");
    loop {
        let up = metric(&scrape(gw.admin).await, UP) == 1.0;
        if up && set.servers[1].calls("evalsha") > evalsha_then + 10 {
            break;
        }
        assert!(
            promotion.elapsed() < Duration::from_secs(2),
            "checks not on the new master 2 s after the promotion (backend_up {up})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("followed {:?} after the promotion", promotion.elapsed());
    let longest = load.finish().await;
    assert!(
        longest < TIMEOUT + Duration::from_millis(900),
        "a call waited {longest:?} with redis_timeout = {TIMEOUT:?}"
    );
    assert_eq!(metric(&scrape(gw.admin).await, UP), 1.0);
    check_master(&set.servers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asked_failover_is_followed_within_two_seconds() {
    follows(Failover::Asked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_is_followed_within_two_seconds_of_the_promotion() {
    follows(Failover::MasterKilled).await;
}
