//! Callers that misbehave at the HTTP level: slow headers and bodies, oversized bodies and
//! headers, request targets aimed at other hosts.

use super::*;

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
