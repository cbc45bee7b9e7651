//! Answers given before the request body was read, over HTTP/2: the caller gets the whole
//! answer; a caller still sending may finish its body (within `max_body_bytes` and
//! `body_read_timeout`) and its stream ends cleanly; otherwise the stream is reset with
//! NO_ERROR (RFC 9113 section 8.1), never another error code, which clients take as a failed
//! request. A raw `h2` client on 127.0.0.1 sees the frames as they come.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use tokio::net::TcpStream;

use crate::support::*;

const OK_BODY: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const GET_BODY: &str = r#"{"GroupId":"g1"}"#;

/// What the caller saw of one request whose body it never finished.
struct Early {
    status: u16,
    rejected: Option<String>,
    body: Bytes,
    reset: Result<h2::Reason, String>,
}

/// Sends `head` with the first bytes of a body and no END_STREAM, reads the whole answer,
/// then waits for the stream's reset.
async fn early_answer(sender: &mut h2::client::SendRequest<Bytes>, head: Request<()>) -> Early {
    let (response, mut stream) = sender.send_request(head, false).expect("send head");
    stream
        .send_data(Bytes::from_static(b"{\"GroupId\":"), false)
        .expect("send part of the body");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("an answer in time")
        .expect("an answer, not a reset");
    let status = response.status().as_u16();
    let rejected = response
        .headers()
        .get("x-chat-gateway-rejected")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut recv = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("the answer's body arrives whole");
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let reset = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::poll_fn(|cx| stream.poll_reset(cx)),
    )
    .await
    .map_err(|_| "no reset within 5s".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    Early {
        status,
        rejected,
        body: Bytes::from(body),
        reset,
    }
}

fn head(gw: std::net::SocketAddr, path: &str, content_length: Option<usize>) -> Request<()> {
    let mut builder = Request::post(format!("http://{gw}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(n) = content_length {
        builder = builder.header(http::header::CONTENT_LENGTH, n);
    }
    builder.body(()).expect("head")
}

/// A gateway with `max_body_bytes` 256 KiB and a `body_read_timeout` of 1s.
async fn gateway(upstream: &RecordingUpstream) -> GatewayHandle {
    spawn_gateway(&config_text(&upstream.endpoint(), "", "").replace(
        "drain_delay",
        "max_body_bytes = 262144\nbody_read_timeout = \"1s\"\ndrain_delay",
    ))
    .await
}

/// Sends `data` as flow control allows, the last frame with END_STREAM.
async fn send_all(stream: &mut h2::SendStream<Bytes>, data: &[u8]) -> Result<(), String> {
    let mut rest = Bytes::copy_from_slice(data);
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len());
        let granted = match futures_util::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the stream ended".into()),
        };
        let chunk = rest.split_to(granted.min(rest.len()));
        stream
            .send_data(chunk, rest.is_empty())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test]
async fn an_answer_before_the_body_is_kept_and_the_stream_reset_with_no_error() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = gateway(&upstream).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);

    for (what, request, code, reason) in [
        (
            "a path not allowed, then nothing more for body_read_timeout",
            head(gw.addr, "/v4/group_open_http_svc/create_group", None),
            60009,
            "not_allowed",
        ),
        (
            "a Content-Length over the limit",
            head(gw.addr, GET, Some(1 << 20)),
            10004,
            "body_too_large",
        ),
    ] {
        let early = early_answer(&mut sender, request).await;
        assert_eq!(early.status, 200, "{what}");
        assert_eq!(early.rejected.as_deref(), Some(reason), "{what}");
        let json: serde_json::Value = serde_json::from_slice(&early.body)
            .unwrap_or_else(|e| panic!("{what}: the answer is not whole JSON ({e})"));
        assert_eq!(json["ErrorCode"], code, "{what}: {json}");
        assert_eq!(early.reset, Ok(h2::Reason::NO_ERROR), "{what}");
    }

    // The connection is still good for a whole request.
    let (response, mut stream) = sender
        .send_request(head(gw.addr, GET, Some(GET_BODY.len())), false)
        .expect("send head");
    stream
        .send_data(Bytes::from_static(GET_BODY.as_bytes()), true)
        .expect("send body");
    let response = response.await.expect("answer");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-chat-gateway-rejected").is_none());
    assert_eq!(upstream.count(), 1, "only the whole request was forwarded");
    drop(sender);
    conn.abort();
}

/// A caller still sending when the answer comes (as curl does with a large body) may finish
/// its body: the gateway reads it away, and the stream ends without a reset.
#[tokio::test]
async fn a_caller_still_sending_after_an_early_answer_can_finish_its_body() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = gateway(&upstream).await;
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut sender, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);

    let request = head(gw.addr, "/v4/group_open_http_svc/create_group", None);
    let (response, mut stream) = sender.send_request(request, false).expect("send head");
    stream
        .send_data(Bytes::from_static(b"{\"GroupId\":"), false)
        .expect("send part of the body");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(response.headers()["x-chat-gateway-rejected"], "not_allowed");
    let mut recv = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        body.extend_from_slice(&chunk.expect("the answer's body arrives whole"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("whole JSON");
    assert_eq!(json["ErrorCode"], 60009);

    // Far more than the stream's first flow-control window (64 KiB): only a gateway that
    // reads the body grants room for it.
    let rest = vec![b' '; 200 << 10];
    let sent = tokio::time::timeout(Duration::from_secs(5), send_all(&mut stream, &rest))
        .await
        .expect("the body could be sent within 5s");
    assert_eq!(sent, Ok(()), "the rest of the body was taken");

    // The connection still serves a whole request.
    let (response, mut stream) = sender
        .send_request(head(gw.addr, GET, Some(GET_BODY.len())), false)
        .expect("send head");
    stream
        .send_data(Bytes::from_static(GET_BODY.as_bytes()), true)
        .expect("send body");
    assert_eq!(response.await.expect("answer").status(), 200);
    assert_eq!(upstream.count(), 1, "only the whole request was forwarded");
    drop(sender);
    conn.abort();
}
