//! Hardening found by outside testing: idle and silent connections, the connection cap,
//! accept back-off, the upstream header allow-list, API spelling, label registration, slow
//! bodies, slow readers, interim answers, and the small ones (Host ports, BOMs, durations,
//! signals). Everything through real sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary::{free_port, wait_ready, Running, BIN};
use crate::support::*;

const OK_BODY: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const GET_BODY: &str = r#"{"GroupId":"g1"}"#;

/// A test config whose `[server]` section holds `server_extra` too (a TOML table cannot be
/// opened twice, so the lines go into config_text's own section).
fn config_with(endpoint: &str, server_extra: &str, sections: &str) -> String {
    config_text(endpoint, "", sections).replacen(
        "shutdown_grace = \"5s\"\n",
        &format!("shutdown_grace = \"5s\"\n{server_extra}\n"),
        1,
    )
}

fn raw_post(path: &str, host: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---- 1. connections that send nothing, idle HTTP/2, the cap, accept back-off ----------------

#[tokio::test]
async fn silent_and_partial_connections_are_closed_after_header_read_timeout() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "header_read_timeout = \"300ms\"",
        "",
    ))
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let mut preface = TcpStream::connect(gw.addr).await.expect("connect");
    preface.write_all(b"PRI * HT").await.expect("write");
    let mut head = TcpStream::connect(gw.addr).await.expect("connect");
    head.write_all(b"POST /v4/a/b HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let mut admin = TcpStream::connect(gw.admin).await.expect("connect");
    for (name, stream) in [
        ("silent", &mut silent),
        ("partial h2 preface", &mut preface),
        ("partial head", &mut head),
        ("silent admin", &mut admin),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "{name} connection still open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "header_read_timeout = \"400ms\"",
        "",
    ))
    .await;
    let stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::post(format!("http://{}{GET}", gw.addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(GET_BODY.as_bytes())))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(response.status(), 200);
    drop(response);
    // The client keeps the connection; the gateway closes it once idle.
    let ended = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_counted() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "max_connections = 2\nheader_read_timeout = \"5s\"",
        "",
    ))
    .await;
    let first = TcpStream::connect(gw.addr).await.expect("connect");
    let _second = TcpStream::connect(gw.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(
        closed_within(&mut third, Duration::from_millis(1000)).await,
        "a connection past the cap must be closed at once"
    );
    let scrape_text = scrape(gw.admin).await;
    assert_eq!(
        metric(&scrape_text, "chat_gateway_connections_refused_total"),
        1.0
    );
    assert_eq!(metric(&scrape_text, "chat_gateway_caller_connections"), 2.0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = post(gw.addr, GET, GET_BODY).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nheader_read_timeout = \"1s\"\nworker_threads = 1\n\
         [chat]\nsdkappid = {SDKAPPID}\nendpoint = \"http://127.0.0.1:9\"\nsecret_key_file = \"{}\"\n",
        dir.path().join("key").display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let running = Running::spawn(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 48 && exec {BIN} serve --config {}",
                dir.path().join("gateway.toml").display()
            ))
            .env("RUST_LOG", "info"),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;
    // Far more silent connections than descriptors: the gateway runs out for 2 seconds.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(addr).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = raw_exchange(
        addr,
        &raw_post("/v4/a/b", "gw", "", "{}"),
        Duration::from_secs(5),
    )
    .await
    .expect("an answer once descriptors are free again");
    reply.assert_rejection(200, 60009, "not_allowed");
    running.signal("-INT");
    let (_, output) = tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    let failures = output.matches("accept failed").count();
    assert!(failures >= 1, "the limit was never hit:\n{output}");
    assert!(
        failures < 20,
        "{failures} accept failures logged: the loop spins instead of backing off"
    );
}

// ---- 2, 3. what reaches Tencent -------------------------------------------------------------

#[tokio::test]
async fn only_the_gateways_own_headers_reach_tencent_and_answers_are_asked_uncompressed() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(&upstream.endpoint(), "", "")).await;
    let extra = "x-forwarded-for: 10.0.0.1\r\nx-real-ip: 10.0.0.2\r\nforwarded: for=10.0.0.3\r\n\
                 content-encoding: identity\r\nrange: bytes=0-10\r\nif-none-match: \"abc\"\r\n\
                 content-type: text/plain\r\naccept-encoding: gzip, br\r\nx-obs: café\r\n\
                 cookie: a=b\r\nuser-agent: caller/1.0\r\n";
    // A third Content-Type that is not even UTF-8.
    let mut bytes = raw_post(GET, "gw", extra, GET_BODY);
    let at = bytes.windows(2).position(|w| w == b"\r\n").expect("line") + 2;
    bytes.splice(at..at, b"content-type: \xff\xfe\r\n".iter().copied());
    let reply = raw_exchange(gw.addr, &bytes, Duration::from_secs(5))
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept-encoding",
            "content-length",
            "content-type",
            "host",
            "user-agent",
            "x-request-id"
        ]
    );
    assert_eq!(headers.get_all("content-type").iter().count(), 1);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["accept-encoding"], "identity");
    assert!(headers["user-agent"]
        .to_str()
        .expect("ascii")
        .starts_with("chat-gateway/"));
    assert_eq!(
        Some(&headers["x-request-id"]),
        reply.headers.get("x-request-id"),
        "the caller's answer and the upstream request share the id"
    );
    assert_eq!(&seen[0].body[..], GET_BODY.as_bytes());
}

#[tokio::test]
async fn an_answer_compressed_anyway_that_does_not_decode_keeps_its_content_encoding() {
    let upstream = spawn_raw_upstream(raw_script(|mut conn: RawConn| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_raw_request(&mut conn.stream, &mut buf).await {
            conn.log.record(&req);
            let body = b"\x1f\x8b-not-really-gzip";
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(body);
            if conn.stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    }))
    .await;
    let gw = spawn_gateway(&config_with(&upstream.endpoint(), "", "")).await;
    let reply = raw_exchange(
        gw.addr,
        &raw_post(GET, "gw", "accept-encoding: gzip\r\n", GET_BODY),
        Duration::from_secs(5),
    )
    .await
    .expect("answer");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-encoding"], "gzip");
    assert_eq!(
        upstream.log.requests()[0].header("accept-encoding"),
        Some("identity")
    );
}

// ---- 4, 5. API spelling and labels -----------------------------------------------------------

#[tokio::test]
async fn paths_with_upper_case_are_not_allowed_even_under_star() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "",
        "[apis]\nallow = [\"*\"]\n",
    ))
    .await;
    let body = r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1.5}]}"#;
    for path in [
        "/v4/Group_Open_Http_Svc/Update_Group_Counter",
        "/v4/group_open_http_svc/UPDATE_GROUP_COUNTER",
        "/v4/Openim/sendmsg",
    ] {
        post(gw.addr, path, body)
            .await
            .assert_rejection(200, 60009, "not_allowed");
    }
    assert_eq!(
        upstream.count(),
        0,
        "nothing escapes validation by its case"
    );
    // The lowercase spelling is validated.
    post(gw.addr, UPDATE, body)
        .await
        .assert_rejection(200, 10004, "validation");
    let text = scrape(gw.admin).await;
    assert!(!text.contains("Group_Open"), "a spelling got its own label");
    assert!(!text.contains("Openim"), "a spelling got its own label");
}

#[tokio::test]
async fn unauthenticated_requests_do_not_use_up_api_labels() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "good-token\n").expect("write");
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "",
        &format!(
            "[apis]\nallow = [\"*\"]\n[auth]\ntokens_file = \"{}\"\n",
            tokens.display()
        ),
    ))
    .await;
    for i in 0..120 {
        post(gw.addr, &format!("/v4/junk/j{i}"), "{}")
            .await
            .assert_rejection(401, 60004, "unauthorized");
    }
    let req = Request::post("/v4/openim/sendmsg")
        .header("host", "gw")
        .header("content-type", "application/json")
        .header("authorization", "Bearer good-token")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    assert_eq!(send(gw.addr, req).await.status, 200);
    let text = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &text,
            r#"chat_gateway_requests_total{api="openim/sendmsg",outcome="ok"}"#
        ),
        1.0,
        "a real API after junk is labelled as itself"
    );
    assert!(
        !text.contains("junk/"),
        "an unauthenticated path got a label"
    );
}

// ---- 6, 7. slow bodies, slow readers ---------------------------------------------------------

#[tokio::test]
async fn slow_bodies_do_not_hold_in_flight_permits() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "max_in_flight = 2\nbody_read_timeout = \"5s\"",
        "",
    ))
    .await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(
            format!("POST {GET} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .expect("write");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = post(gw.addr, GET, GET_BODY).await;
    assert_eq!(reply.status, 200, "{:?} {:?}", reply.rejected(), reply.body);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A JSON answer of about 6 MiB: more than the socket buffers on both sides hold.
fn big_answer() -> Bytes {
    let pad = "x".repeat(6 * 1024 * 1024);
    Bytes::from(format!(
        r#"{{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","Pad":"{pad}"}}"#
    ))
}

#[tokio::test]
async fn answers_nobody_reads_count_in_flight_and_are_cut_after_write_timeout() {
    let big = big_answer();
    let script: Script = Arc::new(move |rec: &Recorded| {
        let body = if rec.path == GET {
            big.clone()
        } else {
            Bytes::from_static(OK_BODY.as_bytes())
        };
        let mut r = http::Response::new(Full::new(body));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        (Duration::ZERO, r)
    });
    let upstream = spawn_recording(None, script).await;
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "max_in_flight = 2\nwrite_timeout = \"2s\"",
        "",
    ))
    .await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = socket.connect(gw.addr).await.expect("connect");
        s.write_all(&raw_post(GET, "gw", "", GET_BODY))
            .await
            .expect("write");
        stalled.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < 2 {
        assert!(Instant::now() < deadline, "upstream never saw the requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    post(
        gw.addr,
        UPDATE,
        r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Set"}"#,
    )
    .await
    .assert_rejection(503, 60018, "overloaded");
    // Past write_timeout the stalled connections are closed and their permits come back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = post(
        gw.addr,
        UPDATE,
        r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Set"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.rejected());
    for mut s in stalled {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let read_all = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read_all)
            .await
            .expect("the connection was closed");
        assert!(
            got < 6 * 1024 * 1024,
            "the whole answer was kept for a caller that never read"
        );
    }
}

// ---- 8. the small ones -----------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_101_is_upstream_unavailable_and_other_interim_answers_are_skipped() {
    let upstream = spawn_raw_upstream(raw_script(|mut conn: RawConn| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_raw_request(&mut conn.stream, &mut buf).await {
            let answer: Vec<u8> = if req.path() == GET {
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec()
            } else {
                let mut a = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n".to_vec();
                a.extend(raw_json_response(OK_BODY));
                a
            };
            if conn.stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    }))
    .await;
    let gw = spawn_gateway(&config_with(&upstream.endpoint(), "", "")).await;
    post(gw.addr, GET, GET_BODY)
        .await
        .assert_rejection(502, 10002, "upstream_unavailable");
    let reply = post(gw.addr, DELETE, GET_BODY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.error_code(), 0);
}

#[tokio::test]
async fn more_than_64_header_fields_are_refused_over_http2_too() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(&upstream.endpoint(), "", "")).await;
    let request = |fields: usize| {
        let mut b = Request::post(format!("http://{}{GET}", gw.addr))
            .header("content-type", "application/json");
        for i in 0..fields {
            b = b.header(format!("x-field-{i}"), "1");
        }
        b.body(Full::new(Bytes::from_static(GET_BODY.as_bytes())))
            .expect("request")
    };
    assert_eq!(send_h2c(gw.addr, request(70)).await.status, 431);
    assert_eq!(send_h2c(gw.addr, request(40)).await.status, 200);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_host_with_an_invalid_port_is_not_allowed() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_with(&upstream.endpoint(), "", "")).await;
    for host in ["x:99999", "x:65536", "x:8o"] {
        raw_exchange(
            gw.addr,
            &raw_post(GET, host, "", GET_BODY),
            Duration::from_secs(5),
        )
        .await
        .expect("answer")
        .assert_rejection(200, 60009, "not_allowed");
    }
    let ok = raw_exchange(
        gw.addr,
        &raw_post(GET, "x:8080", "", GET_BODY),
        Duration::from_secs(5),
    )
    .await
    .expect("answer");
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_byte_order_mark_does_not_turn_the_first_line_into_a_token() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "\u{feff}# callers of the chat gateway\nreal-token\n",
    )
    .expect("write");
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()),
    ))
    .await;
    for token in [
        "\u{feff}# callers of the chat gateway",
        "# callers of the chat gateway",
    ] {
        let extra = format!("authorization: Bearer {token}\r\n");
        let mut bytes = raw_post(GET, "gw", "", GET_BODY);
        let at = bytes.windows(2).position(|w| w == b"\r\n").expect("line") + 2;
        bytes.splice(at..at, extra.into_bytes());
        raw_exchange(gw.addr, &bytes, Duration::from_secs(5))
            .await
            .expect("answer")
            .assert_rejection(401, 60004, "unauthorized");
    }
    let reply = raw_exchange(
        gw.addr,
        &raw_post(GET, "gw", "authorization: Bearer real-token\r\n", GET_BODY),
        Duration::from_secs(5),
    )
    .await
    .expect("answer");
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn an_emptied_tokens_file_shows_in_the_tokens_gauge() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-a\ntoken-b\n").expect("write");
    let gw = spawn_gateway(&config_with(
        &upstream.endpoint(),
        "",
        &format!("[auth]\ntokens_file = \"{}\"\n", tokens.display()),
    ))
    .await;
    let gauge = "chat_gateway_caller_tokens_loaded";
    assert_eq!(metric(&scrape(gw.admin).await, gauge), 2.0);
    let with = |token: &'static str| async move {
        raw_exchange(
            gw.addr,
            &raw_post(
                GET,
                "gw",
                &format!("authorization: Bearer {token}\r\n"),
                GET_BODY,
            ),
            Duration::from_secs(5),
        )
        .await
        .expect("answer")
        .status
    };
    std::fs::write(&tokens, "").expect("empty");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&scrape(gw.admin).await, gauge) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the gauge never showed the empty file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        with("token-a").await,
        200,
        "the previous tokens stay in force"
    );
    std::fs::write(&tokens, "token-c\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&scrape(gw.admin).await, gauge) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the gauge never showed the new file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        with("token-a").await,
        401,
        "revoked by writing the file without it"
    );
    assert_eq!(with("token-c").await, 200);
}

#[test]
fn check_config_refuses_absurd_durations() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\ndrain_delay = \"300000000000years\"\n[chat]\nsdkappid = 1\nregion = \"tokyo\"\nsecret_key_file = \"/x\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.drain_delay",
        "300000000000years",
        "at most 365 days",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn usersig_refuses_an_expiry_that_overflows() {
    for expire in ["18446744073709551615", "18446744073000000000", "0"] {
        let out = std::process::Command::new(BIN)
            .args([
                "usersig",
                "--sdkappid",
                "1",
                "--identifier",
                "a",
                "--expire",
                expire,
            ])
            .env("CHAT_GATEWAY_SECRET_KEY", SECRET)
            .output()
            .expect("run");
        assert!(!out.status.success(), "--expire {expire} accepted");
        assert!(out.stdout.is_empty());
    }
}

/// A gateway binary in front of an upstream that never answers.
async fn binary_gateway(
    drain: &str,
    grace: &str,
) -> (Running, SocketAddrs, RawUpstream, tempfile::TempDir) {
    let upstream = spawn_raw_upstream(raw_script(|mut conn: RawConn| async move {
        let mut buf = Vec::new();
        while let Some(req) = read_raw_request(&mut conn.stream, &mut buf).await {
            conn.log.record(&req);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }))
    .await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"{drain}\"\nshutdown_grace = \"{grace}\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nendpoint = \"{}\"\nsecret_key_file = \"{}\"\n[upstream]\nrequest_timeout = \"30s\"\n",
        upstream.endpoint(),
        dir.path().join("key").display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let running = Running::spawn(
        std::process::Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", "info"),
    );
    let addrs = SocketAddrs {
        callers: format!("127.0.0.1:{port}").parse().expect("addr"),
        admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
    };
    wait_ready(addrs.admin).await;
    (running, addrs, upstream, dir)
}

struct SocketAddrs {
    callers: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

#[tokio::test]
async fn requests_cut_at_the_end_of_the_grace_period_are_logged_as_shutdown() {
    let (running, addrs, upstream, _dir) = binary_gateway("0s", "1s").await;
    let mut caller = TcpStream::connect(addrs.callers).await.expect("connect");
    caller
        .write_all(&raw_post(GET, "gw", "", GET_BODY))
        .await
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.log.count() < 1 {
        assert!(Instant::now() < deadline, "upstream never saw the request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.signal("-TERM");
    let (code, output) = tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(r#""outcome":"shutdown""#), "{output}");
    assert!(!output.contains("client_closed"), "{output}");
    drop(caller);
}

#[tokio::test]
async fn a_second_signal_skips_the_drain_delay() {
    let (running, _addrs, _upstream, _dir) = binary_gateway("30s", "40s").await;
    let started = Instant::now();
    running.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.signal("-INT");
    let (code, output) = tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
