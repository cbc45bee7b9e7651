//! What the built binary prints while faults happen: never a secret.

use super::*;

// ---------------------------------------------------------------------------------------------
// Secret hygiene of the built binary under faulty traffic
// ---------------------------------------------------------------------------------------------

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
