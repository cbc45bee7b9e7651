//! Compressed request bodies, through the gateway on 127.0.0.1: gzip and deflate are decoded
//! before validation and Tencent gets plain JSON; a coding the gateway cannot decode, a body
//! that is not what its header says (bytes after the compressed data included), and a body
//! that inflates past `max_body_bytes` are answered in the envelope and never forwarded;
//! decoding happens only under an in-flight permit.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use http::Request;
use http_body_util::Full;

use crate::support::*;

const OK_BODY: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const UPDATE_BODY: &str =
    r#"{"GroupId":"g1","GroupCounter":[{"Key":"likes","Value":3}],"Mode":"Set"}"#;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn info(reply: &Reply) -> String {
    reply.json()["ErrorInfo"].as_str().unwrap_or("").to_string()
}

async fn post_encoded(addr: std::net::SocketAddr, coding: &str, body: impl Into<Bytes>) -> Reply {
    let req = Request::post(UPDATE)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_ENCODING, coding)
        .body(Full::new(body.into()))
        .expect("request");
    send(addr, req).await
}

#[tokio::test]
async fn gzip_and_deflate_bodies_reach_tencent_as_plain_json() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for (coding, body) in [
        ("gzip", gzip(UPDATE_BODY.as_bytes())),
        ("deflate", zlib(UPDATE_BODY.as_bytes())),
    ] {
        let reply = post_encoded(gw.addr, coding, body).await;
        assert_eq!(reply.status, 200, "{coding}: {:?}", reply.body);
        assert_eq!(reply.error_code(), 0, "{coding}: {:?}", reply.body);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(&request.body[..], UPDATE_BODY.as_bytes());
        assert!(request.headers.get("content-encoding").is_none());
        assert_eq!(
            request.headers["content-length"],
            UPDATE_BODY.len().to_string().as_str()
        );
    }
}

#[tokio::test]
async fn bodies_the_gateway_cannot_decode_are_answered_and_never_forwarded() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;

    let reply = post_encoded(gw.addr, "br", UPDATE_BODY).await;
    reply.assert_rejection(200, 60003, "invalid_json");
    let info = reply.json()["ErrorInfo"].as_str().unwrap_or("").to_string();
    assert!(info.contains("\"br\" is not supported"), "{info}");

    let reply = post_encoded(gw.addr, "gzip", UPDATE_BODY).await;
    reply.assert_rejection(200, 60003, "invalid_json");
    let info = reply.json()["ErrorInfo"].as_str().unwrap_or("").to_string();
    assert!(info.contains("not valid gzip"), "{info}");

    // A gzip body that is valid but not JSON is judged as JSON, after decoding.
    let reply = post_encoded(gw.addr, "gzip", gzip(b"likes=1")).await;
    reply.assert_rejection(200, 60003, "invalid_json");

    // 10 MB of spaces in about 10 KB: refused at max_body_bytes (64 KB by default).
    let bomb = gzip(&vec![b' '; 10 << 20]);
    assert!(bomb.len() < 64 << 10);
    let reply = post_encoded(gw.addr, "gzip", bomb).await;
    reply.assert_rejection(200, 10004, "body_too_large");

    assert!(upstream.requests().is_empty(), "nothing reached Tencent");
}

/// HTTP/1.1's own compression, `Transfer-Encoding: gzip, chunked`: hyper undoes the chunking,
/// the gateway the gzip.
#[tokio::test]
async fn a_gzip_transfer_coding_is_decoded_too() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    let compressed = gzip(UPDATE_BODY.as_bytes());
    let mut request = format!(
        "POST {UPDATE} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         transfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{:x}\r\n",
        compressed.len()
    )
    .into_bytes();
    request.extend_from_slice(&compressed);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let reply = raw_exchange(gw.addr, &request, std::time::Duration::from_secs(5))
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], UPDATE_BODY.as_bytes());
    assert!(seen[0].headers.get("transfer-encoding").is_none());
}

/// Bytes after the end of the compressed data are not part of the body the caller
/// compressed: refused alike for gzip, zlib and raw deflate, naming the problem.
#[tokio::test]
async fn bytes_after_the_compressed_data_are_refused_for_every_coding() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    for (name, coding, mut body) in [
        ("gzip", "gzip", gzip(UPDATE_BODY.as_bytes())),
        ("zlib", "deflate", zlib(UPDATE_BODY.as_bytes())),
        (
            "raw deflate",
            "deflate",
            raw_deflate(UPDATE_BODY.as_bytes()),
        ),
    ] {
        body.extend_from_slice(b"garbage after the end");
        let reply = post_encoded(gw.addr, coding, body).await;
        reply.assert_rejection(200, 60003, "invalid_json");
        let info = info(&reply);
        assert!(
            info.contains(&format!("not valid {coding} data")),
            "{name}: {info}"
        );
    }
    assert!(upstream.requests().is_empty(), "nothing reached Tencent");
}

/// A raw deflate stream (no zlib header) that inflates past the limit stops there.
#[tokio::test]
async fn a_raw_deflate_bomb_is_too_large() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let gw = spawn_gateway(&config_text(&upstream.endpoint(), "", "")).await;
    // 10 MB of spaces in about 10 KB: over max_body_bytes (64 KB by default) once inflated.
    let bomb = raw_deflate(&vec![b' '; 10 << 20]);
    assert!(bomb.len() < 64 << 10);
    let reply = post_encoded(gw.addr, "deflate", bomb).await;
    reply.assert_rejection(200, 10004, "body_too_large");
    let fits = raw_deflate(UPDATE_BODY.as_bytes());
    let reply = post_encoded(gw.addr, "deflate", fits).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(upstream.count(), 1);
}

/// With `max_in_flight = 1` and the one permit held by a request Tencent is slow to answer,
/// a compressed body is refused `overloaded` before it is decoded: a bomb is not even found
/// to be too large. Once the permit is free, the same bomb is decoded (and refused as too
/// large) and a compressed request goes through.
#[tokio::test]
async fn compressed_bodies_are_decoded_only_under_an_in_flight_permit() {
    let upstream = spawn_recording(
        None,
        std::sync::Arc::new(|_| (Duration::from_millis(1500), json_response(OK_BODY))),
    )
    .await;
    let config = config_text(&upstream.endpoint(), "", "").replacen(
        "shutdown_grace = \"5s\"\n",
        "shutdown_grace = \"5s\"\nmax_in_flight = 1\n",
        1,
    );
    let gw = spawn_gateway(&config).await;
    let addr = gw.addr;
    let holder = tokio::spawn(async move { post(addr, UPDATE, UPDATE_BODY).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first request never reached Tencent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bomb = gzip(&vec![b' '; 10 << 20]);
    let reply = post_encoded(gw.addr, "gzip", bomb.clone()).await;
    reply.assert_rejection(503, 60018, "overloaded");
    let reply = post_encoded(gw.addr, "deflate", raw_deflate(&vec![b' '; 10 << 20])).await;
    reply.assert_rejection(503, 60018, "overloaded");

    let first = holder.await.expect("first request");
    assert_eq!(first.error_code(), 0, "{:?}", first.body);
    let reply = post_encoded(gw.addr, "gzip", bomb).await;
    reply.assert_rejection(200, 10004, "body_too_large");
    let reply = post_encoded(gw.addr, "gzip", gzip(UPDATE_BODY.as_bytes())).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(upstream.count(), 2);
}
