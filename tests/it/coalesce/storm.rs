//! Coalescing under a hostile or busy group: batch-mates refused whole by Tencent, compressed
//! merged answers, Tencent's HTTP status on merged answers, reads during a like storm, and the
//! limits on who waits for what.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::*;

const MAX: i64 = i64::MAX;

async fn set(addr: std::net::SocketAddr, group: &str, counters: &[(&str, i64)]) {
    let reply = post(addr, UPDATE, body(group, "Set", counters)).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
}

/// Sends `bodies` one after the other, `gap` apart, each on its own connection, without
/// waiting for answers: they arrive in this order.
async fn in_order(
    addr: std::net::SocketAddr,
    bodies: Vec<String>,
    gap: Duration,
) -> Vec<tokio::task::JoinHandle<Reply>> {
    let mut tasks = Vec::new();
    for b in bodies {
        tasks.push(tokio::spawn(async move { post(addr, UPDATE, b).await }));
        tokio::time::sleep(gap).await;
    }
    tasks
}

async fn replies(tasks: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("caller"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_adds_a_key_the_group_has_no_room_for_fails_alone() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(150)).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let addr = gw.addr;
    let names: Vec<String> = (0..19).map(|i| format!("k{i}")).collect();
    let full: Vec<(&str, i64)> = names.iter().map(|k| (k.as_str(), 0)).collect();
    set(addr, "room", &full).await;
    let before = emulator.emulator.requests();
    // A call in flight, so that the next three wait together and are merged.
    let first = in_order(
        addr,
        vec![body("room", "Increase", &[("k0", 1)])],
        Duration::from_millis(50),
    )
    .await;
    let three = all_at_once(
        addr,
        UPDATE,
        vec![
            body("room", "Increase", &[("k1", 1)]),
            body("room", "Increase", &[("new_a", 1)]),
            body("room", "Increase", &[("new_b", 1)]),
        ],
    )
    .await;
    assert_eq!(replies(first).await[0].error_code(), 0);
    assert_eq!(
        three[0].error_code(),
        0,
        "an existing key: {:?}",
        three[0].body
    );
    assert_eq!(counters_of(&three[0]), [("k1".to_string(), 1)]);
    let codes: Vec<i64> = three[1..].iter().map(Reply::error_code).collect();
    assert!(
        codes.contains(&0) && codes.contains(&10063),
        "one new key fits, the other is the group's 21st: {codes:?}"
    );
    for r in &three[1..] {
        assert!(r.rejected().is_none(), "Tencent's own answer: {r:?}");
    }
    let store = emulator.emulator.store();
    assert_eq!(store.value("room", "k1"), Some(1));
    let applied = [store.value("room", "new_a"), store.value("room", "new_b")];
    assert_eq!(
        applied.iter().filter(|v| **v == Some(1)).count(),
        1,
        "exactly the one answered OK was applied: {applied:?}"
    );
    assert!(
        emulator.emulator.requests() - before <= 6,
        "bounded resends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_increment_would_overflow_fails_alone() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(150)).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let addr = gw.addr;
    set(addr, "edge", &[("big", MAX - 5), ("likes", 0)]).await;
    let tasks = in_order(
        addr,
        vec![
            body("edge", "Increase", &[("likes", 1)]),
            body("edge", "Increase", &[("big", 3)]),
            body("edge", "Increase", &[("big", 10)]),
            body("edge", "Increase", &[("likes", 1)]),
        ],
        Duration::from_millis(20),
    )
    .await;
    let r = replies(tasks).await;
    assert_eq!(r[0].error_code(), 0);
    assert_eq!(r[1].error_code(), 0, "+3 fits: {:?}", r[1].body);
    assert_eq!(counters_of(&r[1]), [("big".to_string(), MAX - 2)]);
    assert_eq!(r[2].error_code(), 10004, "+10 overflows: {:?}", r[2].body);
    assert!(r[2].rejected().is_none(), "Tencent's own answer");
    assert_eq!(
        r[3].error_code(),
        0,
        "another key's caller: {:?}",
        r[3].body
    );
    let store = emulator.emulator.store();
    assert_eq!(store.value("edge", "big"), Some(MAX - 2));
    assert_eq!(store.value("edge", "likes"), Some(2));
    // Each caller was answered from its own call in the end: none counted as coalesced, and
    // none counted twice.
    let m = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &m,
            r#"chat_gateway_coalesced_requests_total{api="group_open_http_svc/update_group_counter"}"#
        ),
        0.0
    );
}

/// An upstream that answers every update OK with its keys (Value 1), gzip-compressed although
/// asked for identity.
fn gzip_echo(delay: Duration) -> Script {
    Arc::new(move |rec: &Recorded| {
        let entries: Vec<String> = sent_counters(rec)
            .iter()
            .map(|(k, _)| format!(r#"{{"Key":"{k}","Value":1}}"#))
            .collect();
        let json = format!(
            r#"{{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{}]}}"#,
            entries.join(",")
        );
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(json.as_bytes()).expect("gzip");
        let mut r = owned_json(String::new());
        *r.body_mut() = Full::new(Bytes::from(gz.finish().expect("gzip")));
        r.headers_mut().insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        (delay, r)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_merged_answer_reaches_each_caller_as_plain_json() {
    let upstream = spawn_recording(None, gzip_echo(Duration::from_millis(150))).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let first = in_order(
        gw.addr,
        vec![body("z", "Increase", &[("likes", 1)])],
        Duration::from_millis(50),
    )
    .await;
    let merged = all_at_once(
        gw.addr,
        UPDATE,
        (0..5)
            .map(|i| {
                if i == 0 {
                    body("z", "Increase", &[("gifts", 2)])
                } else {
                    body("z", "Increase", &[("likes", 1)])
                }
            })
            .collect(),
    )
    .await;
    for r in replies(first).await.iter().chain(&merged) {
        assert!(r.headers.get("content-encoding").is_none(), "{r:?}");
        assert_eq!(r.json()["ActionStatus"], "OK", "{r:?}");
    }
    assert_eq!(counters_of(&merged[0]), [("gifts".to_string(), 1)]);
    assert_eq!(counters_of(&merged[1]), [("likes".to_string(), 1)]);
    assert!(merged.iter().any(|r| r.headers.contains_key(COALESCED)));
    assert_eq!(upstream.count(), 2);
    let m = scrape(gw.admin).await;
    let update = "group_open_http_svc/update_group_counter";
    assert_eq!(
        metric(
            &m,
            &format!(r#"chat_gateway_upstream_responses_total{{api="{update}",error_code="0"}}"#)
        ),
        2.0,
        "read as ErrorCode 0, not unparsable"
    );
    assert!(!m.contains("unparsable\"} 1"), "nothing counted unparsable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_call_answered_503_is_503_for_every_caller() {
    const BUSY: &str = r#"{"ActionStatus":"FAIL","ErrorCode":90001,"ErrorInfo":"busy"}"#;
    let upstream = spawn_recording(
        None,
        Arc::new(|_rec: &Recorded| {
            let mut r = json_response(BUSY);
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            (Duration::from_millis(150), r)
        }),
    )
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let first = in_order(
        gw.addr,
        vec![body("s503", "Increase", &[("n", 1)])],
        Duration::from_millis(50),
    )
    .await;
    let merged = all_at_once(
        gw.addr,
        UPDATE,
        (0..4)
            .map(|_| body("s503", "Increase", &[("n", 1)]))
            .collect(),
    )
    .await;
    for r in replies(first).await.iter().chain(&merged) {
        assert_eq!(
            r.status, 503,
            "Tencent's status reaches every caller: {r:?}"
        );
        assert_eq!(&r.body[..], BUSY.as_bytes());
    }
    assert!(merged.iter().all(|r| r.headers.contains_key(COALESCED)));
    assert_eq!(upstream.count(), 2, "nothing resent");
}

fn read_body(group: &str, keys: Option<&[&str]>) -> String {
    match keys {
        Some(keys) => serde_json::json!({"GroupId": group, "GroupCounterKeys": keys}).to_string(),
        None => serde_json::json!({"GroupId": group}).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_keys_a_waiting_batch_sets_is_answered_from_its_answer() {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(150)).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let addr = gw.addr;
    let mut writes = in_order(
        addr,
        vec![body("ride", "Increase", &[("likes", 1), ("gifts", 1)])],
        Duration::from_millis(40),
    )
    .await;
    // Five more wait for the call in flight: a batch that will set "likes" and "gifts".
    writes.extend(
        in_order(
            addr,
            (0..5)
                .map(|_| body("ride", "Increase", &[("likes", 1), ("gifts", 1)]))
                .collect(),
            Duration::ZERO,
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = post(addr, GET, read_body("ride", Some(&["gifts"]))).await;
    for w in replies(writes).await {
        assert_eq!(w.error_code(), 0);
    }
    assert_eq!(read.error_code(), 0, "{:?}", read.body);
    assert_eq!(
        counters_of(&read),
        [("gifts".to_string(), 6)],
        "only the keys it asked, with the batch's latest values"
    );
    assert!(read.headers.contains_key(COALESCED));
    assert_eq!(
        emulator.emulator.requests(),
        2,
        "two update calls; the read was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_batch_fails_is_sent_on_its_own() {
    const FAIL: &str = r#"{"ActionStatus":"FAIL","ErrorCode":10010,"ErrorInfo":"group dissolved"}"#;
    const READ: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"likes","Value":42}]}"#;
    let upstream = spawn_recording(
        None,
        Arc::new(|rec: &Recorded| {
            if rec.path.contains("get_group_counter") {
                (Duration::ZERO, json_response(READ))
            } else {
                (Duration::from_millis(150), json_response(FAIL))
            }
        }),
    )
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let mut writes = in_order(
        gw.addr,
        vec![body("gone", "Increase", &[("likes", 1)])],
        Duration::from_millis(40),
    )
    .await;
    writes.extend(
        in_order(
            gw.addr,
            vec![body("gone", "Increase", &[("likes", 1)]); 2],
            Duration::ZERO,
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = post(gw.addr, GET, read_body("gone", Some(&["likes"]))).await;
    assert_eq!(&read.body[..], READ.as_bytes(), "its own read's answer");
    for w in replies(writes).await {
        assert_eq!(&w.body[..], FAIL.as_bytes());
    }
    assert_eq!(upstream.count(), 3, "two update calls and the read");
}

/// 200 likes at once, a token every 250ms: a read that comes just after is served within
/// max_wait, in its turn, instead of being refused at once.
async fn read_during_a_storm(reads: bool) {
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(50)).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &format!(
            "[rate_limit]\ngroup_per_second = 4\ngroup_burst = 1\n[coalesce]\nreads = {reads}\n"
        ),
    ))
    .await;
    let addr = gw.addr;
    let storm = tokio::spawn(all_at_once(
        addr,
        UPDATE,
        vec![body("storm", "Increase", &[("likes", 1)]); 200],
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let read = post(addr, GET, read_body("storm", None)).await;
    let took = started.elapsed();
    assert_eq!(read.error_code(), 0, "reads = {reads}: {:?}", read.body);
    assert!(took < Duration::from_secs(1), "within max_wait: {took:?}");
    let likes = storm.await.expect("storm");
    let ok = likes.iter().filter(|r| r.error_code() == 0).count() as i64;
    assert!(ok > 0, "the writes were served too");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        emulator.emulator.store().value("storm", "likes"),
        Some(ok),
        "every acknowledged like applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_during_a_storm_waits_its_turn() {
    read_during_a_storm(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_read_during_a_storm_waits_its_turn() {
    read_during_a_storm(false).await;
}

#[tokio::test]
async fn a_read_refused_by_the_apps_budget_is_refused_at_once() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\napp_per_second = 1\napp_burst = 1\n",
    ))
    .await;
    assert_eq!(
        post(gw.addr, GET, read_body("a", None)).await.error_code(),
        0
    );
    let started = Instant::now();
    let refused = post(gw.addr, GET, read_body("b", None)).await;
    refused.assert_rejection(200, 60007, "rate_limit_app");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "at once, not after a wait: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_holds_at_most_max_callers() {
    const READ: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[]}"#;
    let upstream = spawn_recording(
        None,
        Arc::new(|_rec: &Recorded| (Duration::from_millis(300), json_response(READ))),
    )
    .await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[coalesce]\nmax_callers = 3\n",
    ))
    .await;
    let addr = gw.addr;
    let first = tokio::spawn(async move { post(addr, GET, read_body("m", None)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { post(addr, GET, read_body("m", None)).await }))
        .collect();
    let mut shared = 0;
    for t in tasks {
        let r = t.await.expect("reader");
        assert_eq!(r.error_code(), 0);
        match r.headers.get(COALESCED).map(|v| v.as_bytes()) {
            Some(b"3") => shared += 1,
            None => {}
            other => panic!("a shared read of other than 3 callers: {other:?}"),
        }
    }
    assert_eq!(first.await.expect("first").error_code(), 0);
    assert_eq!(shared, 3, "three share one read; the fourth goes alone");
    assert_eq!(upstream.count(), 3);
}
