//! A batch that waits for its group's token checks again each time a wait ends. Its callers
//! are counted in `chat_gateway_rate_limited_total` like any other refused request: each
//! caller answered 10006 once, under the scope that refused it, and a caller served after
//! refused checks not at all. Locally and on a real redis-server.

use std::time::Duration;

use super::body;
use crate::redis_server::RedisServer;
use crate::support::*;

const REFUSED_GROUP: &str = r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="group"}"#;
const REFUSED_APP: &str = r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="app"}"#;

/// Waves of likes for one group at one token per 250 ms, callers waiting at most 100 ms:
/// some batches are sent after refused checks, some callers run out of time.
async fn waves_are_counted_once_per_refused_caller(rate_limit: &str) {
    let emulator = spawn_emulator(None).await;
    let sections = format!(
        "[rate_limit]\n{rate_limit}group_per_second = 4\ngroup_burst = 1\n\
         [coalesce]\nmax_wait = \"100ms\"\n"
    );
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", &sections)).await;
    let mut callers = Vec::new();
    for _wave in 0..8 {
        for _ in 0..3 {
            let addr = gw.addr;
            callers.push(tokio::spawn(async move {
                post(addr, UPDATE, body("counted", "Increase", &[("likes", 1)])).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (mut ok, mut refused) = (0u32, 0u32);
    for caller in callers {
        let reply = caller.await.expect("caller");
        match reply.error_code() {
            0 => ok += 1,
            _ => {
                reply.assert_rejection(200, 10006, "rate_limit_group");
                refused += 1;
            }
        }
    }
    assert!(
        ok >= 1 && refused >= 1,
        "both kinds of answer: {ok} ok, {refused} refused"
    );
    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(&metrics, REFUSED_GROUP),
        f64::from(refused),
        "each refused caller counted once ({ok} served after their batch's checks)"
    );
    assert_eq!(metric(&metrics, REFUSED_APP), 0.0);
    assert_eq!(
        emulator.emulator.store().value("counted", "likes"),
        Some(i64::from(ok)),
        "exactly the acknowledged likes applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_refused_after_their_batch_waited_are_counted_once_locally() {
    waves_are_counted_once_per_refused_caller("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_refused_after_their_batch_waited_are_counted_once_on_redis() {
    let redis = RedisServer::start();
    let backend = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"500ms\"\n",
        redis.url()
    );
    waves_are_counted_once_per_refused_caller(&backend).await;
}
