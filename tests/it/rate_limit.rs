//! Rate limits through the gateway: per group, per app, and what reaches the upstream.
//! Increments here run with coalescing off: with it on, a refused increment waits for its
//! token (see coalesce.rs).

use std::time::Duration;

use crate::support::*;

fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

#[tokio::test]
async fn a_hot_group_is_limited_while_others_pass() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 5\napp_per_second = 1000\napp_burst = 1000\n[coalesce]\nenabled = false\n",
    ))
    .await;
    for i in 0..5 {
        assert_eq!(
            post(gw.addr, UPDATE, increase("hot")).await.error_code(),
            0,
            "request {i}"
        );
    }
    let refused = post(gw.addr, UPDATE, increase("hot")).await;
    refused.assert_rejection(200, 10006, "rate_limit_group");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert_eq!(retry_after, 1);
    assert!(refused.json()["ErrorInfo"]
        .as_str()
        .expect("info")
        .contains("hot"));
    assert_eq!(
        post(gw.addr, UPDATE, increase("cold")).await.error_code(),
        0,
        "another group passes"
    );
    assert_eq!(
        emulator.emulator.store().value("hot", "likes"),
        Some(5),
        "the refused one never reached it"
    );
    assert_eq!(emulator.emulator.requests(), 6);

    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="group"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="rate_limit_group"}"#
        ),
        1.0
    );
    assert!(
        !metrics.contains("hot") && !metrics.contains("cold"),
        "no GroupId in /metrics"
    );
}

#[tokio::test]
async fn a_low_app_limit_yields_60007() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 100\ngroup_burst = 100\napp_per_second = 1\napp_burst = 2\n[coalesce]\nenabled = false\n",
    ))
    .await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let reply = post(gw.addr, UPDATE, increase(&format!("g{i}"))).await;
        if reply.rejected().is_some() {
            reply.assert_rejection(200, 60007, "rate_limit_app");
            assert!(
                reply.headers["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse::<u64>()
                    .expect("secs")
                    >= 1
            );
        }
        codes.push(reply.error_code());
    }
    assert_eq!(codes, [0, 0, 60007, 60007, 60007, 60007]);
    // Each API has its own app budget.
    assert_eq!(
        post(gw.addr, GET, r#"{"GroupId":"g0"}"#).await.error_code(),
        0
    );
    assert_eq!(emulator.emulator.requests(), 3);
    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="app"}"#
        ),
        4.0
    );
}

#[tokio::test]
async fn invalid_requests_spend_no_tokens() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1\napp_burst = 1\n",
    ))
    .await;
    for _ in 0..5 {
        post(gw.addr, UPDATE, r#"{"GroupId":"g","GroupCounter":[]}"#)
            .await
            .assert_rejection(200, 10004, "validation");
    }
    assert_eq!(post(gw.addr, UPDATE, increase("g")).await.error_code(), 0);
}

#[tokio::test]
async fn tracked_groups_fall_back_after_cleanup() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 100\ngroup_burst = 100\napp_per_second = 1000000\napp_burst = 1000000\ncleanup_interval = \"300ms\"\n",
    ))
    .await;
    // Many distinct groups over a few keep-alive connections, bounded in count.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let reply = post(addr, GET, format!(r#"{{"GroupId":"w{worker}-{i}"}}"#)).await;
                assert_eq!(reply.error_code(), 0);
            }
        }));
    }
    // While traffic flows, cleanups keep recent groups.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let during = metric(
        &scrape(gw.admin).await,
        "chat_gateway_rate_limit_tracked_groups",
    );
    for t in tasks {
        t.await.expect("worker");
    }
    assert!(during > 0.0, "groups tracked while traffic flows");
    // Quiet for longer than the bucket's refill plus a cleanup interval: all forgotten.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tracked = metric(
            &scrape(gw.admin).await,
            "chat_gateway_rate_limit_tracked_groups",
        );
        if tracked == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still tracking {tracked} groups"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_request_refused_by_its_group_limit_spends_nothing_of_the_apps_budget() {
    let emulator = spawn_emulator(None).await;
    // The app's budget is two calls; the hot group's is one.
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        // Refusals at once: with coalescing an increment would wait for its token instead.
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1\napp_burst = 2\n[coalesce]\nenabled = false\n",
    ))
    .await;
    assert_eq!(post(gw.addr, UPDATE, increase("hot")).await.error_code(), 0);
    for _ in 0..3 {
        post(gw.addr, UPDATE, increase("hot"))
            .await
            .assert_rejection(200, 10006, "rate_limit_group");
    }
    // Had the group refusals taken app tokens, this would be 60007.
    assert_eq!(
        post(gw.addr, UPDATE, increase("cold")).await.error_code(),
        0,
        "the app's second token is still there"
    );
    post(gw.addr, UPDATE, increase("third"))
        .await
        .assert_rejection(200, 60007, "rate_limit_app");
    assert_eq!(emulator.emulator.requests(), 2);
}

fn set(group: &str) -> String {
    format!(r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Set"}}"#)
}

/// `mode = "shadow"`: what enforcing would refuse is forwarded, and counted by scope, exactly.
#[tokio::test]
async fn shadow_mode_forwards_what_enforcing_would_refuse_and_counts_it() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\nmode = \"shadow\"\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1\napp_burst = 2\n",
    ))
    .await;
    // Enforcing: g passes, g x3 over its group's budget, h passes (the app's burst is 2), k
    // over the app's budget.
    for group in ["g", "g", "g", "g", "h", "k"] {
        let reply = post(gw.addr, UPDATE, set(group)).await;
        assert_eq!(reply.error_code(), 0, "{group}: {:?}", reply.body);
        assert!(reply.rejected().is_none());
    }
    assert_eq!(emulator.emulator.requests(), 6, "every request forwarded");
    let m = scrape(gw.admin).await;
    let api = "group_open_http_svc/update_group_counter";
    let shadow = |scope: &str| {
        metric(
            &m,
            &format!(r#"chat_gateway_rate_limit_shadow_total{{api="{api}",scope="{scope}"}}"#),
        )
    };
    assert_eq!((shadow("group"), shadow("app")), (3.0, 1.0));
    for scope in ["group", "app"] {
        assert_eq!(
            metric(
                &m,
                &format!(r#"chat_gateway_rate_limited_total{{api="{api}",scope="{scope}"}}"#)
            ),
            0.0,
            "nothing refused"
        );
    }
    // The same calls enforced: refused as counted above.
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1\napp_burst = 2\n",
    ))
    .await;
    let codes: Vec<i64> = {
        let mut codes = Vec::new();
        for group in ["g", "g", "g", "g", "h", "k"] {
            codes.push(post(gw.addr, UPDATE, set(group)).await.error_code());
        }
        codes
    };
    assert_eq!(codes, [0, 10006, 10006, 10006, 0, 60007]);
}
