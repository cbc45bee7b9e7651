//! Hot-group coalescing through sockets: exactness under concurrency, what is never merged or
//! delayed, max_wait, the batch limits, errors shared by a batch, shared reads, shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::support::*;

const COALESCED: &str = "x-chat-gateway-coalesced";

fn body(group: &str, mode: &str, counters: &[(&str, i64)]) -> String {
    let entries: Vec<String> = counters
        .iter()
        .map(|(k, v)| format!(r#"{{"Key":"{k}","Value":{v}}}"#))
        .collect();
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{}],"Mode":"{mode}"}}"#,
        entries.join(",")
    )
}

/// Sends every body at once, each on its own connection; the replies in the same order.
async fn all_at_once(
    addr: std::net::SocketAddr,
    path: &'static str,
    bodies: Vec<String>,
) -> Vec<Reply> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| tokio::spawn(async move { post(addr, path, b).await }))
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for t in tasks {
        replies.push(t.await.expect("caller"));
    }
    replies
}

fn counters_of(reply: &Reply) -> Vec<(String, i64)> {
    reply.json()["GroupCounter"]
        .as_array()
        .expect("GroupCounter")
        .iter()
        .map(|e| {
            (
                e["Key"].as_str().expect("Key").to_string(),
                e["Value"].as_i64().expect("Value"),
            )
        })
        .collect()
}

fn owned_json(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The (Key, Value) entries of a recorded update body.
fn sent_counters(rec: &Recorded) -> Vec<(String, i64)> {
    let v: serde_json::Value = serde_json::from_slice(&rec.body).expect("json");
    v["GroupCounter"]
        .as_array()
        .expect("GroupCounter")
        .iter()
        .map(|e| {
            (
                e["Key"].as_str().expect("Key").to_string(),
                e["Value"].as_i64().expect("Value"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_group_increments_are_applied_exactly_once_within_the_group_limit() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(50)).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let n = 600;
    let bodies: Vec<String> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                body("live", "Increase", &[("likes", 1), ("gifts", 2)])
            } else {
                body("live", "Increase", &[("likes", 1)])
            }
        })
        .collect();
    let started = Instant::now();
    let replies = all_at_once(gw.addr, UPDATE, bodies).await;
    let took = started.elapsed();
    let (mut likes, mut gifts, mut merged) = (0i64, 0i64, 0usize);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "{i}: {:?}", reply.body);
        assert_eq!(reply.error_code(), 0, "{i}: {:?}", reply.body);
        let keys: Vec<String> = counters_of(reply).into_iter().map(|(k, _)| k).collect();
        if i % 3 == 0 {
            assert_eq!(keys, ["likes", "gifts"], "its own keys, in its order");
            gifts += 2;
        } else {
            assert_eq!(keys, ["likes"], "only its own keys");
        }
        likes += 1;
        if reply.headers.contains_key(COALESCED) {
            merged += 1;
        }
    }
    let store = emulator.emulator.store();
    assert_eq!(
        store.value("live", "likes"),
        Some(likes),
        "each applied once"
    );
    assert_eq!(
        store.value("live", "gifts"),
        Some(gifts),
        "each applied once"
    );
    let calls = emulator.emulator.requests();
    println!("{n} increments in {took:?}: {calls} upstream calls, {merged} merged answers");
    assert!(calls <= 40, "{calls} calls: within the group's burst");
    assert!(merged >= n - 40, "{merged} of {n} answers were merged");
    let metrics = scrape(gw.admin).await;
    let coalesced = metric(
        &metrics,
        r#"chat_gateway_coalesced_requests_total{api="group_open_http_svc/update_group_counter"}"#,
    );
    assert_eq!(coalesced as usize, merged);
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="ok"}"#
        ) as usize,
        n,
        "every caller counted once, as ok"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_upstream_responses_total{api="group_open_http_svc/update_group_counter",error_code="0"}"#
        ) as u64,
        calls,
        "upstream answers counted per call, not per caller"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_coalesce_batch_size_count{api="group_open_http_svc/update_group_counter"}"#
        ) as u64,
        calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_increase_and_decrease_add_up() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(50)).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let bodies: Vec<String> = (0..600)
        .map(|i| match i % 4 {
            0 => body("mixed", "Decrease", &[("likes", 1)]),
            1 => body("mixed", "Increase", &[("likes", 3), ("shares", 1)]),
            2 => body("mixed", "Decrease", &[("shares", 2)]),
            _ => body("mixed", "Increase", &[("likes", 2)]),
        })
        .collect();
    let replies = all_at_once(gw.addr, UPDATE, bodies).await;
    let (mut likes, mut shares) = (0i64, 0i64);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.error_code(), 0, "{i}: {:?}", reply.body);
        match i % 4 {
            0 => likes -= 1,
            1 => {
                likes += 3;
                shares += 1
            }
            2 => shares -= 2,
            _ => likes += 2,
        }
    }
    let store = emulator.emulator.store();
    assert_eq!(store.value("mixed", "likes"), Some(likes));
    assert_eq!(store.value("mixed", "shares"), Some(shares));
    assert!(emulator.emulator.requests() <= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_no_mode_delete_other_groups_and_lone_requests_are_sent_unchanged_at_once() {
    let upstream = spawn_recording(
        None,
        Arc::new(|rec: &Recorded| {
            let keys = if rec.path.ends_with("get_group_counter") {
                "[]".to_string()
            } else {
                r#"[{"Key":"likes","Value":1}]"#.to_string()
            };
            (
                Duration::from_millis(300),
                owned_json(format!(
                    r#"{{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":{keys}}}"#
                )),
            )
        }),
    )
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    // A lone increment, written with odd spacing: it must reach the upstream byte for byte.
    let lone =
        r#"{ "GroupId" : "g", "GroupCounter":[{"Key":"likes","Value":1}], "Mode":"Increase" }"#;
    let addr = gw.addr;
    let first = tokio::spawn(async move {
        let t = Instant::now();
        (post(addr, UPDATE, lone).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let others: Vec<(&'static str, String)> = vec![
        (UPDATE, body("g", "Set", &[("likes", 5)])),
        (
            UPDATE,
            r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":5}]}"#.into(),
        ),
        (
            DELETE,
            r#"{"GroupId":"g","GroupCounterKeys":["likes"]}"#.into(),
        ),
        (GET, r#"{"GroupId":"g"}"#.into()),
        (UPDATE, body("h", "Increase", &[("likes", 1)])),
    ];
    let tasks: Vec<_> = others
        .iter()
        .cloned()
        .map(|(path, b)| {
            tokio::spawn(async move {
                let t = Instant::now();
                (post(addr, path, b).await, t.elapsed())
            })
        })
        .collect();
    for (task, (path, sent)) in tasks.into_iter().zip(&others) {
        let (reply, took) = task.await.expect("caller");
        assert_eq!(reply.error_code(), 0, "{path} {sent}");
        assert!(!reply.headers.contains_key(COALESCED), "{sent}");
        assert!(
            took < Duration::from_millis(550),
            "{sent} waited {took:?}: delayed behind the group's increment"
        );
    }
    let (reply, _) = first.await.expect("first");
    assert_eq!(reply.error_code(), 0);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1 + others.len(), "each sent once, alone");
    assert!(
        seen.iter().any(|r| r.body == lone.as_bytes()),
        "lone bytes unchanged"
    );
    for (_, sent) in &others {
        assert!(
            seen.iter().any(|r| r.body == sent.as_bytes()),
            "{sent} reached the upstream unchanged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_wait_a_caller_gets_10006_and_is_never_applied() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(600)).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[coalesce]\nmax_wait = \"200ms\"\n",
    ))
    .await;
    let addr = gw.addr;
    let first =
        tokio::spawn(
            async move { post(addr, UPDATE, body("w", "Increase", &[("likes", 1)])).await },
        );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let late = post(addr, UPDATE, body("w", "Increase", &[("likes", 10)])).await;
    let took = started.elapsed();
    late.assert_rejection(200, 10006, "rate_limit_group");
    assert!(late.headers.contains_key("retry-after"));
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(500),
        "refused at its max_wait, not before or long after: {took:?}"
    );
    assert_eq!(first.await.expect("first").error_code(), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(emulator.emulator.store().value("w", "likes"), Some(1));
    assert_eq!(emulator.emulator.requests(), 1, "the late one never sent");
    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="group"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_batch_waits_for_its_token_up_to_max_wait() {
    let emulator = spawn_emulator(None).await;
    // One call per 250ms for the group.
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 4\ngroup_burst = 1\n[coalesce]\nmax_wait = \"1s\"\n",
    ))
    .await;
    assert_eq!(
        post(gw.addr, UPDATE, body("t", "Increase", &[("n", 1)]))
            .await
            .error_code(),
        0
    );
    let started = Instant::now();
    let waited = post(gw.addr, UPDATE, body("t", "Increase", &[("n", 1)])).await;
    assert_eq!(waited.error_code(), 0, "the token came within max_wait");
    assert!(started.elapsed() >= Duration::from_millis(150), "it waited");
    // With a token only every 2s, a caller whose max_wait is 300ms is refused at once.
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\n[coalesce]\nmax_wait = \"300ms\"\n",
    ))
    .await;
    assert_eq!(
        post(gw.addr, UPDATE, body("u", "Increase", &[("n", 1)]))
            .await
            .error_code(),
        0
    );
    let started = Instant::now();
    let refused = post(gw.addr, UPDATE, body("u", "Increase", &[("n", 1)])).await;
    refused.assert_rejection(200, 10006, "rate_limit_group");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "refused when it is clear the token comes after its max_wait, not at the token (1s): {:?}",
        started.elapsed()
    );
    assert_eq!(
        emulator.emulator.store().value("u", "n"),
        Some(1),
        "never applied"
    );
}

/// An upstream that answers every update OK with the keys it was sent, each at Value 1, after
/// `delay`.
fn echo_keys(delay: Duration) -> Script {
    Arc::new(move |rec: &Recorded| {
        let entries: Vec<String> = sent_counters(rec)
            .iter()
            .map(|(k, _)| format!(r#"{{"Key":"{k}","Value":1}}"#))
            .collect();
        (
            delay,
            owned_json(format!(
                r#"{{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{}]}}"#,
                entries.join(",")
            )),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_twenty_keys_and_max_callers_start_new_batches() {
    let upstream = spawn_recording(None, echo_keys(Duration::from_millis(300))).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[coalesce]\nmax_callers = 3\n",
    ))
    .await;
    let addr = gw.addr;
    let first =
        tokio::spawn(async move { post(addr, UPDATE, body("b", "Increase", &[("a", 1)])).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let keys = |from: usize, to: usize| -> Vec<(String, i64)> {
        (from..to).map(|i| (format!("k{i}"), 1)).collect()
    };
    let as_refs = |v: &[(String, i64)]| -> String {
        let pairs: Vec<(&str, i64)> = v.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        body("b", "Increase", &pairs)
    };
    let bodies = vec![
        body("b", "Increase", &[("big", i64::MAX - 5)]),
        body("b", "Increase", &[("big", 10)]),
        as_refs(&keys(0, 15)),
        as_refs(&keys(10, 25)),
        body("b", "Increase", &[("c", 1)]),
        body("b", "Increase", &[("c", 1)]),
        body("b", "Increase", &[("c", 1)]),
        body("b", "Increase", &[("c", 1)]),
    ];
    let replies = all_at_once(addr, UPDATE, bodies).await;
    for r in &replies {
        assert_eq!(r.error_code(), 0, "{:?}", r.body);
    }
    assert_eq!(first.await.expect("first").error_code(), 0);
    let seen = upstream.requests();
    let mut big = 0i128;
    let mut c = 0;
    for rec in &seen {
        let counters = sent_counters(rec);
        assert!(counters.len() <= 20, "{} keys in one call", counters.len());
        for (k, v) in &counters {
            if k == "big" {
                big += i128::from(*v);
            }
            if k == "c" {
                c += v;
            }
        }
    }
    assert_eq!(
        big,
        i128::from(i64::MAX - 5) + 10,
        "overflow split, nothing lost"
    );
    assert_eq!(c, 4);
    // The two halves of 25 keys never shared a call; nor did more than 3 callers.
    assert!(seen.len() >= 4, "{} calls", seen.len());
    let sums: Vec<i64> = seen
        .iter()
        .map(|r| sent_counters(r).iter().map(|(_, v)| *v).max().unwrap_or(0))
        .collect();
    assert!(
        sums.iter()
            .all(|m| *m <= 3 || *m >= i64::MAX - 5 || *m == 10),
        "a call carried more than max_callers increments of one key: {sums:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tencent_error_or_a_timeout_reaches_every_caller_of_the_batch() {
    const FAIL: &str = r#"{"ActionStatus":"FAIL","ErrorCode":10015,"ErrorInfo":"GroupId invalid"}"#;
    let upstream = spawn_recording(
        None,
        Arc::new(|rec: &Recorded| {
            let v: serde_json::Value = serde_json::from_slice(&rec.body).expect("json");
            if v["GroupId"] == "slow" {
                (Duration::from_millis(900), json_response(FAIL))
            } else {
                (Duration::from_millis(200), json_response(FAIL))
            }
        }),
    )
    .await;
    let config = config_text(&upstream.endpoint(), "", "")
        .replace("request_timeout = \"2s\"", "request_timeout = \"400ms\"");
    let gw = spawn_gateway(&config).await;
    for group in ["err", "slow"] {
        let addr = gw.addr;
        let first =
            tokio::spawn(
                async move { post(addr, UPDATE, body(group, "Increase", &[("a", 1)])).await },
            );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bodies = (0..20)
            .map(|_| body(group, "Increase", &[("a", 1)]))
            .collect();
        let replies = all_at_once(addr, UPDATE, bodies).await;
        let first = first.await.expect("first");
        for r in replies.iter().chain([&first]) {
            if group == "err" {
                assert_eq!(r.status, 200);
                assert_eq!(&r.body[..], FAIL.as_bytes(), "Tencent's answer as it came");
                assert!(r.rejected().is_none());
            } else {
                r.assert_rejection(504, 60008, "upstream_timeout");
                assert!(
                    r.in_doubt(),
                    "every caller of a timed-out batch is in doubt"
                );
            }
        }
        // A timeout is the same answer a lone request gets; Tencent's answer says it was shared.
        if group == "err" {
            assert!(
                replies.iter().any(|r| r.headers.contains_key(COALESCED)),
                "{group}: the batch was merged"
            );
        }
    }
    // One lone call and one merged call per group: nothing resent.
    assert_eq!(upstream.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_reads_share_a_call_sent_after_they_arrived() {
    let seq = Arc::new(AtomicU64::new(0));
    let seq2 = seq.clone();
    let upstream = spawn_recording(
        None,
        Arc::new(move |_rec: &Recorded| {
            let n = seq2.fetch_add(1, Ordering::SeqCst) + 1;
            (
                Duration::from_millis(300),
                owned_json(format!(
                    r#"{{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{{"Key":"likes","Value":{n}}}]}}"#
                )),
            )
        }),
    )
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let addr = gw.addr;
    let read = r#"{"GroupId":"r","GroupCounterKeys":["likes"]}"#;
    let first = tokio::spawn(async move { post(addr, GET, read).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let replies = all_at_once(addr, GET, (0..30).map(|_| read.to_string()).collect()).await;
    let first = first.await.expect("first");
    assert_eq!(counters_of(&first), [("likes".to_string(), 1)]);
    for r in &replies {
        assert_eq!(
            counters_of(r),
            [("likes".to_string(), 2)],
            "never the answer of the call sent before it arrived"
        );
        assert_eq!(r.headers[COALESCED], "30");
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_at_shutdown_is_still_sent() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(400)).await;
    let mut gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let addr = gw.addr;
    let first =
        tokio::spawn(async move { post(addr, UPDATE, body("s", "Increase", &[("n", 1)])).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = tokio::spawn(async move {
        all_at_once(
            addr,
            UPDATE,
            (0..5).map(|_| body("s", "Increase", &[("n", 1)])).collect(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gw.signal_shutdown();
    assert_eq!(first.await.expect("first").error_code(), 0);
    for r in waiting.await.expect("waiting") {
        assert_eq!(r.error_code(), 0, "{:?}", r.body);
    }
    tokio::time::timeout(Duration::from_secs(6), &mut gw.task)
        .await
        .expect("run returns within the grace period")
        .expect("run");
    assert_eq!(emulator.emulator.store().value("s", "n"), Some(6));
    assert_eq!(emulator.emulator.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fails_over_to_the_backup_when_the_primary_cannot_be_reached() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(100)).await;
    // A port nobody listens on: every connect is refused, so nothing ever reached it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = spawn_gateway(&config_text(
        &format!("http://{closed}"),
        &format!("backup_endpoint = \"{}\"", emulator.endpoint()),
        "",
    ))
    .await;
    let addr = gw.addr;
    let first =
        tokio::spawn(async move { post(addr, UPDATE, body("f", "Increase", &[("n", 1)])).await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let replies = all_at_once(
        addr,
        UPDATE,
        (0..30)
            .map(|_| body("f", "Increase", &[("n", 1)]))
            .collect(),
    )
    .await;
    assert_eq!(first.await.expect("first").error_code(), 0);
    for r in &replies {
        assert_eq!(r.error_code(), 0, "{:?}", r.body);
    }
    assert_eq!(
        emulator.emulator.store().value("f", "n"),
        Some(31),
        "each applied once"
    );
    assert!(
        emulator.emulator.requests() <= 3,
        "{} calls",
        emulator.emulator.requests()
    );
}

#[tokio::test]
async fn a_batch_waiting_for_the_app_budget_spends_one_group_token() {
    let emulator = spawn_emulator(None).await;
    // The app: a call every 500ms. Each group: one token a second.
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 2\napp_burst = 1\n",
    ))
    .await;
    assert_eq!(
        post(gw.addr, UPDATE, body("a1", "Increase", &[("n", 1)]))
            .await
            .error_code(),
        0
    );
    // g2's token is taken at once, the app's comes ~500ms later: it must not spend g2's
    // next token (a second away, past max_wait) while it waits.
    let started = Instant::now();
    let reply = post(gw.addr, UPDATE, body("a2", "Increase", &[("n", 1)])).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the app"
    );
    assert_eq!(emulator.emulator.store().value("a2", "n"), Some(1));
}

mod counted;
mod storm;
