//! Reloading a gateway whose limits live in Redis: new budgets and overrides hold at once
//! without refilling a spent group, and a new Redis URL moves the checks to that Redis while
//! requests keep passing.

use std::time::{Duration, Instant};

use crate::binary::free_port;
use crate::redis_limits::{wait_for_gauge, UP};
use crate::redis_server::RedisServer;
use crate::reload::{
    config, from_burst_3_to_10_under_load, key_dir, passed, start, stop, wait_for_reloads,
    ConfigMap,
};
use crate::support::*;

fn redis(url: &str, rest: &str) -> String {
    format!("backend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout = \"500ms\"\n{rest}")
}

#[tokio::test]
async fn redis_budgets_overrides_and_url_change_while_serving() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let text = |rate_limit: String| config(ports, &emulator.endpoint(), keys.path(), &rate_limit);
    let mut map = ConfigMap::new(&text(redis(&first.url(), "group_burst = 3")));
    let gw = start(&map.path(), ports).await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    let vip = "group_burst = 10\n[[rate_limit.groups]]\nids = [\"vip\"]\nper_second = 1\nburst = 6";
    let load = from_burst_3_to_10_under_load(&gw, &mut map, &text(redis(&first.url(), vip))).await;
    assert_eq!(passed(gw.addr, "vip", 8).await, 6, "the new override");
    assert!(first.calls("evalsha") > 0, "checked in Redis");

    // Another Redis: the checks go there once it answers; the requests never stop passing.
    map.swap(&text(redis(&second.url(), vip)));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in 0.. {
        if second.calls("evalsha") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no check reached the new Redis");
        assert_eq!(passed(gw.addr, &format!("moving-{n}"), 1).await, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_first = first.calls("evalsha");
    let moved = passed(gw.addr, "moved", 12).await;
    assert!(
        (10..=12).contains(&moved),
        "the burst in force, on the new Redis: {moved}"
    );
    assert_eq!(
        first.calls("evalsha"),
        on_first,
        "no check on the old Redis"
    );
    load.finish().await;
    assert_eq!(metric(&scrape(gw.admin).await, UP), 1.0);
    assert_eq!(
        metric(
            &scrape(gw.admin).await,
            "chat_gateway_config_restart_pending"
        ),
        0.0
    );
    let output = stop(gw).await;
    assert!(
        output.contains("new Redis connection settings in force"),
        "{output}"
    );
}
