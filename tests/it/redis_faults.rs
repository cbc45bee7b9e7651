//! Fleet-wide rate limits when Redis misbehaves without being down, on a real redis-server:
//! an impossible GCRA state (its host's clock stepped back).

use std::time::Duration;

use crate::redis_limits::{increase, redis_sections, wait_for_gauge};
use crate::redis_server::RedisServer;
use crate::support::*;

fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", reply.headers))
}

/// Redis's clock now, in microseconds.
fn redis_now_us(redis: &RedisServer) -> u64 {
    let time = redis.cli(&["time"]);
    let mut parts = time
        .split_whitespace()
        .map(|p| p.parse::<u64>().expect("TIME"));
    let (secs, micros) = (parts.next().expect("secs"), parts.next().expect("micros"));
    secs * 1_000_000 + micros
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_far_in_the_future_blocks_a_key_for_one_interval_only() {
    let redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    // Group: t = 500 ms, tau = 500 ms; app: t = 100 ms, tau = 900 ms.
    let rates = "group_per_second = 2\ngroup_burst = 2\napp_per_second = 10\napp_burst = 10\n";
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &format!(
            "{}[coalesce]\nenabled = false\n",
            redis_sections(&redis.url(), "1s", rates)
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    // What keys written before the Redis host's clock stepped back 104 days look like.
    let future = (redis_now_us(&redis) + 9_000_000_000_000).to_string();
    let prefix = format!("{{chat-gateway:{SDKAPPID}}}");
    let app_key = format!("{prefix}:app:group_open_http_svc/update_group_counter");
    redis.cli(&["set", &format!("{prefix}:group:hot"), &future]);
    redis.cli(&["set", &app_key, &future]);

    let group_refusal = post(gw.addr, UPDATE, increase("hot")).await;
    group_refusal.assert_rejection(200, 10006, "rate_limit_group");
    let app_refusal = post(gw.addr, UPDATE, increase("cold")).await;
    app_refusal.assert_rejection(200, 60007, "rate_limit_app");
    let asked = redis.calls("evalsha");

    // Past the longest wait the budget allows (the group's interval), the gateway asks Redis
    // again, and Redis has corrected the states to budgets spent when it was first asked.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        post(gw.addr, UPDATE, increase("hot")).await.error_code(),
        0,
        "forwarded one interval later"
    );
    assert!(redis.calls("evalsha") > asked, "Redis was asked again");
    assert_eq!(retry_after(&group_refusal), 1, "not 9 million seconds");
    assert_eq!(retry_after(&app_refusal), 1);
    let pttl: i64 = redis.cli(&["pttl", &app_key]).trim().parse().expect("pttl");
    assert!(
        pttl > 0 && pttl <= 1_100,
        "the app key expires as usual: {pttl}"
    );
}
