//! Fault injection: an upstream that misbehaves at the TCP, TLS and HTTP level (driven by hand
//! over raw sockets), callers that misbehave at the HTTP level, files that change under the
//! gateway, overload, shutdown with a stuck upstream, and what the built binary prints while
//! all that happens. Every case asserts the contract's answer and what did (or did not) reach
//! the upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::credentials::unix_now;
use chat_gateway::usersig::{self, SecretKey};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

pub(crate) const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const EXPIRED: &str = r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"UserSig expired"}"#;
const RETRIES: &str = "chat_gateway_upstream_retries_total";

/// Every answer in these tests comes within this, or the test fails (never hangs).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

pub(crate) fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

pub(crate) async fn post_in_time(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    tokio::time::timeout(ANSWER_WITHIN, post(addr, path, body))
        .await
        .unwrap_or_else(|_| panic!("no answer to POST {path} within {ANSWER_WITHIN:?}"))
}

/// POST with extra headers, over a fresh connection, within [`ANSWER_WITHIN`].
async fn post_with(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("request");
    tokio::time::timeout(ANSWER_WITHIN, send(addr, req))
        .await
        .unwrap_or_else(|_| panic!("no answer to POST {path} within {ANSWER_WITHIN:?}"))
}

pub(crate) async fn scrape_in_time(admin: SocketAddr) -> String {
    tokio::time::timeout(ANSWER_WITHIN, scrape(admin))
        .await
        .unwrap_or_else(|_| panic!("no /metrics answer within {ANSWER_WITHIN:?}"))
}

pub(crate) fn retries(scrape: &str, reason: &str) -> f64 {
    metric(scrape, &format!(r#"{RETRIES}{{reason="{reason}"}}"#))
}

/// `config_text` with other upstream timeouts.
pub(crate) fn with_timeouts(config: String, connect: &str, request: &str) -> String {
    config
        .replace(
            "connect_timeout = \"1s\"",
            &format!("connect_timeout = \"{connect}\""),
        )
        .replace(
            "request_timeout = \"2s\"",
            &format!("request_timeout = \"{request}\""),
        )
}

/// `config_text` with more `[server]` keys.
fn with_server(config: String, lines: &str) -> String {
    config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

fn ca_line(ca: &TestCa) -> String {
    format!("ca_file = {:?}", ca.ca_file().display().to_string())
}

/// A port nothing listens on (it was free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`. Returns how
/// long it took.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request as raw bytes: `POST {target}` with a JSON body and `extra` header lines.
fn raw_post(target: &str, host: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request, records it, then holds the connection open without answering.
pub(crate) fn never_answers() -> RawScript {
    raw_script(|mut c| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
        }
    })
}

/// Reads one request, records it, writes `answer`, then closes (FIN).
pub(crate) fn answers_then_closes(answer: &'static [u8]) -> RawScript {
    raw_script(move |mut c| async move {
        let mut buf = Vec::new();
        if let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
            let _ = c.stream.write_all(answer).await;
            let _ = c.stream.shutdown().await;
        }
    })
}

/// Reads one request in full, records it, then resets the connection (SO_LINGER 0).
fn resets_after_reading() -> RawScript {
    raw_script(|mut c| async move {
        let mut buf = Vec::new();
        if let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
            c.log.record(&req);
            let _ = c.stream.set_zero_linger();
            drop(c.stream);
        }
    })
}

/// Waits a little so that a resend (which must not happen) would have arrived, then checks
/// the upstream saw exactly one connection and one request.
pub(crate) async fn assert_sent_once(upstream: &RawUpstream, sent: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = upstream.log.requests();
    assert_eq!(seen.len(), 1, "exactly one attempt reached the upstream");
    assert_eq!(
        upstream.log.accepted(),
        1,
        "one connection, no second attempt"
    );
    assert_eq!(seen[0].body, sent.as_bytes(), "the whole body arrived");
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn closed_port_is_502_at_once() {
    let port = free_port();
    let config = with_timeouts(
        config_text(&format!("http://127.0.0.1:{port}"), "", ""),
        "5s",
        "10s",
    );
    let gw = spawn_gateway(&config).await;
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, increase("g")).await;
    let took = started.elapsed();
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    assert!(
        took < Duration::from_secs(3),
        "a refused connect is answered at once, not at connect_timeout (5s): {took:?}"
    );
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 0.0, "no backup configured");
}

/// A listener with a backlog of 1 that never accepts, its accept queue filled first: the next
/// SYN to it is dropped by the kernel, so a connect() stalls until the client gives up. That,
/// unlike a listener that accepts and then says nothing, is what `connect_timeout` (the TCP
/// connect) is about.
async fn stalled_listener() -> (TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => return (listener, fillers),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn connect_stall_is_502_at_connect_timeout_and_fails_over() {
    let (listener, _fillers) = stalled_listener().await;
    let primary = format!("http://{}", listener.local_addr().expect("addr"));
    let gw = spawn_gateway(&with_timeouts(config_text(&primary, "", ""), "1s", "10s")).await;
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, increase("g")).await;
    let took = started.elapsed();
    eprintln!("connect stall answered after {took:?}");
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered at connect_timeout (1s), not request_timeout (10s): {took:?}"
    );

    // A connect that times out provably sent nothing: with a backup it fails over once.
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&with_timeouts(
        config_text(
            &primary,
            &format!("backup_endpoint = \"{}\"", emulator.endpoint()),
            "",
        ),
        "1s",
        "10s",
    ))
    .await;
    let reply = post_in_time(gw.addr, UPDATE, increase("g")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.error_code(), 0);
    assert_eq!(reply.rejected(), None);
    assert_eq!(emulator.emulator.requests(), 1);
    assert_eq!(emulator.emulator.store().value("g", "likes"), Some(1));
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 1.0);
}

/// Accepts TCP, swallows the ClientHello and whatever follows, and never answers.
async fn spawn_tls_staller() -> RawUpstream {
    spawn_raw_upstream(raw_script(|mut c| async move {
        let mut sink = [0u8; 4096];
        while let Ok(n) = c.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    }))
    .await
}

/// An https upstream that accepts TCP but never completes the TLS handshake. The README says
/// `connect_timeout` covers "TCP and TLS set-up", so the answer is 502 at connect_timeout.
#[tokio::test]
async fn tls_handshake_stall_is_502_at_connect_timeout() {
    let upstream = spawn_tls_staller().await;
    let ca = TestCa::new();
    let gw = spawn_gateway(&with_timeouts(
        config_text(&format!("https://{}", upstream.addr), &ca_line(&ca), ""),
        "1s",
        "5s",
    ))
    .await;
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, increase("g")).await;
    let took = started.elapsed();
    assert_eq!(upstream.log.accepted(), 1, "the TCP connection was made");
    assert!(
        took < Duration::from_secs(3),
        "a stalled TLS handshake should end at connect_timeout (1s), not request_timeout (5s): took {took:?}, answered {} {:?}",
        reply.status,
        reply.body
    );
    reply.assert_rejection(502, 10002, "upstream_unavailable");
}

/// The same stalled handshake with a backup configured: the handshake never completed, so
/// the request provably never reached the primary and may fail over (DESIGN: "connect, DNS or
/// TLS-handshake failure").
#[tokio::test]
async fn tls_handshake_stall_fails_over_to_the_backup() {
    let primary = spawn_tls_staller().await;
    let ca = TestCa::new();
    let backup = spawn_emulator(Some(&ca)).await;
    let gw = spawn_gateway(&with_timeouts(
        config_text(
            &format!("https://{}", primary.addr),
            &format!(
                "{}
backup_endpoint = \"{}\"",
                ca_line(&ca),
                backup.endpoint()
            ),
            "",
        ),
        "1s",
        "5s",
    ))
    .await;
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, increase("g")).await;
    let took = started.elapsed();
    assert_eq!(
        (reply.status.as_u16(), reply.rejected()),
        (200, None),
        "failed over after {took:?}: {:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), 0);
    assert_eq!(backup.emulator.requests(), 1);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// After the request was sent
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slow_upstream_is_504_and_reached_once() {
    let upstream = spawn_raw_upstream(never_answers()).await;
    let gw = spawn_gateway(&with_timeouts(
        config_text(&upstream.endpoint(), "", ""),
        "1s",
        "1s",
    ))
    .await;
    let body = increase("slow");
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, body.clone()).await;
    let took = started.elapsed();
    eprintln!("slow upstream answered after {took:?}");
    reply.assert_rejection(504, 60008, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered at request_timeout (1s): {took:?}"
    );
    assert_sent_once(&upstream, &body).await;
}

#[tokio::test]
async fn reset_after_the_request_was_read_is_502_never_resent_even_with_a_backup() {
    let primary = spawn_raw_upstream(resets_after_reading()).await;
    let backup = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(
        &primary.endpoint(),
        &format!("backup_endpoint = \"{}\"", backup.endpoint()),
        "",
    ))
    .await;
    let body = increase("reset");
    let reply = post_in_time(gw.addr, UPDATE, body.clone()).await;
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    assert_sent_once(&primary, &body).await;
    assert_eq!(backup.count(), 0, "the backup saw nothing");
    assert_eq!(
        backup.connections.load(Ordering::SeqCst),
        0,
        "no connection to the backup"
    );
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 0.0);
    assert_eq!(retries(&m, "circuit_open"), 0.0);
}

#[tokio::test]
async fn unreadable_answers_are_502_and_never_resent() {
    let cases: [(&str, &'static [u8]); 4] = [
        (
            "truncated body",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ActionStatus\":\"OK\"",
        ),
        ("garbage status line", b"FOO/9.9 what even\r\n\r\n"),
        ("closed without a byte", b""),
        (
            "broken chunked encoding",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n",
        ),
    ];
    for (name, answer) in cases {
        let upstream = spawn_raw_upstream(answers_then_closes(answer)).await;
        let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
        let body = increase("unreadable");
        let reply = post_in_time(gw.addr, UPDATE, body.clone()).await;
        assert_eq!(reply.status, 502, "{name}: {:?}", reply.body);
        reply.assert_rejection(502, 10002, "upstream_unavailable");
        assert_sent_once(&upstream, &body).await;
    }
}

#[tokio::test]
async fn upstream_60018_passes_through_byte_for_byte() {
    // Odd spacing and a field order of its own: the caller gets exactly these bytes.
    const BUSY: &str = "{ \"ErrorCode\" : 60018,\"ActionStatus\":\"FAIL\",\n\"ErrorInfo\":\"request frequency limit\" }";
    let upstream = spawn_recording(None, ok_answer(BUSY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let reply = post_in_time(gw.addr, UPDATE, increase("busy")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, BUSY.as_bytes(), "byte-identical");
    assert_eq!(
        reply.rejected(),
        None,
        "Tencent's own answer: no rejection header"
    );
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(upstream.count(), 1);
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(
        metric(
            &m,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="upstream_error"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="overloaded"}"#
        ),
        0.0,
        "Tencent's 60018 is not the gateway's own overload"
    );
}

#[tokio::test]
async fn usersig_expired_once_is_renewed_and_resent_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let script: Script = {
        let calls = calls.clone();
        Arc::new(move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                (Duration::ZERO, json_response(EXPIRED))
            } else {
                (Duration::ZERO, json_response(OK))
            }
        })
    };
    let upstream = spawn_recording(None, script).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    eventually(Duration::from_secs(10), "gateway ready", || async {
        get(gw.admin, "/readyz").await.status == 200
    })
    .await;
    // The first sig was made by now. A sig renewed within that same second would be the very
    // same text (TLS sig v2 signs whole seconds), so let the clock move on first.
    let signed_by = unix_now();
    eventually(Duration::from_secs(3), "the clock moved on", || async {
        unix_now() > signed_by
    })
    .await;

    let reply = post_in_time(gw.addr, UPDATE, increase("expired")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.error_code(), 0, "the caller gets the resend's answer");
    assert_eq!(reply.rejected(), None);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "the first attempt and one resend");
    assert_eq!(seen[0].body, seen[1].body);
    let sig = |r: &Recorded| {
        r.query_pairs()
            .into_iter()
            .find(|(k, _)| k == "usersig")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .expect("usersig")
    };
    let (first, second) = (sig(&seen[0]), sig(&seen[1]));
    assert_ne!(first, second, "the resend carries a renewed UserSig");
    let now = unix_now();
    let doc1 = usersig::verify(&key(), &first, SDKAPPID, ADMIN, now).expect("first verifies");
    let doc2 = usersig::verify(&key(), &second, SDKAPPID, ADMIN, now).expect("second verifies");
    assert!(doc2.time > doc1.time, "renewed later");
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "usersig_expired"), 1.0);
    assert_eq!(retries(&m, "connect_failover"), 0.0);
}

/// The upstream answers one request with keep-alive, then closes the idle connection. The
/// next request must still succeed, and reach the upstream exactly once.
#[tokio::test]
async fn pooled_connection_closed_while_idle_is_not_a_failure() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let upstream = spawn_raw_upstream(raw_script(move |mut c| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
                c.log.record(&req);
                let _ = c.stream.write_all(&raw_json_response(OK)).await;
                // Idle for a moment on a connection the gateway keeps in its pool, then go.
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(c.stream);
                let _ = closed_tx.send(c.index);
            }
        }
    }))
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let reply = post_in_time(gw.addr, UPDATE, increase(&format!("idle-{round}"))).await;
        assert_eq!(reply.status, 200, "round {round}: {:?}", reply.body);
        assert_eq!(reply.error_code(), 0, "round {round}");
        // Send the next one right after the upstream closed the pooled connection.
        let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
            .await
            .expect("the upstream closed its connection");
        assert_eq!(closed, Some(round));
    }
    let seen = upstream.log.requests();
    for round in 0..ROUNDS {
        let copies = seen
            .iter()
            .filter(|r| r.body == increase(&format!("idle-{round}")).as_bytes())
            .count();
        assert_eq!(copies, 1, "round {round} reached the upstream once");
    }
    assert_eq!(seen.len(), ROUNDS);
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn ca_with_leaf(names: &[&str], validity: Option<(Day, Day)>) -> TestCa {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    TestCa::issue(&names, validity)
}

#[tokio::test]
async fn bad_certificates_are_502_and_nothing_is_sent() {
    let other_ca = TestCa::new();
    let cases: Vec<(&str, TestCa, Option<PathBuf>)> = vec![
        (
            "certificate for another host name",
            ca_with_leaf(&["wrong.example"], None),
            None,
        ),
        (
            "expired certificate",
            ca_with_leaf(
                &["127.0.0.1", "localhost"],
                Some(((2020, 1, 1), (2021, 1, 1))),
            ),
            None,
        ),
        (
            "certificate from a CA the gateway does not trust",
            ca_with_leaf(&["127.0.0.1", "localhost"], None),
            Some(other_ca.ca_file()),
        ),
    ];
    for (name, ca, trusted) in cases {
        let upstream = spawn_recording(Some(&ca), ok_answer(OK)).await;
        let trusted = trusted.unwrap_or_else(|| ca.ca_file());
        let gw = spawn_gateway(&config_text(
            &upstream.endpoint(),
            &format!("ca_file = {:?}", trusted.display().to_string()),
            "",
        ))
        .await;
        let reply = post_in_time(gw.addr, UPDATE, increase("tls")).await;
        assert_eq!(reply.status, 502, "{name}: {:?}", reply.body);
        reply.assert_rejection(502, 10002, "upstream_unavailable");
        assert!(
            upstream.connections.load(Ordering::SeqCst) >= 1,
            "{name}: a handshake was attempted"
        );
        assert_eq!(
            upstream.count(),
            0,
            "{name}: no request reached the upstream"
        );
    }
    // Control: the same kind of setup with a good certificate works.
    let ca = ca_with_leaf(&["127.0.0.1", "localhost"], None);
    let upstream = spawn_recording(Some(&ca), ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), &ca_line(&ca), "")).await;
    let reply = post_in_time(gw.addr, UPDATE, increase("tls")).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(upstream.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Failover and the circuit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn refused_primary_fails_over_then_the_circuit_opens() {
    let port = free_port();
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &format!("http://127.0.0.1:{port}"),
        &format!("backup_endpoint = \"{}\"", emulator.endpoint()),
        "",
    ))
    .await;
    let ok = |reply: &Reply, n: usize| {
        assert_eq!(reply.status, 200, "request {n}: {:?}", reply.body);
        assert_eq!(reply.error_code(), 0, "request {n}");
        assert_eq!(reply.rejected(), None, "request {n}");
    };
    let reply = post_in_time(gw.addr, UPDATE, increase("failover")).await;
    ok(&reply, 1);
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 1.0);
    assert_eq!(metric(&m, "chat_gateway_upstream_circuit_open"), 0.0);

    // Failures 2..=5 in a row: each fails over; the fifth opens the circuit.
    let threshold = chat_gateway::upstream::targets::CIRCUIT_THRESHOLD as usize;
    for n in 2..=threshold {
        let reply = post_in_time(gw.addr, UPDATE, increase("failover")).await;
        ok(&reply, n);
    }
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), threshold as f64);
    assert_eq!(
        metric(&m, "chat_gateway_upstream_circuit_open"),
        1.0,
        "open after {threshold} consecutive connect failures"
    );
    assert_eq!(retries(&m, "circuit_open"), 0.0);

    // While open (CIRCUIT_COOL_DOWN is 30s), requests go straight to the backup.
    for n in 1..=3 {
        let reply = post_in_time(gw.addr, UPDATE, increase("failover")).await;
        ok(&reply, threshold + n);
    }
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "circuit_open"), 3.0);
    assert_eq!(
        retries(&m, "connect_failover"),
        threshold as f64,
        "no further attempts on the primary"
    );
    assert_eq!(metric(&m, "chat_gateway_upstream_circuit_open"), 1.0);
    let total = threshold + 3;
    assert_eq!(emulator.emulator.requests(), total as u64);
    assert_eq!(
        emulator.emulator.store().value("failover", "likes"),
        Some(total as i64),
        "every Increase applied once"
    );
}

// ---------------------------------------------------------------------------------------------
// Callers that misbehave
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slowloris_headers_are_cut_off_at_header_read_timeout() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&with_server(
        config_text(&upstream.endpoint(), "", ""),
        "header_read_timeout = \"1s\"",
    ))
    .await;
    let head = raw_post(
        GET,
        "gw",
        &format!("x-padding: {}\r\n", "a".repeat(100)),
        r#"{"GroupId":"g"}"#,
    );
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    // One byte every 100 ms: the whole head would take ~20 s.
    let writer = tokio::spawn(async move {
        for b in head {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        let mut chunk = [0u8; 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    eprintln!("slowloris cut off after {took:?}");
    writer.abort();
    assert!(
        ended.is_ok(),
        "the gateway kept a trickling connection open for 8s"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3500),
        "closed at header_read_timeout (1s): {took:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408"),
        "closed, or 408, and nothing else: {text:?}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn stalled_body_is_invalid_json_at_body_read_timeout() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&with_server(
        config_text(&upstream.endpoint(), "", ""),
        "body_read_timeout = \"1s\"",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {UPDATE} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"GroupId\""
    );
    assert_eq!(head.split("\r\n\r\n").nth(1).map(str::len), Some(10));
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("write");
    let reply = tokio::time::timeout(Duration::from_secs(8), read_raw_response(&mut stream))
        .await
        .expect("answered within 8s")
        .expect("an answer, not a closed connection");
    let took = started.elapsed();
    eprintln!("stalled body answered after {took:?}");
    reply.assert_rejection(200, 60003, "invalid_json");
    let info = reply.json()["ErrorInfo"].as_str().unwrap_or("").to_string();
    assert!(info.contains("did not arrive"), "{info}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "at body_read_timeout (1s): {took:?}"
    );
    assert_eq!(upstream.count(), 0, "nothing forwarded");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_early_and_memory_stays_flat() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&with_server(
        config_text(&upstream.endpoint(), "", ""),
        "max_body_bytes = 1024",
    ))
    .await;

    // With Content-Length: refused on the header alone; the body is never sent.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {UPDATE} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 1025\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let reply = tokio::time::timeout(Duration::from_secs(5), read_raw_response(&mut stream))
        .await
        .expect("answered without the body")
        .expect("an answer");
    reply.assert_rejection(200, 10004, "body_too_large");
    drop(stream);

    // Chunked, max + 1 bytes: the bounded read refuses it.
    let over = format!(r#"{{"GroupId":"g","Pad":"{}"}}"#, "x".repeat(1024 - 23));
    assert_eq!(over.len(), 1025);
    let chunked = format!(
        "POST {UPDATE} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{over}\r\n0\r\n\r\n",
        over.len()
    );
    raw_exchange(gw.addr, chunked.as_bytes(), Duration::from_secs(5))
        .await
        .expect("an answer")
        .assert_rejection(200, 10004, "body_too_large");

    // 10 MiB chunked: memory stays flat (the gateway runs in this process). Other tests run
    // in parallel in the same process, so the best of three tries counts; a gateway that
    // buffers the body grows by 10 MiB on every try.
    const TOTAL: usize = 10 * 1024 * 1024;
    let mut growths = Vec::new();
    for _ in 0..3 {
        let growth = chunked_upload_growth(gw.addr, TOTAL).await;
        growths.push(growth);
        if growth < 4 * 1024 * 1024 {
            break;
        }
    }
    let best = growths.iter().copied().min().unwrap_or(u64::MAX);
    eprintln!("10 MiB chunked body: RSS growth per try {growths:?} bytes");
    assert!(
        best < 4 * 1024 * 1024,
        "RSS grew by {growths:?} bytes while a 10 MiB body was refused"
    );
    assert_eq!(upstream.count(), 0, "nothing forwarded");
}

/// Streams `total` bytes as a chunked body from one reused 64 KiB buffer while sampling this
/// process's RSS; checks the answer is body_too_large; returns the peak growth.
async fn chunked_upload_growth(addr: SocketAddr, total: usize) -> u64 {
    let baseline = vm_rss_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(vm_rss_bytes(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {UPDATE} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        if wr.write_all(head.as_bytes()).await.is_err() {
            return 0;
        }
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let frame = format!("{:x}\r\n", chunk.len());
            if wr.write_all(frame.as_bytes()).await.is_err()
                || wr.write_all(&chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return sent;
            }
            sent += chunk.len();
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
        sent
    });
    let reply = tokio::time::timeout(Duration::from_secs(20), read_raw_response(&mut rd))
        .await
        .expect("answered within 20s")
        .expect("an answer");
    reply.assert_rejection(200, 10004, "body_too_large");
    let _ = tokio::time::timeout(Duration::from_secs(20), writer).await;
    peak.fetch_max(vm_rss_bytes(), Ordering::SeqCst);
    sampler.abort();
    peak.load(Ordering::SeqCst).saturating_sub(baseline)
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused_by_the_http_layer() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let body = r#"{"GroupId":"g"}"#;
    let many = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();

    // Control: 60 extra headers (63 in all) are within the limit of 64 and go through.
    let reply = raw_exchange(
        gw.addr,
        &raw_post(GET, "gw", &many(60), body),
        Duration::from_secs(10),
    )
    .await
    .expect("answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(upstream.count(), 1);

    for (name, extra) in [
        ("100 headers", many(100)),
        (
            "a 32 KiB header",
            format!("x-big: {}\r\n", "a".repeat(32 * 1024)),
        ),
    ] {
        let answer = raw_exchange(
            gw.addr,
            &raw_post(GET, "gw", &extra, body),
            Duration::from_secs(10),
        )
        .await;
        if let Some(reply) = answer {
            assert_eq!(reply.status, 431, "{name}: {:?}", reply.body);
            eprintln!("{name}: answered {}", reply.status);
        } else {
            eprintln!("{name}: connection closed without an answer");
        }
    }
    assert_eq!(upstream.count(), 1, "nothing more was forwarded");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ssrf {
    /// 200/60009 not_allowed, nothing forwarded.
    NotAllowed,
    /// Forwarded to the configured upstream (never anywhere else), query dropped.
    Forwarded,
    /// Refused by the HTTP layer: 400, or the connection closed without an answer.
    Malformed,
    /// Whatever the answer, no tunnel: bytes sent after it reach no one (see
    /// `connect_method_is_refused_with_the_envelope` for the answer itself).
    NoTunnel,
}

#[tokio::test]
async fn ssrf_attempts_never_reach_another_host() {
    // The canary counts every connection made to it: it must stay at zero.
    let canary = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let c = canary.local_addr().expect("addr");
    let canary_hits = Arc::new(AtomicUsize::new(0));
    let canary_task = {
        let hits = canary_hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = canary.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        })
    };
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let body = r#"{"GroupId":"g"}"#;
    let gw_host = gw.addr.to_string();
    let cases: Vec<(String, Vec<u8>, Ssrf)> = vec![
        (
            "absolute-form http target naming the canary".into(),
            raw_post(&format!("http://{c}{GET}"), &c.to_string(), "", body),
            Ssrf::NotAllowed,
        ),
        (
            "absolute-form https target naming the canary".into(),
            raw_post(&format!("https://{c}{GET}"), &gw_host, "", body),
            Ssrf::NotAllowed,
        ),
        (
            "absolute-form target with userinfo".into(),
            raw_post(&format!("http://user@{c}{GET}"), &gw_host, "", body),
            Ssrf::NotAllowed,
        ),
        (
            "Host: the canary".into(),
            raw_post(GET, &c.to_string(), "", body),
            Ssrf::Forwarded,
        ),
        (
            "X-Forwarded-Host and Forwarded naming the canary".into(),
            raw_post(
                GET,
                &gw_host,
                &format!("x-forwarded-host: {c}\r\nforwarded: host={c}\r\nx-original-url: http://{c}/\r\n"),
                body,
            ),
            Ssrf::Forwarded,
        ),
        (
            "query naming the canary".into(),
            raw_post(
                &format!("{GET}?endpoint=http://{c}&url=http%3A%2F%2F{c}"),
                &gw_host,
                "",
                body,
            ),
            Ssrf::Forwarded,
        ),
        (
            "two Host headers".into(),
            raw_post(GET, &gw_host, &format!("host: {c}\r\n"), body),
            Ssrf::NotAllowed,
        ),
        (
            "Host with userinfo".into(),
            raw_post(GET, &format!("x@{c}"), "", body),
            Ssrf::NotAllowed,
        ),
        (
            "path with ..".into(),
            raw_post(
                &format!("/v4/group_open_http_svc/../../{c}/v4/group_open_http_svc/get_group_counter"),
                &gw_host,
                "",
                body,
            ),
            Ssrf::NotAllowed,
        ),
        (
            "path with %2e%2e".into(),
            raw_post(
                "/v4/group_open_http_svc/%2e%2e/get_group_counter",
                &gw_host,
                "",
                body,
            ),
            Ssrf::NotAllowed,
        ),
        (
            "path with %2F".into(),
            raw_post(
                "/v4/group_open_http_svc%2Fget_group_counter",
                &gw_host,
                "",
                body,
            ),
            Ssrf::NotAllowed,
        ),
        (
            "path with %2F%2F and the canary".into(),
            raw_post(
                &format!("/v4/x/y%2F%2F{c}%2Fv4%2Fa%2Fb"),
                &gw_host,
                "",
                body,
            ),
            Ssrf::NotAllowed,
        ),
        (
            "path starting with //canary".into(),
            raw_post(&format!("//{c}{GET}"), &gw_host, "", body),
            Ssrf::NotAllowed,
        ),
        (
            "path with //".into(),
            raw_post(
                "/v4//group_open_http_svc/get_group_counter",
                &gw_host,
                "",
                body,
            ),
            Ssrf::NotAllowed,
        ),
        (
            "path with @canary".into(),
            raw_post(&format!("/v4/a/b@{c}"), &gw_host, "", body),
            Ssrf::NotAllowed,
        ),
        (
            "CONNECT to the canary".into(),
            format!("CONNECT {c} HTTP/1.1\r\nhost: {c}\r\n\r\nGET / HTTP/1.1\r\nhost: {c}\r\n\r\n")
                .into_bytes(),
            Ssrf::NoTunnel,
        ),
        (
            "OPTIONS *".into(),
            format!("OPTIONS * HTTP/1.1\r\nhost: {c}\r\n\r\n").into_bytes(),
            Ssrf::NotAllowed,
        ),
        (
            "target with a space and the canary".into(),
            raw_post(&format!("/v4/a/b http://{c}/"), &gw_host, "", body),
            Ssrf::Malformed,
        ),
    ];
    let mut forwarded = 0;
    for (name, bytes, expect) in cases {
        let answer = raw_exchange(gw.addr, &bytes, Duration::from_secs(10)).await;
        match expect {
            Ssrf::NotAllowed => {
                let reply = answer.unwrap_or_else(|| panic!("{name}: closed without an answer"));
                assert_eq!(reply.status, 200, "{name}: {:?}", reply.body);
                reply.assert_rejection(200, 60009, "not_allowed");
            }
            Ssrf::NoTunnel => {}
            Ssrf::Malformed => {
                if let Some(reply) = answer {
                    assert_eq!(reply.status, 400, "{name}: {:?}", reply.body);
                }
            }
            Ssrf::Forwarded => {
                let reply = answer.unwrap_or_else(|| panic!("{name}: closed without an answer"));
                assert_eq!(reply.status, 200, "{name}");
                assert_eq!(reply.error_code(), 0, "{name}: {:?}", reply.body);
                assert_eq!(reply.rejected(), None, "{name}");
                forwarded += 1;
                let last = upstream.requests().pop().expect("recorded");
                assert_eq!(last.authority, upstream.addr.to_string(), "{name}");
                assert_eq!(last.path, GET, "{name}");
                let keys: Vec<String> = last.query_pairs().into_iter().map(|(k, _)| k).collect();
                assert_eq!(
                    keys,
                    ["sdkappid", "identifier", "usersig", "random", "contenttype"],
                    "{name}: the caller's query was dropped"
                );
            }
        }
        assert_eq!(upstream.count(), forwarded, "{name}: forwarded count");
        assert_eq!(canary_hits.load(Ordering::SeqCst), 0, "{name}: canary hit");
    }
    // Wait a moment for any late connection attempt, then check once more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(canary_hits.load(Ordering::SeqCst), 0, "canary hit");
    canary_task.abort();
}

// ---------------------------------------------------------------------------------------------
// Caller authentication and token rotation
// ---------------------------------------------------------------------------------------------

/// Swaps a Kubernetes-style `..data` symlink in `dir` to a new directory `name` holding
/// `file` with `content`, atomically (symlink beside it, then rename over).
fn k8s_swap(dir: &Path, name: &str, file: &str, content: &str) {
    let target = dir.join(name);
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join(file), content).expect("write");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(name, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("rename over ..data");
}

/// `dir/file -> ..data/file`, `..data -> name`, holding `content`.
fn k8s_mount(dir: &Path, name: &str, file: &str, content: &str) -> PathBuf {
    let target = dir.join(name);
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join(file), content).expect("write");
    std::os::unix::fs::symlink(name, dir.join("..data")).expect("symlink ..data");
    let path = dir.join(file);
    std::os::unix::fs::symlink(format!("..data/{file}"), &path).expect("symlink file");
    path
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn assert_unauthorized(addr: SocketAddr, headers: &[(&str, &str)], what: &str) {
    let reply = post_with(addr, GET, r#"{"GroupId":"g"}"#, headers).await;
    assert_eq!(reply.status, 401, "{what}: {:?}", reply.body);
    reply.assert_rejection(401, 60004, "unauthorized");
    assert_eq!(
        reply
            .headers
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..]),
        "{what}"
    );
}

async fn passes(addr: SocketAddr, token: &str) -> bool {
    let auth = bearer(token);
    let reply = post_with(
        addr,
        GET,
        r#"{"GroupId":"g"}"#,
        &[("authorization", auth.as_str())],
    )
    .await;
    match reply.status.as_u16() {
        200 => {
            assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
            true
        }
        401 => false,
        other => panic!("unexpected {other}: {:?}", reply.body),
    }
}

fn no_authorization_upstream(upstream: &RecordingUpstream) {
    for r in upstream.requests() {
        assert!(
            r.headers.get(http::header::AUTHORIZATION).is_none(),
            "the caller's Authorization reached the upstream"
        );
    }
}

#[tokio::test]
async fn caller_auth_on_and_off_and_token_rotation() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;

    // Off: any or no Authorization passes, and none reaches the upstream.
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    assert!(passes(gw.addr, "anything").await);
    let reply = post_with(gw.addr, GET, r#"{"GroupId":"g"}"#, &[]).await;
    assert_eq!(reply.error_code(), 0);
    drop(gw);

    // On, with a plain file replaced by rename.
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# callers\nold-token-1111\n").expect("write");
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = {:?}\n", tokens.display().to_string()),
    ))
    .await;
    assert_unauthorized(gw.addr, &[], "no Authorization").await;
    assert_unauthorized(
        gw.addr,
        &[("authorization", "Bearer wrong-token")],
        "wrong token",
    )
    .await;
    assert_unauthorized(
        gw.addr,
        &[("authorization", "Basic old-token-1111")],
        "not a bearer token",
    )
    .await;
    let before = upstream.count();
    assert!(passes(gw.addr, "old-token-1111").await, "the right token");
    assert_eq!(upstream.count(), before + 1);

    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, "new-token-2222\n").expect("write");
    std::fs::rename(&staged, &tokens).expect("rename");
    let took = eventually(
        Duration::from_secs(5),
        "renamed tokens file in force",
        || async {
            !passes(gw.addr, "old-token-1111").await && passes(gw.addr, "new-token-2222").await
        },
    )
    .await;
    eprintln!("tokens rename in force after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(gw);

    // On, mounted the Kubernetes way; the ..data symlink is swapped.
    let mount = tempfile::tempdir().expect("dir");
    let tokens = k8s_mount(mount.path(), "..2026_01", "tokens", "k8s-token-3333\n");
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = {:?}\n", tokens.display().to_string()),
    ))
    .await;
    assert!(passes(gw.addr, "k8s-token-3333").await);
    assert!(!passes(gw.addr, "k8s-token-4444").await);
    k8s_swap(mount.path(), "..2026_02", "tokens", "k8s-token-4444\n");
    let took = eventually(
        Duration::from_secs(5),
        "swapped tokens in force",
        || async {
            !passes(gw.addr, "k8s-token-3333").await && passes(gw.addr, "k8s-token-4444").await
        },
    )
    .await;
    eprintln!("tokens ..data swap in force after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    no_authorization_upstream(&upstream);
}

// ---------------------------------------------------------------------------------------------
// Secret key rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn secret_rotation_by_symlink_swap_and_an_empty_key_keeps_the_last_good_one() {
    const NEW_SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let new_key = SecretKey::new(NEW_SECRET).expect("key");
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let mount = tempfile::tempdir().expect("dir");
    let key_path = k8s_mount(mount.path(), "..2026_01", "key", &format!("{SECRET}\n"));
    let config = config_text(&upstream.endpoint(), "", "").replace(
        "secret_key_file = \"/not/read/in/tests\"",
        &format!("secret_key_file = {:?}", key_path.display().to_string()),
    );
    assert!(config.contains(&key_path.display().to_string()));
    let gw = spawn_gateway_with_key(&config, key()).await;

    let last_sig = || {
        let r = upstream.requests().pop().expect("recorded");
        r.query_pairs()
            .into_iter()
            .find(|(k, _)| k == "usersig")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .expect("usersig")
    };
    let verifies =
        |k: &SecretKey, sig: &str| usersig::verify(k, sig, SDKAPPID, ADMIN, unix_now()).is_ok();

    let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
    assert_eq!(reply.error_code(), 0);
    assert!(verifies(&key(), &last_sig()), "signed with the first key");

    k8s_swap(mount.path(), "..2026_02", "key", &format!("{NEW_SECRET}\n"));
    let took = eventually(
        Duration::from_secs(6),
        "signing with the new key",
        || async {
            let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
            assert_eq!(reply.error_code(), 0);
            verifies(&new_key, &last_sig())
        },
    )
    .await;
    eprintln!("secret rotation: new key in use after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(!verifies(&key(), &last_sig()), "not with the old key");
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(metric(&m, "chat_gateway_secret_key_loaded"), 1.0);

    // An empty key file: the gateway says so and keeps signing with the last good key.
    k8s_swap(mount.path(), "..2026_03", "key", "");
    eventually(
        Duration::from_secs(6),
        "secret_key_loaded drops to 0",
        || async {
            metric(
                &scrape_in_time(gw.admin).await,
                "chat_gateway_secret_key_loaded",
            ) == 0.0
        },
    )
    .await;
    for _ in 0..3 {
        let reply = post_in_time(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
        assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        assert!(verifies(&new_key, &last_sig()), "still the last good key");
    }
    assert_eq!(get(gw.admin, "/readyz").await.status, 200, "still ready");
}

// ---------------------------------------------------------------------------------------------
// Overload and shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn overload_with_a_stalled_upstream_is_refused_fast() {
    let upstream = spawn_raw_upstream(never_answers()).await;
    let gw = spawn_gateway(&with_server(
        with_timeouts(config_text(&upstream.endpoint(), "", ""), "1s", "60s"),
        "max_in_flight = 4",
    ))
    .await;
    let hanging: Vec<_> = (0..4)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move { post(addr, UPDATE, increase(&format!("hang-{i}"))).await })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "4 requests held upstream",
        || async { upstream.log.count() == 4 },
    )
    .await;

    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut times = Vec::new();
    for i in 0..20 {
        sender.ready().await.expect("ready");
        let req = Request::post(UPDATE)
            .header("host", "gw")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(increase(&format!("more-{i}")))))
            .expect("request");
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .expect("answered")
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let took = started.elapsed();
        times.push(took);
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
        .assert_rejection(503, 60018, "overloaded");
    }
    let slowest = times.iter().max().copied().unwrap_or_default();
    eprintln!("overload: slowest refusal {slowest:?}");
    assert!(
        slowest < Duration::from_millis(50),
        "each refusal in under 50ms; slowest {slowest:?} of {times:?}"
    );
    assert_eq!(
        upstream.log.count(),
        4,
        "none of the 20 reached the upstream"
    );
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(
        metric(
            &m,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="overloaded"}"#
        ),
        20.0
    );
    for h in hanging {
        h.abort();
    }
    conn.abort();
}

/// `config_text` with `upstream.max_in_flight` set.
fn with_upstream_slots(config: String, slots: usize) -> String {
    config.replacen(
        "[upstream]\n",
        &format!("[upstream]\nmax_in_flight = {slots}\n"),
        1,
    )
}

/// Answers every request on the connection after `delay`, keeping it open; records the most
/// requests it was holding at once across all connections.
fn answers_after(delay: Duration, busy: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) -> RawScript {
    raw_script(move |mut c| {
        let (busy, peak) = (busy.clone(), peak.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
                c.log.record(&req);
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                if c.stream.write_all(&raw_json_response(OK)).await.is_err() {
                    return;
                }
            }
        }
    })
}

#[tokio::test]
async fn upstream_max_in_flight_bounds_connections_and_the_rest_wait_their_turn() {
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let upstream = spawn_raw_upstream(answers_after(
        Duration::from_millis(500),
        busy,
        peak.clone(),
    ))
    .await;
    let gw = spawn_gateway(&with_upstream_slots(
        with_timeouts(config_text(&upstream.endpoint(), "", ""), "1s", "5s"),
        2,
    ))
    .await;
    let started = Instant::now();
    let callers: Vec<_> = (0..6)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(
                async move { post_in_time(addr, UPDATE, increase(&format!("q-{i}"))).await },
            )
        })
        .collect();
    let m = loop {
        // While four wait, the gauge says so.
        let m = scrape_in_time(gw.admin).await;
        if metric(&m, "chat_gateway_upstream_requests_waiting") == 4.0 {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "four never seen waiting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(metric(&m, "chat_gateway_upstream_requests_in_flight"), 2.0);
    for caller in callers {
        let reply = caller.await.expect("join");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["ErrorCode"], 0);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1450),
        "six requests through two slots take three rounds of 500ms: {took:?}"
    );
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "never more than 2 at once upstream"
    );
    assert!(
        upstream.log.accepted() <= 2,
        "at most 2 connections opened: {}",
        upstream.log.accepted()
    );
    assert_eq!(upstream.log.count(), 6, "each request sent once");
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(metric(&m, "chat_gateway_upstream_requests_waiting"), 0.0);
}

/// With one slot and an upstream that never answers, the slot frees only when its holder times
/// out: the second caller in the queue gets it then (and times out in turn), and the third is
/// refused once it has waited request_timeout, never having been sent.
#[tokio::test]
async fn no_upstream_slot_within_request_timeout_is_overloaded_and_never_sent() {
    let upstream = spawn_raw_upstream(never_answers()).await;
    let gw = spawn_gateway(&with_upstream_slots(
        with_timeouts(config_text(&upstream.endpoint(), "", ""), "1s", "1s"),
        1,
    ))
    .await;
    let spawn_post = |group: &'static str| {
        let addr = gw.addr;
        tokio::spawn(async move { post_in_time(addr, UPDATE, increase(group)).await })
    };
    let waiting = |n: f64| {
        let admin = gw.admin;
        move || async move {
            metric(
                &scrape_in_time(admin).await,
                "chat_gateway_upstream_requests_waiting",
            ) == n
        }
    };
    let first = spawn_post("holds-the-slot");
    eventually(Duration::from_secs(5), "first request upstream", || async {
        upstream.log.count() == 1
    })
    .await;
    let second = spawn_post("next-in-line");
    eventually(Duration::from_millis(500), "second waiting", waiting(1.0)).await;
    let started = Instant::now();
    let third = post_in_time(gw.addr, UPDATE, increase("refused")).await;
    let took = started.elapsed();
    third.assert_rejection(503, 60018, "overloaded");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "waited request_timeout (1s) for a slot, then refused: {took:?}"
    );
    first
        .await
        .expect("join")
        .assert_rejection(504, 60008, "upstream_timeout");
    second
        .await
        .expect("join")
        .assert_rejection(504, 60008, "upstream_timeout");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<String> = upstream
        .log
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(sent, [increase("holds-the-slot"), increase("next-in-line")]);
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(
        metric(
            &m,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="overloaded"}"#
        ),
        1.0
    );
    assert_eq!(metric(&m, "chat_gateway_upstream_requests_waiting"), 0.0);
}

/// A gateway with a request in flight that the upstream never answers, shut down with
/// drain_delay 0s and shutdown_grace 1s. Returns the gateway's and the caller's tasks.
async fn stuck_request_then_shutdown() -> (
    Duration,
    Instant,
    tokio::task::JoinHandle<(Result<http::StatusCode, hyper::Error>, Instant)>,
    RawUpstream,
) {
    let upstream = spawn_raw_upstream(never_answers()).await;
    let config = with_timeouts(config_text(&upstream.endpoint(), "", ""), "1s", "60s")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    assert!(config.contains("drain_delay = \"0s\""));
    let mut gw = spawn_gateway(&config).await;
    let addr = gw.addr;
    let caller = spawn_stuck_caller(addr);
    eventually(
        Duration::from_secs(10),
        "the request is held upstream",
        || async { upstream.log.count() == 1 },
    )
    .await;
    let signalled = Instant::now();
    gw.signal_shutdown();
    tokio::time::timeout(Duration::from_secs(5), &mut gw.task)
        .await
        .expect("run() returned within 5s")
        .expect("run() did not panic");
    (signalled.elapsed(), signalled, caller, upstream)
}

#[tokio::test]
async fn shutdown_with_a_stuck_upstream_run_returns_at_shutdown_grace() {
    let (returned, _, caller, _upstream) = stuck_request_then_shutdown().await;
    assert!(
        returned >= Duration::from_millis(900) && returned < Duration::from_secs(2),
        "run() returns at shutdown_grace (1s), at most 1s later: {returned:?}"
    );
    caller.abort();
}

/// When run() has returned, the gateway holds nothing open: the caller whose request was cut
/// off by the grace period learns at once (its connection is closed without an answer: the
/// upstream never said a word, so there is nothing to pass on).
#[tokio::test]
async fn shutdown_with_a_stuck_upstream_closes_the_caller_when_run_returns() {
    let (_, signalled, caller, _upstream) = stuck_request_then_shutdown().await;
    let run_returned = signalled.elapsed();
    let (result, ended) = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .unwrap_or_else(|_| panic!("the caller's request was still open 5s after run() returned"))
        .expect("join");
    match result {
        Err(e) => assert!(
            e.is_incomplete_message() || e.is_closed() || e.is_canceled(),
            "{e}"
        ),
        Ok(status) => panic!("answered {status} although the upstream never answered"),
    }
    let learned = ended.duration_since(signalled);
    assert!(
        learned < run_returned + Duration::from_secs(1),
        "the caller learned when run() returned ({run_returned:?}), not at {learned:?}"
    );
}

/// The same through the binary and SIGTERM: the process exits 0 at shutdown_grace and the
/// caller's connection is closed without an answer.
#[tokio::test]
async fn binary_shutdown_with_a_stuck_upstream_exits_at_grace_and_closes_the_caller() {
    let upstream = spawn_raw_upstream(never_answers()).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\nshutdown_grace = \"1s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nendpoint = \"{}\"\nsecret_key_file = {:?}\n\
         [upstream]\nrequest_timeout = \"60s\"\n",
        upstream.endpoint(),
        dir.path().join("key").display().to_string(),
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let binary = Binary::spawn(
        std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env_remove("CHAT_GATEWAY_CONFIG"),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;
    let caller = spawn_stuck_caller(addr);
    eventually(
        Duration::from_secs(10),
        "the request is held upstream",
        || async { upstream.log.count() == 1 },
    )
    .await;
    let signalled = Instant::now();
    binary.terminate();
    let (code, output) = tokio::task::spawn_blocking(move || binary.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    let exited = signalled.elapsed();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_secs(3),
        "exits at shutdown_grace (1s): {exited:?}"
    );
    let (result, ended) = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .expect("the caller's request ended")
        .expect("join");
    match result {
        Err(e) => assert!(
            e.is_incomplete_message() || e.is_closed() || e.is_canceled(),
            "{e}"
        ),
        Ok(status) => panic!("answered {status} although the upstream never answered"),
    }
    assert!(ended.duration_since(signalled) < Duration::from_secs(3));
}

async fn wait_ready(admin: SocketAddr) {
    eventually(Duration::from_secs(20), "the binary is ready", || async {
        match TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/readyz").await.status == 200,
            Err(_) => false,
        }
    })
    .await;
}

/// CONNECT is a method like any other the gateway does not take, but a 2xx answer to it means
/// "tunnel established" and carries no body: the refusal must not be a 2xx.
#[tokio::test]
async fn connect_method_is_refused_with_the_envelope() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let reply = raw_exchange(
        gw.addr,
        b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n\r\n",
        Duration::from_secs(10),
    )
    .await
    .expect("an answer");
    assert_eq!(reply.rejected(), Some("not_allowed"));
    let envelope: serde_json::Value = serde_json::from_slice(&reply.body).expect("the envelope");
    assert_eq!(envelope["ErrorCode"], 60009);
    assert!(
        !reply.status.is_success(),
        "a 2xx answer to CONNECT means the tunnel is up: {} {:?}",
        reply.status,
        reply.body
    );
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Secret hygiene of the built binary under faulty traffic
// ---------------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");

/// The built binary, its output read continuously (trace logs overflow a pipe buffer), killed
/// on drop.
struct Binary {
    child: Option<std::process::Child>,
    readers: Vec<std::thread::JoinHandle<Vec<u8>>>,
}

impl Binary {
    fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut readers = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut out, &mut buf);
                buf
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            readers.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut err, &mut buf);
                buf
            }));
        }
        Binary {
            child: Some(child),
            readers,
        }
    }

    fn terminate(&self) {
        let pid = self.child.as_ref().expect("child").id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (bounded) for exit; returns the exit code and everything printed.
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        for reader in self.readers.drain(..) {
            out.extend(reader.join().unwrap_or_default());
        }
        (code, String::from_utf8_lossy(&out).into_owned())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn the_binary_never_prints_or_answers_a_secret_under_faults() {
    const RIGHT: &str = "hygiene-caller-token-7f3a91";
    const WRONG: &str = "hygiene-wrong-token-c0ffee";
    // The raw upstream answers by what the body asks for.
    let expired_once = Arc::new(AtomicUsize::new(0));
    let upstream = spawn_raw_upstream({
        let expired_once = expired_once.clone();
        raw_script(move |mut c| {
            let expired_once = expired_once.clone();
            async move {
                let mut buf = Vec::new();
                while let Some(req) = read_raw_request(&mut c.stream, &mut buf).await {
                    c.log.record(&req);
                    let body = String::from_utf8_lossy(&req.body).into_owned();
                    if body.contains("hy-reset") {
                        let _ = c.stream.set_zero_linger();
                        return;
                    } else if body.contains("hy-slow") {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    } else if body.contains("hy-garbage") {
                        let _ = c.stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                        return;
                    } else if body.contains("hy-expired")
                        && expired_once.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        let _ = c.stream.write_all(&raw_json_response(EXPIRED)).await;
                    } else if body.contains("hy-busy") {
                        let _ = c
                            .stream
                            .write_all(&raw_json_response(
                                r#"{"ActionStatus":"FAIL","ErrorCode":60018,"ErrorInfo":"busy"}"#,
                            ))
                            .await;
                    } else {
                        let _ = c.stream.write_all(&raw_json_response(OK)).await;
                    }
                }
            }
        })
    })
    .await;

    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), format!("{SECRET}\n")).expect("write");
    std::fs::write(dir.path().join("tokens"), format!("{RIGHT}\n")).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\nshutdown_grace = \"2s\"\nmax_body_bytes = 1024\n\
         [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{}\"\nsecret_key_file = {:?}\n\
         [upstream]\nconnect_timeout = \"1s\"\nrequest_timeout = \"1s\"\n\
         [auth]\ntokens_file = {:?}\n",
        upstream.endpoint(),
        dir.path().join("key").display().to_string(),
        dir.path().join("tokens").display().to_string(),
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let binary = Binary::spawn(
        std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", "trace")
            .env_remove("CHAT_GATEWAY_CONFIG"),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;

    let right = bearer(RIGHT);
    let wrong = bearer(WRONG);
    let auth: &[(&str, &str)] = &[("authorization", right.as_str())];
    let mut replies: Vec<Reply> = Vec::new();
    let mut expect = |reply: Reply, status: u16, what: &str| {
        assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
        replies.push(reply);
    };
    expect(
        post_with(addr, UPDATE, &increase("hy-ok"), auth).await,
        200,
        "ok",
    );
    expect(
        post_with(
            addr,
            &format!("{UPDATE}?usersig=from-the-caller&sdkappid=1"),
            &increase("hy-ok"),
            auth,
        )
        .await,
        200,
        "ok with a caller query",
    );
    expect(
        post_with(
            addr,
            UPDATE,
            &increase("hy-ok"),
            &[("authorization", wrong.as_str())],
        )
        .await,
        401,
        "wrong token",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-ok"), &[]).await,
        401,
        "no token",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-expired"), auth).await,
        200,
        "70001 then resent",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-reset"), auth).await,
        502,
        "reset",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-garbage"), auth).await,
        502,
        "garbage",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-slow"), auth).await,
        504,
        "slow",
    );
    expect(
        post_with(addr, UPDATE, &increase("hy-busy"), auth).await,
        200,
        "60018 passed through",
    );
    expect(
        post_with(addr, UPDATE, "{not json", auth).await,
        200,
        "invalid json",
    );
    expect(
        post_with(
            addr,
            "/v4/openim/sendmsg?usersig=x",
            &increase("hy-ok"),
            auth,
        )
        .await,
        200,
        "not allowed",
    );
    expect(
        post_with(addr, UPDATE, &"x".repeat(2000), auth).await,
        200,
        "too large",
    );
    let metrics = scrape_in_time(admin).await;
    assert!(metrics.contains("chat_gateway_requests_total"));

    binary.terminate();
    let (code, output) = tokio::task::spawn_blocking(move || binary.wait(Duration::from_secs(15)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "exit code; output:\n{output}");
    assert!(
        output.contains("chat_gateway::access") && output.contains("TRACE"),
        "the run was logged at trace level:\n{output}"
    );

    let mut sigs: Vec<String> = Vec::new();
    for r in upstream.log.requests() {
        if let Some(sig) = r.query_param("usersig") {
            let raw = r
                .target
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("usersig="))
                .unwrap_or("")
                .to_string();
            sigs.push(sig);
            sigs.push(raw);
        }
    }
    assert!(sigs.len() >= 2 * 6, "the upstream saw the signed requests");
    let mut needles: Vec<(String, &str)> = vec![
        (SECRET.to_string(), "the secret key"),
        ("usersig=".to_string(), "usersig="),
        (RIGHT.to_string(), "the caller's bearer token"),
        (WRONG.to_string(), "a wrong bearer token"),
    ];
    for sig in sigs.into_iter().filter(|s| !s.is_empty()) {
        needles.push((sig, "a UserSig the upstream received"));
    }
    let mut haystacks: Vec<(String, String)> = vec![
        ("printed output".into(), output),
        ("/metrics".into(), metrics),
    ];
    for (i, r) in replies.iter().enumerate() {
        haystacks.push((
            format!("answer {i} ({})", r.status),
            format!("{:?}\n{}", r.headers, String::from_utf8_lossy(&r.body)),
        ));
    }
    for (where_, text) in &haystacks {
        for (needle, what) in &needles {
            // The caller's own `usersig=` in a query it sent is not in any answer or log
            // either: the gateway drops the caller's query.
            assert!(
                !text.contains(needle.as_str()),
                "{where_} holds {what} ({:.10}...)",
                needle
            );
        }
    }
}

/// Sends an Increase that the upstream will hold; resolves to how the caller's request ended
/// and when.
fn spawn_stuck_caller(
    addr: SocketAddr,
) -> tokio::task::JoinHandle<(Result<http::StatusCode, hyper::Error>, Instant)> {
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post(UPDATE)
            .header("host", "gw")
            .body(Full::new(Bytes::from(increase("stuck"))))
            .expect("request");
        let result = sender.send_request(req).await;
        (result.map(|r| r.status()), Instant::now())
    })
}
