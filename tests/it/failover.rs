//! Failover to the backup endpoint happens only when the primary provably never got the request:
//! a timeout or an unreadable answer after sending is never resent, or an Increase counts twice.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::faults::{
    answers_then_closes, assert_sent_once, increase, never_answers, post_in_time, retries,
    scrape_in_time, with_timeouts, OK,
};
use crate::support::*;

/// A gateway in front of `primary`, with a recording backup that answers OK.
async fn with_backup(
    primary: &RawUpstream,
    request_timeout: &str,
) -> (GatewayHandle, RecordingUpstream) {
    let backup = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&with_timeouts(
        config_text(
            &primary.endpoint(),
            &format!("backup_endpoint = \"{}\"", backup.endpoint()),
            "",
        ),
        "1s",
        request_timeout,
    ))
    .await;
    (gw, backup)
}

/// Nothing reached the backup: no request, not even a connection; no failover was counted.
async fn assert_backup_untouched(gw: &GatewayHandle, backup: &RecordingUpstream) {
    assert_eq!(backup.count(), 0, "the backup saw no request");
    assert_eq!(
        backup.connections.load(Ordering::SeqCst),
        0,
        "no connection to the backup"
    );
    let m = scrape_in_time(gw.admin).await;
    assert_eq!(retries(&m, "connect_failover"), 0.0, "no failover counted");
}

#[tokio::test]
async fn primary_timeout_is_504_and_never_fails_over() {
    let primary = spawn_raw_upstream(never_answers()).await;
    let (gw, backup) = with_backup(&primary, "1s").await;
    let body = increase("timeout-failover");
    let started = Instant::now();
    let reply = post_in_time(gw.addr, UPDATE, body.clone()).await;
    reply.assert_rejection(504, 60008, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at request_timeout (1s): {:?}",
        started.elapsed()
    );
    assert_sent_once(&primary, &body).await;
    assert_backup_untouched(&gw, &backup).await;
}

#[tokio::test]
async fn primary_truncated_answer_is_502_and_never_fails_over() {
    let primary = spawn_raw_upstream(answers_then_closes(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ActionStatus\":\"OK\"",
    ))
    .await;
    let (gw, backup) = with_backup(&primary, "2s").await;
    let body = increase("truncated-failover");
    let reply = post_in_time(gw.addr, UPDATE, body.clone()).await;
    reply.assert_rejection(502, 10002, "upstream_unavailable");
    assert_sent_once(&primary, &body).await;
    assert_backup_untouched(&gw, &backup).await;
}
