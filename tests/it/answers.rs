//! The gateway's own answers: status, envelope, reason header, and that nothing was forwarded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};

use crate::support::*;

const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

#[tokio::test]
async fn not_allowed_paths_methods_and_apis() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for path in [
        "/v4/group_open_http_svc/create_group",
        "/v4/group_open_http_svc/get_group_counter/extra",
        "/v4/group_open_http_svc/%2e%2e",
        "/v4/group_open_http_svc/../get_group_counter",
        "/v3/group_open_http_svc/get_group_counter",
        "/metrics",
        "/",
    ] {
        post(gw.addr, path, r#"{"GroupId":"g"}"#)
            .await
            .assert_rejection(200, 60009, "not_allowed");
    }
    get(gw.addr, GET)
        .await
        .assert_rejection(200, 60009, "not_allowed");
    let req = Request::put(GET)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    send(gw.addr, req)
        .await
        .assert_rejection(200, 60009, "not_allowed");
    // Absolute-form target naming another host.
    let req = Request::post("http://169.254.169.254/v4/group_open_http_svc/get_group_counter")
        .body(Full::new(Bytes::from_static(br#"{"GroupId":"g"}"#)))
        .expect("request");
    send(gw.addr, req)
        .await
        .assert_rejection(200, 60009, "not_allowed");
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_requests_total{api="other",outcome="not_allowed"}"#
        ),
        7.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_requests_total{api="group_open_http_svc/get_group_counter",outcome="not_allowed"}"#
        ),
        3.0
    );
}

#[tokio::test]
async fn star_allows_other_apis_but_still_wants_an_object() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        "[apis]\nallow = [\"*\"]\n",
    ))
    .await;
    let reply = post(gw.addr, "/v4/openim/sendmsg", r#"{"anything":[1,2,3]}"#).await;
    assert_eq!(reply.error_code(), 0);
    post(gw.addr, "/v4/openim/sendmsg", "[1]")
        .await
        .assert_rejection(200, 60003, "invalid_json");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn bodies_that_are_not_json_objects() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for body in [
        "",
        "not json",
        "[]",
        "\"GroupId\"",
        "42",
        "null",
        "{\"GroupId\":\"g\"",
        "{\"GroupId\":\"g\"} x",
    ] {
        post(gw.addr, GET, body)
            .await
            .assert_rejection(200, 60003, "invalid_json");
    }
    post(gw.addr, GET, Bytes::from_static(b"{\"GroupId\":\"\xff\"}"))
        .await
        .assert_rejection(200, 60003, "invalid_json");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_with_and_without_content_length() {
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(
        &config_text(&upstream.endpoint(), "", "")
            .replace("drain_delay", "max_body_bytes = 1024\ndrain_delay"),
    )
    .await;
    // Exactly the limit passes the size check (and then is judged as JSON).
    let padded = format!(r#"{{"GroupId":"g","Pad":"{}"}}"#, "x".repeat(1024 - 24));
    assert_eq!(padded.len(), 1024);
    assert_eq!(post(gw.addr, GET, padded.clone()).await.error_code(), 0);
    let over = format!(r#"{{"GroupId":"g","Pad":"{}"}}"#, "x".repeat(1024 - 23));
    post(gw.addr, GET, over.clone())
        .await
        .assert_rejection(200, 10004, "body_too_large");
    // Chunked: no Content-Length, the limited read refuses it.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = over
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post(GET)
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    assert!(!response.headers().contains_key("content-length") || response.status() == 200);
    assert_eq!(
        response.headers()["x-chat-gateway-rejected"],
        "body_too_large"
    );
    assert_eq!(
        upstream.count(),
        1,
        "only the body at the limit was forwarded"
    );
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let gw = spawn_gateway(&config_text(&format!("http://127.0.0.1:{port}"), "", "")).await;
    let reply = post(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    assert!(!String::from_utf8_lossy(&reply.body).contains("usersig"));
}

#[tokio::test]
async fn upstream_with_an_unknown_ca_is_502() {
    let ca = TestCa::new();
    let upstream = spawn_recording(Some(&ca), ok_answer(OK)).await;
    // The gateway is not told about the test CA.
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    post(gw.addr, GET, r#"{"GroupId":"g"}"#)
        .await
        .assert_rejection(502, 10002, "upstream_unavailable");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn slow_upstream_is_504_and_sent_once() {
    let slow: Script = Arc::new(|_| (Duration::from_secs(10), json_response(OK)));
    let upstream = spawn_recording(None, slow).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let started = std::time::Instant::now();
    let reply = post(
        gw.addr,
        UPDATE,
        r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Increase"}"#,
    )
    .await;
    reply.assert_rejection(504, 60008, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at request_timeout (2s)"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.count(), 1, "a timed-out Increase is never resent");
}

#[tokio::test]
async fn draining_after_the_delay_on_open_connections() {
    let emulator = spawn_emulator(None).await;
    let config = config_text(&emulator.endpoint(), "", "")
        .replace("drain_delay = \"0s\"", "drain_delay = \"300ms\"");
    let mut gw = spawn_gateway(&config).await;
    // A keep-alive connection opened before the signal.
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let body = || Full::new(Bytes::from_static(br#"{"GroupId":"g"}"#));
    let first = sender
        .send_request(Request::post(GET).body(body()).expect("request"))
        .await
        .expect("response");
    assert_eq!(first.status(), 200);
    drop(first);

    gw.signal_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(gw.admin, "/readyz").await.status,
        503,
        "readiness off at once"
    );
    // Within the drain delay, requests are still served, on new and old connections.
    assert_eq!(
        post(gw.addr, GET, r#"{"GroupId":"g"}"#).await.error_code(),
        0
    );
    let again = sender
        .send_request(Request::post(GET).body(body()).expect("request"))
        .await
        .expect("response");
    assert_eq!(again.status(), 200);
    drop(again);
    let served = emulator.emulator.requests();

    tokio::time::sleep(Duration::from_millis(400)).await;
    // After the delay: an idle keep-alive connection is either closed or answered `draining`;
    // either way nothing more reaches the upstream.
    match sender
        .send_request(Request::post(GET).body(body()).expect("request"))
        .await
    {
        Ok(response) => {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["x-chat-gateway-rejected"], "draining");
        }
        Err(e) => assert!(
            e.is_closed() || e.is_canceled() || e.is_incomplete_message(),
            "{e}"
        ),
    }
    assert_eq!(emulator.emulator.requests(), served);
    tokio::time::timeout(Duration::from_secs(6), gw.task)
        .await
        .expect("exits")
        .expect("clean");
}

#[tokio::test]
async fn requests_on_open_connections_are_served_until_the_drain_delay_ends() {
    let emulator = spawn_emulator(None).await;
    let config = config_text(&emulator.endpoint(), "", "")
        .replace("drain_delay = \"0s\"", "drain_delay = \"3s\"")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"6s\"");
    let mut gw = spawn_gateway(&config).await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let body = || Full::new(Bytes::from_static(br#"{"GroupId":"g"}"#));
    let first = sender
        .send_request(Request::post(GET).body(body()).expect("request"))
        .await
        .expect("response");
    assert_eq!(first.status(), 200);
    drop(first);

    gw.signal_shutdown();
    let signalled = std::time::Instant::now();
    // The same open connection, through the delay up to shortly before its end.
    for at in [100u64, 1000, 1900, 2500] {
        let wait = Duration::from_millis(at).saturating_sub(signalled.elapsed());
        tokio::time::sleep(wait).await;
        assert!(
            signalled.elapsed() < Duration::from_millis(2900),
            "the test itself ran too late to send within the delay"
        );
        let response = sender
            .send_request(Request::post(GET).body(body()).expect("request"))
            .await
            .unwrap_or_else(|e| panic!("closed {at} ms into the drain delay: {e}"));
        assert_eq!(response.status(), 200, "{at} ms into the drain delay");
        assert!(
            response.headers().get("x-chat-gateway-rejected").is_none(),
            "{at} ms into the drain delay"
        );
        let answer = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
        assert_eq!(answer["ErrorCode"], 0, "{at} ms into the drain delay");
    }
    assert_eq!(emulator.emulator.requests(), 5, "all reached the upstream");
    tokio::time::timeout(Duration::from_secs(10), gw.task)
        .await
        .expect("exits")
        .expect("clean");
}

#[tokio::test]
async fn draining_answer_from_the_stack() {
    use tower::ServiceExt;

    let config = chat_gateway::config::Config::parse(&config_text("http://127.0.0.1:9", "", ""))
        .expect("config");
    let parts = chat_gateway::stack::StackParts::from_config(&config, key()).expect("parts");
    let lifecycle = parts.lifecycle.clone();
    let upstream = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, chat_gateway::error::GatewayError>(json_response(OK))
    });
    let service = chat_gateway::stack::build::<Full<Bytes>, _>(&parts, upstream);
    let request = || {
        Request::post(GET)
            .body(Full::new(Bytes::from_static(br#"{"GroupId":"g"}"#)))
            .expect("request")
    };
    let response = service
        .clone()
        .oneshot(request())
        .await
        .expect("infallible");
    assert!(response.headers().get("x-chat-gateway-rejected").is_none());
    lifecycle.start_closing();
    let response = service.oneshot(request()).await.expect("infallible");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-chat-gateway-rejected"], "draining");
}

#[tokio::test]
async fn admin_endpoints() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    assert_eq!(get(gw.admin, "/healthz").await.status, 200);
    assert_eq!(get(gw.admin, "/readyz").await.status, 200);
    let metrics = get(gw.admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    assert_eq!(get(gw.admin, "/nope").await.status, 404);
}

#[tokio::test]
async fn a_caller_that_hangs_up_is_still_counted() {
    let slow: Script = Arc::new(|_| (Duration::from_secs(3), json_response(OK)));
    let upstream = spawn_recording(None, slow).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let body = r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Increase"}"#;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), post(gw.addr, UPDATE, body)).await;
    assert!(gave_up.is_err(), "the caller gave up first");
    let series = r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="client_closed"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&scrape(gw.admin).await, series) != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "client_closed not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.count(), 1);
}

/// A limiter with a bug: its check fails (panics) for one group. Everything else passes.
struct BrokenFor(&'static str);

impl chat_gateway::rate_limit::RateLimiter for BrokenFor {
    fn check(
        &self,
        _api: &chat_gateway::api::Api,
        group: Option<&str>,
    ) -> chat_gateway::rate_limit::Decision {
        let broken = group == Some(self.0);
        chat_gateway::rate_limit::Decision::later(async move {
            assert!(!broken, "a bug in this test's limiter");
            Ok(())
        })
    }
    fn cleanup(&self) -> usize {
        0
    }
    fn tracked_groups(&self) -> usize {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_should_never_happen_is_500_internal_not_load_or_limits() {
    use chat_gateway::coalesce::CoalesceLayer;
    use chat_gateway::server::{accept::ConnOptions, connection_builder, serve_plain};

    let emulator = spawn_emulator(None).await;
    let config = chat_gateway::config::Config::parse(&config_text(&emulator.endpoint(), "", ""))
        .expect("config");
    let mut parts = chat_gateway::stack::StackParts::from_config(&config, key()).expect("parts");
    let limiter: Arc<dyn chat_gateway::rate_limit::RateLimiter> = Arc::new(BrokenFor("boom"));
    parts.limiter = limiter.clone();
    parts.coalesce = CoalesceLayer::new(config.coalesce.clone(), limiter, parts.metrics.clone());
    let client =
        chat_gateway::upstream::build_client(None, Duration::from_secs(1), 8).expect("client");
    let upstream = chat_gateway::upstream::UpstreamService::new(
        client,
        Duration::from_secs(2),
        8,
        parts.metrics.clone(),
    );
    let service = chat_gateway::stack::build::<hyper::body::Incoming, _>(&parts, upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = Stopper::new();
    tokio::spawn(serve_plain(
        listener,
        hyper_util::service::TowerToHyperService::new(service),
        ConnOptions::plain(connection_builder(), Duration::from_secs(5)),
        100,
        stopped,
    ));
    // The read of "boom" is driven by a task of its own, whose limiter check fails: its
    // caller's answer channel is dropped unanswered.
    let reply = post(addr, GET, r#"{"GroupId":"boom"}"#).await;
    reply.assert_rejection(500, 10002, "internal");
    assert!(reply.json()["ErrorInfo"]
        .as_str()
        .is_some_and(|i| i.contains("bug")));
    assert!(reply.headers.get("retry-after").is_none());
    assert!(!reply.in_doubt());
    // Other groups are served as ever.
    assert_eq!(
        post(addr, GET, r#"{"GroupId":"fine"}"#).await.error_code(),
        0
    );
    let metrics = String::from_utf8(parts.metrics.render()).expect("utf8");
    let get = "group_open_http_svc/get_group_counter";
    assert_eq!(
        metric(
            &metrics,
            &format!(r#"chat_gateway_requests_total{{api="{get}",outcome="internal"}}"#)
        ),
        1.0,
        "counted under its own outcome"
    );
    for load in ["overloaded", "draining", "rate_limit_group"] {
        assert!(
            !metrics.contains(&format!(r#"api="{get}",outcome="{load}"}} 1"#)),
            "not shown as {load}"
        );
    }
}
