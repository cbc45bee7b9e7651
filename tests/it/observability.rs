//! What the gateway tells Prometheus: every outcome counted once, upstream ErrorCodes (bounded),
//! a scrape that `promtool` accepts, a real Prometheus server scraping it, and no secret or
//! caller-chosen value in any label. All through real sockets on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::*;

const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const GONE: &str =
    r#"{"ActionStatus":"FAIL","ErrorCode":10010,"ErrorInfo":"group does not exist"}"#;
const HTML: &str = "<html>bad gateway</html>";
const GET_API: &str = "group_open_http_svc/get_group_counter";
const UPDATE_API: &str = "group_open_http_svc/update_group_counter";

/// Every request of these tests is answered within this, or the test fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

async fn post_in_time(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    tokio::time::timeout(ANSWER_WITHIN, post(addr, path, body))
        .await
        .unwrap_or_else(|_| panic!("no answer to POST {path} within {ANSWER_WITHIN:?}"))
}

async fn scrape_in_time(admin: SocketAddr) -> String {
    tokio::time::timeout(ANSWER_WITHIN, scrape(admin))
        .await
        .unwrap_or_else(|_| panic!("no /metrics answer within {ANSWER_WITHIN:?}"))
}

fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

/// Every series of one family (`name` or `name{...}`), keyed by the series as printed.
fn family(scrape: &str, name: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("value of {series:?} ({e}): {l:?}"));
            Some((series.to_string(), value))
        })
        .collect()
}

/// The series that moved between two scrapes, and by how much.
fn moved(before: &str, after: &str, name: &str) -> BTreeMap<String, f64> {
    let (before, after) = (family(before, name), family(after, name));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

fn one(series: String) -> BTreeMap<String, f64> {
    BTreeMap::from([(series, 1.0)])
}

/// What one request moved in the families the tests look at.
#[derive(Debug)]
struct Moves {
    requests: BTreeMap<String, f64>,
    request_durations: BTreeMap<String, f64>,
    overheads: BTreeMap<String, f64>,
    upstream_durations: BTreeMap<String, f64>,
    upstream_responses: BTreeMap<String, f64>,
    rate_limited: BTreeMap<String, f64>,
}

/// Scrapes, sends one request, scrapes again. The observe layer records before the answer
/// is written, so the second scrape always sees the request.
async fn around(admin: SocketAddr, request: impl Future<Output = Reply>) -> (Reply, Moves) {
    let before = scrape_in_time(admin).await;
    let reply = request.await;
    let after = scrape_in_time(admin).await;
    let m = |name: &str| moved(&before, &after, name);
    let moves = Moves {
        requests: m("chat_gateway_requests_total"),
        request_durations: m("chat_gateway_request_duration_seconds_count"),
        overheads: m("chat_gateway_overhead_seconds_count"),
        upstream_durations: m("chat_gateway_upstream_duration_seconds_count"),
        upstream_responses: m("chat_gateway_upstream_responses_total"),
        rate_limited: m("chat_gateway_rate_limited_total"),
    };
    (reply, moves)
}

/// Exactly one request counted, under `api` and `outcome`, and nothing else in the family;
/// one duration and one overhead observation for `api`; an upstream duration observation
/// only when the gateway made a round trip to the upstream.
fn assert_counted_once(moves: &Moves, reply: &Reply, api: &str, outcome: &str, upstream: bool) {
    let context = format!(
        "{outcome}: reply {} {:?}; {moves:#?}",
        reply.status, reply.body
    );
    assert_eq!(
        moves.requests,
        one(format!(
            r#"chat_gateway_requests_total{{api="{api}",outcome="{outcome}"}}"#
        )),
        "{context}"
    );
    assert_eq!(
        moves.request_durations,
        one(format!(
            r#"chat_gateway_request_duration_seconds_count{{api="{api}"}}"#
        )),
        "{context}"
    );
    assert_eq!(
        moves.overheads,
        one(format!(
            r#"chat_gateway_overhead_seconds_count{{api="{api}"}}"#
        )),
        "{context}"
    );
    let upstream_expected = if upstream {
        one(format!(
            r#"chat_gateway_upstream_duration_seconds_count{{api="{api}"}}"#
        ))
    } else {
        BTreeMap::new()
    };
    assert_eq!(moves.upstream_durations, upstream_expected, "{context}");
}

/// An upstream that answers by what the body asks for: `g-10010` gets ErrorCode 10010,
/// `g-html` a 502 HTML page, `g-slow` an answer after 10 s; anything else OK.
fn scripted() -> Script {
    Arc::new(|r: &Recorded| {
        let body = String::from_utf8_lossy(&r.body);
        if body.contains("g-10010") {
            (Duration::ZERO, json_response(GONE))
        } else if body.contains("g-html") {
            let mut response = http::Response::new(Full::new(Bytes::from_static(HTML.as_bytes())));
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html"),
            );
            (Duration::ZERO, response)
        } else if body.contains("g-slow") {
            (Duration::from_secs(10), json_response(OK))
        } else {
            (Duration::ZERO, json_response(OK))
        }
    })
}

// Outcomes of the contract not measured here:
// - `draining` needs a shutdown in progress; answers.rs covers its answer.

#[tokio::test]
async fn each_outcome_is_counted_once_ok_errors_and_local_rejections() {
    let upstream = spawn_recording(None, scripted()).await;
    let gw = spawn_gateway(
        &config_text(
            &upstream.endpoint(),
            "",
            "[rate_limit]\ngroup_per_second = 1000\ngroup_burst = 1000\napp_per_second = 1000\napp_burst = 1000\n",
        )
        .replace("drain_delay", "max_body_bytes = 1024\ndrain_delay"),
    )
    .await;

    // ok
    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, GET, r#"{"GroupId":"g-ok"}"#),
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
    assert_eq!(reply.rejected(), None);
    assert_counted_once(&moves, &reply, GET_API, "ok", true);
    assert_eq!(
        moves.upstream_responses,
        one(format!(
            r#"chat_gateway_upstream_responses_total{{api="{GET_API}",error_code="0"}}"#
        ))
    );

    // upstream_error: Tencent answered, with a non-zero ErrorCode.
    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, GET, r#"{"GroupId":"g-10010"}"#),
    )
    .await;
    assert_eq!(&reply.body[..], GONE.as_bytes());
    assert_counted_once(&moves, &reply, GET_API, "upstream_error", true);

    // not_allowed: an API that is not on the allow-list is labelled `other`.
    let (reply, moves) = around(
        gw.admin,
        post_in_time(
            gw.addr,
            "/v4/group_open_http_svc/create_group",
            r#"{"GroupId":"g"}"#,
        ),
    )
    .await;
    reply.assert_rejection(200, 60009, "not_allowed");
    assert_counted_once(&moves, &reply, "other", "not_allowed", false);

    // invalid_json
    let (reply, moves) = around(gw.admin, post_in_time(gw.addr, GET, "not json")).await;
    reply.assert_rejection(200, 60003, "invalid_json");
    assert_counted_once(&moves, &reply, GET_API, "invalid_json", false);

    // body_too_large (max_body_bytes = 1024)
    let big = format!(r#"{{"GroupId":"g","Pad":"{}"}}"#, "x".repeat(2000));
    let (reply, moves) = around(gw.admin, post_in_time(gw.addr, GET, big)).await;
    reply.assert_rejection(200, 10004, "body_too_large");
    assert_counted_once(&moves, &reply, GET_API, "body_too_large", false);

    // validation
    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, UPDATE, r#"{"GroupId":"g","GroupCounter":[]}"#),
    )
    .await;
    reply.assert_rejection(200, 10004, "validation");
    assert_counted_once(&moves, &reply, UPDATE_API, "validation", false);

    // upstream_timeout: the upstream holds its answer past request_timeout (2s).
    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, GET, r#"{"GroupId":"g-slow"}"#),
    )
    .await;
    reply.assert_rejection(504, 60008, "upstream_timeout");
    assert_counted_once(&moves, &reply, GET_API, "upstream_timeout", true);
    assert!(
        moves.upstream_responses.is_empty(),
        "no answer, no ErrorCode: {moves:#?}"
    );

    // Only the three requests that passed the local checks reached the upstream.
    assert_eq!(upstream.count(), 3);
    assert!(moves.rate_limited.is_empty(), "{moves:#?}");
}

#[tokio::test]
async fn upstream_unavailable_is_counted_once() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        l.local_addr().expect("local addr").port()
    };
    let gw = spawn_gateway(&config_text(&format!("http://127.0.0.1:{port}"), "", "")).await;
    let (reply, moves) = around(gw.admin, post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#)).await;
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    // The connect was refused: nothing reached an upstream, so no round trip is timed.
    assert_counted_once(&moves, &reply, GET_API, "upstream_unavailable", false);
    assert!(
        moves.upstream_responses.is_empty(),
        "no answer, no ErrorCode: {moves:#?}"
    );
}

#[tokio::test]
async fn unauthorized_is_counted_once() {
    let upstream = spawn_recording(None, scripted()).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "caller-token\n").expect("write tokens");
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = {:?}\n", tokens.display().to_string()),
    ))
    .await;
    let (reply, moves) = around(gw.admin, post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#)).await;
    reply.assert_rejection(401, 60004, "unauthorized");
    assert_counted_once(&moves, &reply, GET_API, "unauthorized", false);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn overloaded_is_counted_once() {
    // One request in flight at most; the first is held by a slow upstream.
    let upstream = spawn_recording(None, scripted()).await;
    let gw = spawn_gateway(
        &config_text(&upstream.endpoint(), "", "")
            .replace("drain_delay", "max_in_flight = 1\ndrain_delay"),
    )
    .await;
    let addr = gw.addr;
    let held = tokio::spawn(async move { post(addr, GET, r#"{"GroupId":"g-slow"}"#).await });
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    while upstream.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (reply, moves) = around(gw.admin, post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#)).await;
    reply.assert_rejection(503, 60018, "overloaded");
    assert_counted_once(&moves, &reply, GET_API, "overloaded", false);
    held.abort();
}

/// Exhausts a bucket, then measures the next request, which must be refused for `reason`.
/// Rates are at least 1/s, so on a busy machine a token may come back between the two: then
/// it tries again, a bounded number of times.
async fn measure_rate_limited(
    gw: &GatewayHandle,
    reason: &str,
    body: impl Fn(usize) -> String,
) -> (Reply, Moves) {
    let mut n = 0;
    for _attempt in 0..5 {
        let mut exhausted = false;
        for _ in 0..10 {
            n += 1;
            if post_in_time(gw.addr, UPDATE, body(n)).await.rejected() == Some(reason) {
                exhausted = true;
                break;
            }
        }
        assert!(exhausted, "never refused for {reason}");
        n += 1;
        let (reply, moves) = around(gw.admin, post_in_time(gw.addr, UPDATE, body(n))).await;
        if reply.rejected() == Some(reason) {
            return (reply, moves);
        }
    }
    panic!("a token came back before every one of 5 measured requests ({reason})");
}

#[tokio::test]
async fn rate_limit_outcomes_are_counted_once() {
    let emulator = spawn_emulator(None).await;

    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1000\napp_burst = 1000\n[coalesce]\nenabled = false\n",
    ))
    .await;
    let (reply, moves) = measure_rate_limited(&gw, "rate_limit_group", |_| increase("hot")).await;
    reply.assert_rejection(200, 10006, "rate_limit_group");
    assert_counted_once(&moves, &reply, UPDATE_API, "rate_limit_group", false);
    assert_eq!(
        moves.rate_limited,
        one(format!(
            r#"chat_gateway_rate_limited_total{{api="{UPDATE_API}",scope="group"}}"#
        ))
    );

    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1000\ngroup_burst = 1000\napp_per_second = 1\napp_burst = 1\n[coalesce]\nenabled = false\n",
    ))
    .await;
    let (reply, moves) =
        measure_rate_limited(&gw, "rate_limit_app", |n| increase(&format!("g{n}"))).await;
    reply.assert_rejection(200, 60007, "rate_limit_app");
    assert_counted_once(&moves, &reply, UPDATE_API, "rate_limit_app", false);
    assert_eq!(
        moves.rate_limited,
        one(format!(
            r#"chat_gateway_rate_limited_total{{api="{UPDATE_API}",scope="app"}}"#
        ))
    );
}

#[tokio::test]
async fn upstream_error_codes_and_unparsable_answers_pass_through() {
    let upstream = spawn_recording(None, scripted()).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;

    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, GET, r#"{"GroupId":"g-10010"}"#),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], GONE.as_bytes(), "byte-identical");
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.rejected(), None);
    assert_eq!(
        moves.upstream_responses,
        one(format!(
            r#"chat_gateway_upstream_responses_total{{api="{GET_API}",error_code="10010"}}"#
        ))
    );
    assert_counted_once(&moves, &reply, GET_API, "upstream_error", true);

    let (reply, moves) = around(
        gw.admin,
        post_in_time(gw.addr, GET, r#"{"GroupId":"g-html"}"#),
    )
    .await;
    assert_eq!(reply.status, 502, "the upstream's status, unchanged");
    assert_eq!(
        &reply.body[..],
        HTML.as_bytes(),
        "the upstream's body, unchanged"
    );
    assert_eq!(reply.headers["content-type"], "text/html");
    assert_eq!(
        reply.rejected(),
        None,
        "an answer from the upstream, not the gateway's"
    );
    assert_eq!(
        moves.upstream_responses,
        one(format!(
            r#"chat_gateway_upstream_responses_total{{api="{GET_API}",error_code="unparsable"}}"#
        ))
    );
    assert_counted_once(&moves, &reply, GET_API, "upstream_error", true);
}

#[tokio::test]
async fn distinct_error_codes_are_capped() {
    let n = Arc::new(AtomicI64::new(0));
    let script: Script = Arc::new(move |_| {
        let code = n.fetch_add(1, Ordering::SeqCst) + 1;
        let body =
            format!(r#"{{"ActionStatus":"FAIL","ErrorCode":{code},"ErrorInfo":"scripted"}}"#);
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        (Duration::ZERO, response)
    });
    let upstream = spawn_recording(None, script).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 10000\ngroup_burst = 10000\napp_per_second = 10000\napp_burst = 10000\n",
    ))
    .await;
    for i in 1..=200 {
        let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
        assert_eq!(
            reply.error_code(),
            i,
            "the script answers code N to the N-th"
        );
    }
    let text = scrape_in_time(gw.admin).await;
    let responses = family(&text, "chat_gateway_upstream_responses_total");
    let labels: BTreeSet<&str> = responses
        .keys()
        .filter_map(|s| s.split("error_code=\"").nth(1))
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(
        labels.len() <= 102,
        "{} error_code values: {labels:?}",
        labels.len()
    );
    assert!(labels.contains("other"), "{labels:?}");
    assert_eq!(responses.values().sum::<f64>(), 200.0, "{responses:#?}");
    assert_eq!(
        metric(
            &text,
            &format!(
                r#"chat_gateway_upstream_responses_total{{api="{GET_API}",error_code="other"}}"#
            )
        ),
        100.0,
        "the first 100 codes keep their own label, the next 100 are `other`"
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"chat_gateway_requests_total{{api="{GET_API}",outcome="upstream_error"}}"#)
        ),
        200.0
    );
}

// ---- external tools: promtool and a real Prometheus server ----

/// Some traffic of every common kind, so that most families have series.
async fn mixed_traffic(gw: &GatewayHandle) {
    for body in [
        r#"{"GroupId":"g-ok"}"#,
        r#"{"GroupId":"g-10010"}"#,
        r#"{"GroupId":"g-html"}"#,
        "not json",
    ] {
        post_in_time(gw.addr, GET, body).await;
    }
    post_in_time(gw.addr, UPDATE, increase("g-ok")).await;
    post_in_time(gw.addr, UPDATE, r#"{"GroupId":"g","GroupCounter":[]}"#).await;
    post_in_time(gw.addr, "/v4/openim/sendmsg", "{}").await;
    for _ in 0..3 {
        post_in_time(gw.addr, DELETE, r#"{"GroupId":"hot"}"#).await;
    }
}

#[tokio::test]
async fn promtool_accepts_a_live_scrape() {
    let promtool = require_tool("promtool");
    let upstream = spawn_recording(None, scripted()).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1000\napp_burst = 1000\n[coalesce]\nenabled = false\n",
    ))
    .await;
    mixed_traffic(&gw).await;
    let text = scrape_in_time(gw.admin).await;
    for family in [
        "chat_gateway_requests_total",
        "chat_gateway_upstream_responses_total",
        "chat_gateway_rate_limited_total",
        "chat_gateway_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing from the scrape");
    }

    let mut child = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes())
        .await
        .expect("write the scrape to promtool");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("promtool finishes within 30s")
        .expect("promtool's output");
    assert!(
        output.status.success(),
        "promtool check metrics: {}\nstdout: {}\nstderr: {}\nscrape:\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A GET that reports failure instead of panicking (the server may not be up yet).
async fn try_get(addr: SocketAddr, path: &str) -> Option<Reply> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = sender.send_request(req).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// A Prometheus server of this test's own: killed (and its files removed) when dropped, so a
/// failing assert leaves nothing running.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts Prometheus on a free loopback port, scraping `target` every second, and waits
    /// until it is ready. A port taken between its check and Prometheus' bind is retried.
    async fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temporary directory for Prometheus");
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
                l.local_addr().expect("local addr").port()
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: chat-gateway\n    static_configs:\n      - targets: [\"{target}\"]\n"
                ),
            )
            .expect("write prometheus.yml");
            let data = dir.path().join("data");
            let log = dir.path().join("prometheus.log");
            let log_file = std::fs::File::create(&log).expect("create the Prometheus log");
            let child = std::process::Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1h")
                .current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(log_file.try_clone().expect("log file handle"))
                .stderr(log_file)
                .spawn()
                .expect("start prometheus");
            let mut prometheus = Prometheus {
                child,
                addr,
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = prometheus.child.try_wait().expect("prometheus status") {
                    let tail = prometheus.log_tail();
                    if tail.contains("address already in use") {
                        break; // another attempt on another port
                    }
                    panic!("prometheus exited ({status}):\n{tail}");
                }
                if try_get(addr, "/-/ready")
                    .await
                    .is_some_and(|r| r.status == 200)
                {
                    return prometheus;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 30s:\n{}",
                    prometheus.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus could not bind a free port in 3 attempts");
    }

    /// The value of an instant query that yields one sample; `None` when it yields nothing.
    async fn query(&self, promql: &str) -> Option<f64> {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(promql, NON_ALPHANUMERIC)
        );
        let reply = try_get(self.addr, &path).await?;
        let json: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
        assert_eq!(json["status"], "success", "{promql}: {json}");
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql} yields several series: {json}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls until every query yields its value, or fails at the deadline with what differed.
    async fn wait_for(&self, expected: &[(&str, f64)], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut differ = Vec::new();
            for (promql, want) in expected {
                let got = self.query(promql).await;
                if got != Some(*want) {
                    differ.push(format!("{promql}: {got:?}, expected {want}"));
                }
            }
            if differ.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not show the expected values within {within:?}:\n{}\nlog:\n{}",
                differ.join("\n"),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_contract_series() {
    let binary = require_tool("prometheus");
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 1\napp_per_second = 1000\napp_burst = 1000\n[coalesce]\nenabled = false\n",
    ))
    .await;
    let prometheus = Prometheus::start(&binary, gw.admin).await;
    prometheus
        .wait_for(
            &[(r#"up{job="chat-gateway"}"#, 1.0)],
            Duration::from_secs(30),
        )
        .await;

    // Traffic: OK requests to distinct groups, one validation rejection, and requests to one
    // hot group until one is rate limited (a token may come back on a busy machine: each
    // OK answer is counted).
    let mut oks = 0.0;
    for i in 0..3 {
        let reply = post_in_time(gw.addr, UPDATE, increase(&format!("ok-{i}"))).await;
        assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        oks += 1.0;
    }
    post_in_time(gw.addr, UPDATE, r#"{"GroupId":"g","GroupCounter":[]}"#)
        .await
        .assert_rejection(200, 10004, "validation");
    let mut limited = false;
    for _ in 0..10 {
        let reply = post_in_time(gw.addr, UPDATE, increase("hot")).await;
        if reply.rejected() == Some("rate_limit_group") {
            limited = true;
            break;
        }
        assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        oks += 1.0;
    }
    assert!(limited, "the hot group was never rate limited");

    let requests = oks + 2.0;
    prometheus
        .wait_for(
            &[
                (r#"up{job="chat-gateway"}"#, 1.0),
                (
                    r#"sum(chat_gateway_requests_total{job="chat-gateway",outcome="ok"})"#,
                    oks,
                ),
                (
                    r#"sum(chat_gateway_requests_total{job="chat-gateway",outcome="validation"})"#,
                    1.0,
                ),
                (
                    r#"sum(chat_gateway_requests_total{job="chat-gateway",outcome="rate_limit_group"})"#,
                    1.0,
                ),
                (
                    r#"sum(chat_gateway_requests_total{job="chat-gateway"})"#,
                    requests,
                ),
                (
                    r#"sum(chat_gateway_rate_limited_total{job="chat-gateway",scope="group"})"#,
                    1.0,
                ),
                (
                    r#"sum(chat_gateway_upstream_responses_total{job="chat-gateway",error_code="0"})"#,
                    oks,
                ),
                (
                    r#"sum(chat_gateway_request_duration_seconds_count{job="chat-gateway"})"#,
                    requests,
                ),
                (
                    r#"sum(chat_gateway_upstream_duration_seconds_count{job="chat-gateway"})"#,
                    oks,
                ),
                (
                    r#"sum(chat_gateway_request_duration_seconds_bucket{job="chat-gateway",le="+Inf"})"#,
                    requests,
                ),
            ],
            Duration::from_secs(30),
        )
        .await;
    drop(prometheus);
}

#[tokio::test]
async fn no_group_key_usersig_or_secret_in_the_scrape() {
    let script: Script = Arc::new(|r: &Recorded| {
        if String::from_utf8_lossy(&r.body).contains("gone") {
            (
                Duration::ZERO,
                json_response(
                    r#"{"ActionStatus":"FAIL","ErrorCode":10010,"ErrorInfo":"group grp-secret-canary-gone does not exist"}"#,
                ),
            )
        } else {
            (Duration::ZERO, json_response(OK))
        }
    });
    let upstream = spawn_recording(None, script).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        // Coalescing off: a refused increment must be answered at once (with it on, it waits
        // for its token).
        "[rate_limit]\ngroup_per_second = 1\ngroup_burst = 2\napp_per_second = 1000\napp_burst = 1000\n[coalesce]\nenabled = false\n",
    ))
    .await;

    let canary = "grp-secret-canary";
    let update = format!(
        r#"{{"GroupId":"{canary}","GroupCounter":[{{"Key":"key-canary","Value":1}}],"Mode":"Increase"}}"#
    );
    assert_eq!(
        post_in_time(gw.addr, UPDATE, update.clone())
            .await
            .error_code(),
        0
    );
    let get_keys = format!(r#"{{"GroupId":"{canary}","GroupCounterKeys":["key-canary"]}}"#);
    post_in_time(gw.addr, GET, get_keys).await;
    // The same group until it is rate limited (the refusal's ErrorInfo names the group).
    let mut limited = false;
    for _ in 0..10 {
        if post_in_time(gw.addr, UPDATE, update.clone())
            .await
            .rejected()
            == Some("rate_limit_group")
        {
            limited = true;
            break;
        }
    }
    assert!(limited, "never rate limited");
    post_in_time(
        gw.addr,
        DELETE,
        format!(r#"{{"GroupId":"{canary}-gone","GroupCounterKeys":["key-canary-gone"]}}"#),
    )
    .await;
    post_in_time(
        gw.addr,
        UPDATE,
        r#"{"GroupId":"grp-secret-canary-bad","GroupCounter":[{"Key":"key-canary-bad","Value":1.5}]}"#,
    )
    .await
    .assert_rejection(200, 10004, "validation");
    post_in_time(
        gw.addr,
        UPDATE,
        r#"{"GroupId":"@TGS#_grp-secret-canary","GroupCounter":[{"Key":"key-canary","Value":1}]}"#,
    )
    .await
    .assert_rejection(200, 10004, "validation");
    post_in_time(gw.addr, "/v4/grp_secret_canary/key_canary", "{}")
        .await
        .assert_rejection(200, 60009, "not_allowed");

    let seen = upstream.requests();
    assert!(
        seen.len() >= 3,
        "{} requests reached the upstream",
        seen.len()
    );
    let usersig = seen[0]
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == "usersig")
        .map(|(_, v)| v)
        .expect("the upstream got a usersig");
    assert!(usersig.len() > 32, "a real UserSig: {usersig}");

    let text = scrape_in_time(gw.admin).await;
    assert!(text.contains("chat_gateway_requests_total"), "{text}");
    let lower = text.to_ascii_lowercase();
    for needle in ["canary", "grp-secret", "key-canary", "grp_secret"] {
        assert!(!lower.contains(needle), "{needle:?} in the scrape:\n{text}");
    }
    assert!(!text.contains(SECRET), "the secret key in the scrape");
    assert!(
        !text.contains(&SECRET[..16]),
        "part of the secret key in the scrape"
    );
    assert!(!text.contains(&usersig), "the UserSig in the scrape");
    assert!(
        !text.contains(&usersig[..24]),
        "part of the UserSig in the scrape"
    );
}
