//! An upstream that misbehaves: connects that stall, answers that never come or come broken,
//! bad certificates, failover and the circuit.

use super::*;

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
    assert!(!reply.in_doubt(), "never sent: safe to send again");
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
    assert!(!reply.in_doubt(), "never sent: safe to send again");
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
    assert!(!reply.in_doubt(), "never sent: safe to send again");
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
    assert!(reply.in_doubt(), "the request may have reached Tencent");
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
    assert!(reply.in_doubt(), "the request may have reached Tencent");
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
        assert!(reply.in_doubt(), "the request may have reached Tencent");
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
        assert!(!reply.in_doubt(), "never sent: safe to send again");
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
