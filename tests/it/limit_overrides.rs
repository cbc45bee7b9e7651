//! `[[rate_limit.groups]]` and `[rate_limit.apis."svc/cmd"]` through the gateway: exact ids,
//! prefixes (the longest wins), the defaults for the rest, a per-API budget, the same fleet-wide
//! through a real redis-server, and what `check-config` refuses. Coalescing is off, so that a
//! call over budget is refused at once instead of waiting for its token.

use std::time::Duration;

use crate::binary::check_config_finds_one_problem;
use crate::redis_limits::{increase, redis_sections, wait_for_gauge};
use crate::redis_server::RedisServer;
use crate::support::*;

/// Default 3 per group; "vip" 6; "load-*" 1; "load-big-*" 2; get_group_counter 1 for the app.
/// All at 1/s, so that the bursts decide within the test.
const OVERRIDES: &str =
    "[[rate_limit.groups]]\nids = [\"vip\", \"load-vip\"]\nper_second = 1\nburst = 6\n\
[[rate_limit.groups]]\nprefix = \"load-\"\nper_second = 1\nburst = 1\n\
[[rate_limit.groups]]\nprefix = \"load-big-\"\nper_second = 1\nburst = 2\n\
[rate_limit.apis.\"group_open_http_svc/get_group_counter\"]\nper_second = 1\nburst = 1\n\
[coalesce]\nenabled = false\n";

/// How many of 8 increments of `group` pass, the rest refused for the group.
async fn passed(addr: std::net::SocketAddr, group: &str) -> usize {
    crate::reload::passed(addr, group, 8).await
}

#[tokio::test]
async fn each_group_and_api_takes_its_own_budget() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &format!("[rate_limit]\ngroup_per_second = 1\ngroup_burst = 3\napp_per_second = 1000\napp_burst = 1000\n{OVERRIDES}"),
    ))
    .await;
    assert_eq!(passed(gw.addr, "vip").await, 6, "exact id");
    assert_eq!(
        passed(gw.addr, "load-vip").await,
        6,
        "an exact id beats a prefix"
    );
    assert_eq!(passed(gw.addr, "load-1").await, 1, "prefix");
    assert_eq!(
        passed(gw.addr, "load-big-1").await,
        2,
        "the longest prefix wins"
    );
    assert_eq!(passed(gw.addr, "other").await, 3, "the defaults");
    assert_eq!(
        passed(gw.addr, "loa").await,
        3,
        "a shorter id matches no prefix"
    );
    assert_eq!(
        emulator.emulator.store().value("load-big-1", "likes"),
        Some(2)
    );
    // get_group_counter has its own app-wide budget of 1; update keeps the default.
    let first = post(gw.addr, GET, r#"{"GroupId":"a"}"#).await;
    assert_eq!(first.error_code(), 0);
    post(gw.addr, GET, r#"{"GroupId":"b"}"#)
        .await
        .assert_rejection(200, 60007, "rate_limit_app");
    assert_eq!(
        passed(gw.addr, "fresh").await,
        3,
        "update's app budget is its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_hold_fleet_wide_through_redis() {
    let redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    let rates = "group_per_second = 1\ngroup_burst = 3\napp_per_second = 1000\napp_burst = 1000\n";
    let text = config_text(
        &emulator.endpoint(),
        "",
        &format!("{}{OVERRIDES}", redis_sections(&redis.url(), "1s", rates)),
    );
    let (a, b) = (spawn_gateway(&text).await, spawn_gateway(&text).await);
    for gw in [&a, &b] {
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    }
    // "load-big-7" has a burst of 2 for the whole fleet: one call through each gateway.
    for gw in [&a, &b] {
        let reply = post(gw.addr, UPDATE, increase("load-big-7")).await;
        assert_eq!(reply.error_code(), 0);
    }
    for gw in [&a, &b] {
        post(gw.addr, UPDATE, increase("load-big-7"))
            .await
            .assert_rejection(200, 10006, "rate_limit_group");
    }
    assert_eq!(passed(a.addr, "vip").await, 6, "exact id");
    assert_eq!(passed(b.addr, "load-2").await, 1, "prefix");
    assert_eq!(passed(a.addr, "other").await, 3, "the defaults");
    assert_eq!(
        post(b.addr, GET, r#"{"GroupId":"a"}"#).await.error_code(),
        0
    );
    post(a.addr, GET, r#"{"GroupId":"b"}"#)
        .await
        .assert_rejection(200, 60007, "rate_limit_app");
    assert_eq!(
        emulator.emulator.store().value("load-big-7", "likes"),
        Some(2)
    );
}

#[test]
fn check_config_refuses_duplicates_both_keys_and_a_missing_rate() {
    let dir = tempfile::tempdir().expect("dir");
    let g = "[[rate_limit.groups]]\n";
    for (extra, expected) in [
        (
            format!("{g}ids = [\"a\", \"b\"]\nper_second = 5\n{g}ids = [\"b\"]\nper_second = 6\n"),
            "rate_limit.groups[1].ids = \"b\": GroupId named twice",
        ),
        (
            format!("{g}prefix = \"p-\"\nper_second = 5\n{g}prefix = \"p-\"\nper_second = 6\n"),
            "rate_limit.groups[1].prefix = \"p-\": prefix named twice",
        ),
        (
            format!("{g}ids = [\"a\"]\nprefix = \"p-\"\nper_second = 5\n"),
            "rate_limit.groups[0]: takes ids or prefix, not both",
        ),
        (
            format!("{g}ids = [\"a\"]\nburst = 5\n"),
            "rate_limit.groups[0].per_second: required",
        ),
        (
            "[rate_limit.apis.\"openim/sendmsg\"]\nburst = 5\n".to_string(),
            "rate_limit.apis.\"openim/sendmsg\".per_second: required",
        ),
    ] {
        check_config_finds_one_problem(dir.path(), &extra, expected);
    }
}
