//! New budgets for a running Redis limiter (a reloaded config): the states in Redis convert
//! to the new numbers keeping the tokens they have left, never refilling a spent bucket, and
//! a state written without its numbers (by a gateway of a version before they were kept) is
//! read as it always was.

use std::time::Duration;

use chat_gateway::rate_limit::{RateLimiter, RedisLimiter, Refusal, Scope};

use crate::redis_limits::{limiter, limits, update};
use crate::redis_server::RedisServer;
use crate::support::*;

/// How many of `n` checks of `group` pass, one after the other; the rest must be refusals
/// for the group.
async fn passes(l: &RedisLimiter, group: &str, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        match l
            .check_shared(&update(), Some(group))
            .await
            .expect("Redis answered")
        {
            Ok(()) => passed += 1,
            Err(Refusal { scope, .. }) => assert_eq!(scope, Scope::Group),
        }
    }
    passed
}

fn rebudget(l: &RedisLimiter, group_rate: u32, group_burst: u32) {
    let config = limits(group_rate, group_burst, 1000, 1000);
    let reloaded = l.rebudgeted(&config, SDKAPPID).expect("no setup error");
    assert!(reloaded.is_some(), "Redis budgets change while running");
}

#[tokio::test]
async fn a_spent_burst_stays_spent_under_a_larger_one_and_earns_at_the_new_rate() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(1, 5, 1000, 1000)).await;
    assert_eq!(passes(&l, "spent", 6).await, 5, "the first burst");

    rebudget(&l, 2, 100);
    let refusal = l
        .check_shared(&update(), Some("spent"))
        .await
        .expect("answered")
        .expect_err("no token back from the larger burst");
    assert!(
        refusal.retry_after <= Duration::from_millis(500),
        "the next token comes at the new rate (500 ms), not the old (1 s): {:?}",
        refusal.retry_after
    );
    tokio::time::sleep(Duration::from_millis(510)).await;
    assert_eq!(passes(&l, "spent", 1).await, 1, "earned at the new rate");
    assert_eq!(passes(&l, "fresh", 101).await, 100, "the new burst");
    let kept = redis.cli(&[
        "get",
        &format!("{{chat-gateway:{SDKAPPID}}}:numbers:group:spent"),
    ]);
    assert_eq!(
        kept.trim(),
        "500000000 49500000000",
        "the numbers the state was written under"
    );
}

#[tokio::test]
async fn the_tokens_left_are_kept_and_a_lower_rate_gives_none_back() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(1, 5, 1000, 1000)).await;
    assert_eq!(passes(&l, "partly", 2).await, 2);
    rebudget(&l, 1, 10);
    // 3 left of 5 are 3 left of 10; a refilled bucket would pass 10, an unconverted state 8.
    assert_eq!(
        passes(&l, "partly", 10).await,
        3,
        "the tokens left, no more"
    );

    // 50 spent at 5/s are ten seconds of debt: at 1/s that would read as ten tokens spent.
    let l = limiter(&redis, &limits(5, 50, 1000, 1000)).await;
    assert_eq!(passes(&l, "fast", 51).await, 50);
    rebudget(&l, 1, 50);
    assert_eq!(
        passes(&l, "fast", 5).await,
        0,
        "no token back from a lower rate"
    );
}

#[tokio::test]
async fn a_state_without_its_numbers_is_read_under_the_checks_numbers() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(1, 5, 1000, 1000)).await;
    assert_eq!(passes(&l, "old", 5).await, 5);
    // What a gateway before the numbers were kept leaves: the state alone.
    let numbers = format!("{{chat-gateway:{SDKAPPID}}}:numbers:group:old");
    assert_eq!(redis.cli(&["del", &numbers]).trim(), "1");
    rebudget(&l, 1, 10);
    // Five seconds of debt at 1/s: five of the new ten are spent, as before numbers were kept
    // (converted, none would pass; taken as new, ten).
    assert_eq!(passes(&l, "old", 10).await, 5);
}
