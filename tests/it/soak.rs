//! Soak: a steady stream of `Increase` calls through the gateway to an upstream that plays
//! Tencent (the emulator's `CounterStore` behind a raw HTTP/1.1 server) and, at random, resets
//! the connection before applying (or after), and answers late: some within
//! `request_timeout`, some past it. Each call carries a unique id in an extra body field
//! (forwarded byte for byte), so the upstream counts how often each id was applied.
//!
//! What must hold: every id acknowledged OK was applied exactly once, no id was ever applied
//! twice, and ids answered 502/504 were applied at most once ("in doubt" writes).
//!
//! `SOAK_SECS` sets the duration (default 10, so that it runs in CI).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::emulator::store::CounterStore;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// Calls per second, from at most `CALLERS` concurrent callers.
const RATE: u64 = 200;
const CALLERS: usize = 64;
const GROUPS: u64 = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const UPDATE_API: &str = "group_open_http_svc/update_group_counter";

/// What the upstream does with one request.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Apply and answer at once.
    Normal,
    /// Reset the connection before applying: never applied.
    ResetBefore,
    /// Apply, then reset: applied, the caller hears 502.
    ResetAfter,
    /// Wait (less than request_timeout), apply, answer.
    Late(Duration),
    /// Apply, then wait past request_timeout before answering.
    ApplyThenStall(Duration),
    /// Wait past request_timeout, then apply (the gateway has given up by then).
    StallThenApply(Duration),
}

fn pick_fate() -> Fate {
    let ms = |lo: u64, hi: u64| Duration::from_millis(rand::random_range(lo..hi));
    match rand::random_range(0..1000u32) {
        0..50 => Fate::ResetBefore,
        50..70 => Fate::ResetAfter,
        70..130 => Fate::Late(ms(50, 500)),
        130..150 => Fate::ApplyThenStall(ms(1300, 2000)),
        150..170 => Fate::StallThenApply(ms(1300, 2000)),
        _ => Fate::Normal,
    }
}

/// The upstream's side: the counters and how often each id was applied.
#[derive(Default)]
struct Upstream {
    store: CounterStore,
    applied: Mutex<HashMap<u64, u32>>,
    /// Requests being handled right now (late answers included).
    active: AtomicUsize,
    unparsable: AtomicUsize,
}

impl Upstream {
    /// Applies one Increase through the store; counts the id when the store applied it.
    fn apply(&self, id: u64, body: &[u8]) -> Vec<u8> {
        let answer = self.store.handle(UPDATE_API, body);
        if chat_gateway::upstream::error_code(&answer) == Some(0) {
            *self.applied.lock().expect("lock").entry(id).or_insert(0) += 1;
        }
        answer
    }
}

struct Active<'a>(&'a AtomicUsize);

impl<'a> Active<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Plays one request's fate at the upstream: `apply` it (the counter update) before, after or
/// instead of a reset or a stall. `None` when the connection was reset (no answer).
async fn play_fate(
    stream: &TcpStream,
    normal: Duration,
    apply: impl Fn() -> Vec<u8>,
) -> Option<Vec<u8>> {
    match pick_fate() {
        Fate::Normal => {
            if !normal.is_zero() {
                tokio::time::sleep(normal).await;
            }
            Some(apply())
        }
        Fate::ResetBefore => {
            let _ = stream.set_zero_linger();
            None
        }
        Fate::ResetAfter => {
            apply();
            let _ = stream.set_zero_linger();
            None
        }
        Fate::Late(wait) | Fate::StallThenApply(wait) => {
            tokio::time::sleep(wait).await;
            Some(apply())
        }
        Fate::ApplyThenStall(wait) => {
            let answer = apply();
            tokio::time::sleep(wait).await;
            Some(answer)
        }
    }
}

fn soak_id(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["SoakId"].as_u64()
}

fn scripted_upstream(state: Arc<Upstream>) -> RawScript {
    raw_script(move |mut c| {
        let state = state.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
                let _active = Active::enter(&state.active);
                let Some(id) = soak_id(&req.body) else {
                    state.unparsable.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let Some(answer) =
                    play_fate(&c.stream, Duration::ZERO, || state.apply(id, &req.body)).await
                else {
                    return;
                };
                let answer = String::from_utf8_lossy(&answer).into_owned();
                if c.stream
                    .write_all(&raw_json_response(&answer))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    Unavailable,
    Timeout,
    /// Any other answer: status, ErrorCode, reason header.
    Other(u16, Option<i64>, Option<String>),
    /// The caller's own connection failed.
    CallerError(String),
}

fn classify(reply: &Reply) -> Outcome {
    let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["ErrorCode"].as_i64());
    match (reply.status.as_u16(), code, reply.rejected()) {
        (200, Some(0), None) => Outcome::Ok,
        (502, Some(10002), Some("upstream_unavailable")) => Outcome::Unavailable,
        (504, Some(60008), Some("upstream_timeout")) => Outcome::Timeout,
        (status, code, reason) => Outcome::Other(status, code, reason.map(str::to_string)),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// An Increase carrying its id in an extra member: never merged, forwarded byte for byte.
fn soak_body(id: u64) -> String {
    format!(
        r#"{{"GroupId":"soak-{}","GroupCounter":[{{"Key":"n","Value":1}}],"Mode":"Increase","SoakId":{id}}}"#,
        id % GROUPS
    )
}

async fn call(sender: &mut Sender, body: String) -> Result<Reply, String> {
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let req = Request::post(UPDATE)
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Hands out ids at `rate` per second to `callers` callers, each on its own keep-alive
/// connection, for `secs` seconds; a tick finding every caller busy is counted, not queued.
/// Returns each id's outcome, how many ids were sent, and the busy ticks.
async fn drive(
    addr: std::net::SocketAddr,
    secs: u64,
    rate: u64,
    callers: usize,
    body: fn(u64) -> String,
) -> (HashMap<u64, Outcome>, u64, u64) {
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(callers);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let outcomes: Arc<Mutex<HashMap<u64, Outcome>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (rx, outcomes) = (rx.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender: Option<Sender> = None;
            loop {
                let Some(id) = rx.lock().await.recv().await else {
                    return;
                };
                let result = async {
                    if sender.is_none() {
                        sender = Some(connect(addr).await?);
                    }
                    let s = sender.as_mut().ok_or("no connection")?;
                    match tokio::time::timeout(Duration::from_secs(10), call(s, body(id))).await {
                        Ok(result) => result,
                        Err(_) => Err("no answer within 10s".to_string()),
                    }
                }
                .await;
                let outcome = match result {
                    Ok(reply) => classify(&reply),
                    Err(e) => {
                        sender = None;
                        Outcome::CallerError(e)
                    }
                };
                outcomes.lock().expect("lock").insert(id, outcome);
            }
        }));
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let (mut next_id, mut busy) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        ticker.tick().await;
        match tx.try_send(next_id) {
            Ok(()) => next_id += 1,
            Err(_) => busy += 1,
        }
    }
    drop(tx);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("callers finish within 30s")
            .expect("caller did not panic");
    }
    let outcomes = outcomes.lock().expect("lock").clone();
    (outcomes, next_id, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_acknowledged_increases_are_applied_exactly_once() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .clamp(1, 3600);
    let state = Arc::new(Upstream::default());
    let upstream = spawn_raw_upstream(scripted_upstream(state.clone())).await;
    let config = config_text(
        &upstream.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 100000\ngroup_burst = 100000\napp_per_second = 100000\napp_burst = 100000\n",
    )
    .replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"{}ms\"", REQUEST_TIMEOUT.as_millis()),
    );
    let gw = spawn_gateway(&config).await;

    let started = Instant::now();
    let (outcomes, sent, busy) = drive(gw.addr, secs, RATE, CALLERS, soak_body).await;
    // Late answers (up to 2s) still apply: wait for the upstream to be idle.
    let idle_by = Instant::now() + Duration::from_secs(15);
    while state.active.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < idle_by, "upstream still busy after 15s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();

    let applied = state.applied.lock().expect("lock").clone();
    let count = |want: fn(&Outcome) -> bool| outcomes.values().filter(|o| want(o)).count();
    let ok = count(|o| *o == Outcome::Ok);
    let unavailable = count(|o| *o == Outcome::Unavailable);
    let timeout = count(|o| *o == Outcome::Timeout);
    let in_doubt_applied = |want: Outcome| {
        outcomes
            .iter()
            .filter(|(id, o)| **o == want && applied.contains_key(id))
            .count()
    };
    let (doubt_502, doubt_504) = (
        in_doubt_applied(Outcome::Unavailable),
        in_doubt_applied(Outcome::Timeout),
    );
    let others: Vec<(&u64, &Outcome)> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Ok | Outcome::Unavailable | Outcome::Timeout))
        .collect();
    println!(
        "soak: secs={secs} elapsed={:.1}s sent={sent} ok={ok} 502={unavailable} 504={timeout} other={} applied={} in_doubt_applied={} (of 502: {doubt_502}, of 504: {doubt_504}) busy_ticks={busy} upstream_connections={}",
        elapsed.as_secs_f64(),
        others.len(),
        applied.len(),
        doubt_502 + doubt_504,
        upstream.log.accepted(),
    );

    assert_eq!(outcomes.len() as u64, sent, "every id sent got an outcome");
    assert_eq!(state.unparsable.load(Ordering::SeqCst), 0);
    assert!(
        others.is_empty(),
        "answers other than OK, 502, 504: {:?}",
        &others[..others.len().min(10)]
    );
    for (id, times) in &applied {
        assert!(*id < sent, "id {id} applied but never sent");
        assert_eq!(
            *times,
            1,
            "id {id} applied {times} times ({:?})",
            outcomes.get(id)
        );
    }
    for (id, outcome) in &outcomes {
        if *outcome == Outcome::Ok {
            assert_eq!(
                applied.get(id),
                Some(&1),
                "id {id} was acknowledged OK but not applied exactly once"
            );
        }
    }
    let total: i64 = (0..GROUPS)
        .map(|g| state.store.value(&format!("soak-{g}"), "n").unwrap_or(0))
        .sum();
    assert_eq!(
        total,
        applied.values().map(|n| i64::from(*n)).sum::<i64>(),
        "the counters add up to what was applied"
    );
    assert!(
        sent >= RATE * secs / 2,
        "the soak sent {sent} calls in {secs}s, under half of {RATE}/s"
    );
    if secs >= 5 {
        assert!(
            unavailable > 0 && timeout > 0,
            "faults were injected and seen"
        );
    }
    drop(gw);
}

/// The coalesced soak's upstream: what it received and applied, by sums (merged calls carry
/// no caller ids).
#[derive(Default)]
struct MergedUpstream {
    store: CounterStore,
    /// Sum of the Values of every call that reached it, except those refused with 70001
    /// (refused at authentication: provably not applied).
    received: std::sync::atomic::AtomicI64,
    applied: std::sync::atomic::AtomicI64,
    usersig_refusals: AtomicUsize,
    active: AtomicUsize,
}

impl MergedUpstream {
    fn apply(&self, sum: i64, body: &[u8]) -> Vec<u8> {
        let answer = self.store.handle(UPDATE_API, body);
        if chat_gateway::upstream::error_code(&answer) == Some(0) {
            self.applied.fetch_add(sum, Ordering::SeqCst);
        }
        answer
    }
}

fn merged_upstream(state: Arc<MergedUpstream>) -> RawScript {
    raw_script(move |mut c| {
        let state = state.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
                let _active = Active::enter(&state.active);
                let sum: i64 = serde_json::from_slice::<serde_json::Value>(&req.body)
                    .ok()
                    .and_then(|v| {
                        v["GroupCounter"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|e| e["Value"].as_i64()).sum())
                    })
                    .unwrap_or(0);
                if rand::random_range(0..100u32) < 5 {
                    state.usersig_refusals.fetch_add(1, Ordering::SeqCst);
                    let refusal = r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"UserSig expired"}"#;
                    if c.stream
                        .write_all(&raw_json_response(refusal))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                state.received.fetch_add(sum, Ordering::SeqCst);
                // A round trip long enough for callers to gather behind it.
                let normal = Duration::from_millis(20);
                let Some(answer) =
                    play_fate(&c.stream, normal, || state.apply(sum, &req.body)).await
                else {
                    return;
                };
                let answer = String::from_utf8_lossy(&answer).into_owned();
                if c.stream
                    .write_all(&raw_json_response(&answer))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

/// A mergeable Increase +1 to one of two hot groups.
fn hot_body(id: u64) -> String {
    format!(
        r#"{{"GroupId":"hot-{}","GroupCounter":[{{"Key":"n","Value":1}}],"Mode":"Increase"}}"#,
        id % 2
    )
}

/// The same faults (resets before and after applying, late answers, stalls past
/// request_timeout) plus 70001 refusals, with coalescing on and callers merged into batches.
/// Merged calls carry no caller ids, so the proof is by sums: with `ok` callers answered OK
/// and `doubt` answered 502/504,
///   ok <= applied <= received <= ok + doubt
/// (every acknowledged increment was applied; nothing beyond the in-doubt ones was; no call
/// that reached the upstream was sent again: 70001 refusals excepted, which apply nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_coalesced_increases_are_applied_exactly_once() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .clamp(1, 3600);
    let state = Arc::new(MergedUpstream::default());
    let upstream = spawn_raw_upstream(merged_upstream(state.clone())).await;
    let config = config_text(
        &upstream.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 100000\ngroup_burst = 100000\napp_per_second = 100000\napp_burst = 100000\n",
    )
    .replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"{}ms\"", REQUEST_TIMEOUT.as_millis()),
    );
    let gw = spawn_gateway(&config).await;
    let started = Instant::now();
    let (outcomes, sent, busy) = drive(gw.addr, secs, 2 * RATE, 2 * CALLERS, hot_body).await;
    let idle_by = Instant::now() + Duration::from_secs(15);
    while state.active.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < idle_by, "upstream still busy after 15s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |want: &dyn Fn(&Outcome) -> bool| outcomes.values().filter(|o| want(o)).count();
    let ok = count(&|o| *o == Outcome::Ok) as i64;
    let doubt = count(&|o| matches!(o, Outcome::Unavailable | Outcome::Timeout)) as i64;
    let refused = count(&|o| {
        matches!(o, Outcome::Other(200, Some(10006), Some(r)) if r == "rate_limit_group")
            || matches!(o, Outcome::Other(200, Some(70001), None))
    });
    let others: Vec<&Outcome> = outcomes
        .values()
        .filter(|o| {
            !matches!(o, Outcome::Ok | Outcome::Unavailable | Outcome::Timeout)
                && !matches!(o, Outcome::Other(200, Some(10006 | 70001), _))
        })
        .collect();
    let applied = state.applied.load(Ordering::SeqCst);
    let received = state.received.load(Ordering::SeqCst);
    let stored: i64 = (0..2)
        .map(|g| state.store.value(&format!("hot-{g}"), "n").unwrap_or(0))
        .sum();
    let metrics = scrape(gw.admin).await;
    let merged = metric(
        &metrics,
        r#"chat_gateway_coalesced_requests_total{api="group_open_http_svc/update_group_counter"}"#,
    );
    let calls = metric(
        &metrics,
        r#"chat_gateway_coalesce_batch_size_count{api="group_open_http_svc/update_group_counter"}"#,
    );
    println!(
        "coalesced soak: secs={secs} elapsed={:.1}s sent={sent} ok={ok} in_doubt={doubt} refused={refused} other={} applied={applied} received={received} calls={calls} merged_callers={merged} usersig_refusals={} busy_ticks={busy}",
        started.elapsed().as_secs_f64(),
        others.len(),
        state.usersig_refusals.load(Ordering::SeqCst),
    );
    assert_eq!(outcomes.len() as u64, sent, "every id sent got an outcome");
    assert!(
        others.is_empty(),
        "unexpected answers: {:?}",
        &others[..others.len().min(10)]
    );
    assert_eq!(stored, applied, "the counters add up to what was applied");
    assert!(ok <= applied, "acknowledged {ok} but applied {applied}");
    assert!(applied <= received);
    assert!(
        received <= ok + doubt,
        "received {received} > ok {ok} + in doubt {doubt}: a call was sent twice"
    );
    assert!(merged > 0.0, "callers were merged");
    assert!((calls as u64) < sent, "fewer calls than callers");
    if secs >= 5 {
        assert!(doubt > 0, "faults were injected and seen");
        assert!(state.usersig_refusals.load(Ordering::SeqCst) > 0);
    }
    drop(gw);
}
