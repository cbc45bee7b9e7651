//! Caller -> gateway -> upstream: what reaches Tencent, and what comes back.

use std::time::Duration;

use bytes::Bytes;
use chat_gateway::usersig;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn increases_then_get_over_tls_with_a_test_ca() {
    let ca = TestCa::new();
    let emulator = spawn_emulator(Some(&ca)).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        &format!("ca_file = {:?}", ca.ca_file().display().to_string()),
        "",
    ))
    .await;

    for delta in [5, 7] {
        let body = format!(
            r#"{{"GroupId":"live-1","GroupCounter":[{{"Key":"likes","Value":{delta}}}],"Mode":"Increase"}}"#
        );
        let reply = post(gw.addr, UPDATE, body).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        assert_eq!(reply.rejected(), None);
    }
    let reply = post(
        gw.addr,
        GET,
        r#"{"GroupId":"live-1","GroupCounterKeys":["likes"]}"#,
    )
    .await;
    assert_eq!(reply.error_code(), 0);
    assert_eq!(reply.json()["GroupCounter"][0]["Key"], "likes");
    assert_eq!(reply.json()["GroupCounter"][0]["Value"], 12);
    assert_eq!(emulator.emulator.store().value("live-1", "likes"), Some(12));
    assert_eq!(emulator.emulator.requests(), 3);

    let metrics = scrape(gw.admin).await;
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"chat_gateway_upstream_responses_total{api="group_open_http_svc/get_group_counter",error_code="0"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn caller_query_and_credentials_never_reach_the_upstream() {
    let ca = TestCa::new();
    let answer = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"k","Value":9223372036854775807}]}"#;
    let upstream = spawn_recording(Some(&ca), ok_answer(answer)).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        &format!("ca_file = {:?}", ca.ca_file().display().to_string()),
        "",
    ))
    .await;

    // Odd whitespace, unicode escapes and raw unicode, the largest i64: forwarded byte for byte.
    let body: &[u8] = "{ \"GroupId\" :\t\"live-\\u0031\",\n \"GroupCounter\":[ {\"Key\":\"点赞\",\"Value\":9223372036854775807 } ] ,\"Mode\":\"Set\", \"Extra\":{\"x\":[1,2.5]} }  ".as_bytes();
    let req = Request::post(format!(
        "{UPDATE}?usersig=evil&sdkappid=1&identifier=root&contenttype=xml"
    ))
    .header("host", "gateway.internal")
    .header("content-type", "application/json")
    .header("authorization", "Bearer caller-token")
    .header("cookie", "session=abc")
    .header("connection", "keep-alive, x-hop")
    .header("x-hop", "1")
    .header("x-trace", "t-1")
    .body(Full::new(Bytes::from_static(body)))
    .expect("request");
    let reply = send(gw.addr, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        &reply.body[..],
        answer.as_bytes(),
        "answer comes back byte-identical"
    );
    assert_eq!(reply.headers["content-type"], "application/json");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.path, UPDATE);
    assert_eq!(&r.body[..], body, "body arrives byte for byte");
    let pairs = r.query_pairs();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["sdkappid", "identifier", "usersig", "random", "contenttype"]
    );
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .expect(k)
    };
    assert_eq!(value("sdkappid"), SDKAPPID.to_string());
    assert_eq!(value("identifier"), ADMIN);
    assert_eq!(value("contenttype"), "json");
    assert!(value("random").parse::<u32>().is_ok());
    assert_ne!(value("usersig"), "evil");
    usersig::verify(
        &key(),
        value("usersig"),
        SDKAPPID,
        ADMIN,
        chat_gateway::credentials::unix_now(),
    )
    .expect("the gateway's own sig verifies");
    for header in ["authorization", "cookie", "x-hop", "connection"] {
        assert!(!r.headers.contains_key(header), "{header} was forwarded");
    }
    assert_eq!(
        r.authority,
        upstream.addr.to_string(),
        "the upstream's own host, never the caller's"
    );
    assert_eq!(
        r.version,
        http::Version::HTTP_2,
        "HTTP/2 when the upstream offers it by ALPN"
    );
    assert!(
        !r.headers.contains_key("x-trace"),
        "only the gateway's own headers go upstream"
    );
}

#[tokio::test]
async fn random_is_fresh_per_request() {
    let upstream = spawn_recording(
        None,
        ok_answer(r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#),
    )
    .await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for _ in 0..20 {
        post(gw.addr, GET, r#"{"GroupId":"g"}"#).await;
    }
    let randoms: std::collections::HashSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| {
            r.query_pairs()
                .into_iter()
                .find(|(k, _)| k == "random")
                .map(|(_, v)| v)
        })
        .collect();
    assert!(randoms.len() >= 19, "randoms repeat: {randoms:?}");
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let answer = r#"{"ActionStatus":"FAIL","ErrorCode":10010,"ErrorInfo":"group does not exist"}"#;
    let upstream = spawn_recording(None, ok_answer(answer)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let reply = post(gw.addr, GET, r#"{"GroupId":"gone"}"#).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], answer.as_bytes());
    assert_eq!(reply.rejected(), None);
    let metrics = scrape(gw.admin).await;
    let api = "group_open_http_svc/get_group_counter";
    assert_eq!(
        metric(
            &metrics,
            &format!(r#"chat_gateway_upstream_responses_total{{api="{api}",error_code="10010"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            &format!(r#"chat_gateway_requests_total{{api="{api}",outcome="upstream_error"}}"#)
        ),
        1.0
    );
}

#[tokio::test]
async fn h2c_callers_are_served() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}{UPDATE}", gw.addr))
        .body(Full::new(Bytes::from_static(
            br#"{"GroupId":"h2","GroupCounter":[{"Key":"v","Value":3}],"Mode":"Increase"}"#,
        )))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(emulator.emulator.store().value("h2", "v"), Some(3));
}
