//! Overload and shutdown with a stuck upstream.

use super::*;

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
