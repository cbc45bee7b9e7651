//! Traces through sockets: a test collector on 127.0.0.1 receives the OTLP/HTTP exports and
//! decodes them. Parentage from a caller's `traceparent`, sampling, the spans of a retry and
//! of a failover, a merged call's own trace and its links, a collector that is down or slow,
//! and no secret in any exported byte.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::*;

const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
const EXPIRED: &str = r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"UserSig expired"}"#;
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

/// POST with extra headers over a fresh connection.
async fn post_with(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let sent = post_with_headers(addr, path, body, headers);
    tokio::time::timeout(Duration::from_secs(20), sent)
        .await
        .expect("answered in time")
}

/// One request's spans: its `SERVER` span and two `CLIENT` attempts.
fn one_server_two_attempts(spans: &[Span]) -> bool {
    of_kind(spans, SPAN_KIND_SERVER).len() == 1 && of_kind(spans, SPAN_KIND_CLIENT).len() == 2
}

/// The `SERVER` span, and the `CLIENT` attempts in the order they were made.
fn server_and_attempts(spans: &[Span]) -> (&Span, Vec<&Span>) {
    let mut attempts = of_kind(spans, SPAN_KIND_CLIENT);
    attempts.sort_by_key(|s| int_attr(s, "chat.attempt"));
    (of_kind(spans, SPAN_KIND_SERVER)[0], attempts)
}

fn traceparent(trace_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{PARENT_ID}-{}",
        if sampled { "01" } else { "00" }
    )
}

fn of_kind(spans: &[Span], kind: i32) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

fn in_trace<'s>(spans: &'s [Span], trace_id: &str) -> Vec<&'s Span> {
    spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect()
}

/// A gateway in front of `endpoint` that traces to `collector` at `ratio`.
async fn traced_gateway(endpoint: &str, collector: &str, ratio: &str, chat: &str) -> GatewayHandle {
    spawn_gateway(&config_text(
        endpoint,
        chat,
        &tracing_section(collector, ratio),
    ))
    .await
}

/// A gateway tracing every request to `collector`, with further config `sections`.
async fn traced_gateway_with(endpoint: &str, collector: &str, sections: &str) -> GatewayHandle {
    let sections = format!("{sections}\n{}", tracing_section(collector, "1"));
    spawn_gateway(&config_text(endpoint, "", &sections)).await
}

#[tokio::test]
async fn a_callers_traceparent_is_the_parent_even_at_ratio_zero() {
    let collector = spawn_collector(Duration::ZERO).await;
    let emulator = spawn_emulator(None).await;
    let gw = traced_gateway(&emulator.endpoint(), &collector.endpoint(), "0", "").await;
    let reply = post_with(
        gw.addr,
        &format!("{UPDATE}?sdkappid=1&note=caller-query"),
        &increase("traced-1"),
        &[
            ("traceparent", &traceparent(TRACE_ID, true)),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.error_code(), 0);
    let request_id = reply.headers["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();

    let spans = collector
        .wait_for(|s| {
            of_kind(s, SPAN_KIND_SERVER).len() == 1 && of_kind(s, SPAN_KIND_CLIENT).len() == 1
        })
        .await;
    let server = of_kind(&spans, SPAN_KIND_SERVER)[0];
    assert_eq!(hex(&server.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&server.parent_span_id),
        PARENT_ID,
        "the caller's span is the parent"
    );
    assert_eq!(server.trace_state, "vendor=abc", "tracestate kept");
    assert_eq!(server.name, "POST group_open_http_svc/update_group_counter");
    assert_eq!(str_attr(server, "http.request.method"), Some("POST"));
    assert_eq!(
        str_attr(server, "url.path"),
        Some(UPDATE),
        "path without its query"
    );
    assert_eq!(
        str_attr(server, "chat.api"),
        Some("group_open_http_svc/update_group_counter")
    );
    assert_eq!(str_attr(server, "chat.outcome"), Some("ok"));
    assert_eq!(int_attr(server, "chat.error_code"), Some(0));
    assert_eq!(str_attr(server, "chat.group_id"), Some("traced-1"));
    assert_eq!(
        str_attr(server, "chat.request_id"),
        Some(request_id.as_str())
    );

    let client = of_kind(&spans, SPAN_KIND_CLIENT)[0];
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        client.parent_span_id, server.span_id,
        "the attempt is the request's child"
    );
    assert_eq!(str_attr(client, "server.address"), Some("127.0.0.1"));
    assert_eq!(int_attr(client, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(client, "chat.error_code"), Some(0));
    assert_eq!(int_attr(client, "chat.attempt"), Some(1));
    assert_eq!(
        bool_attr(client, "chat.failover"),
        None,
        "sent to the primary"
    );
    assert_eq!(collector.service_names()[0], "chat-gateway");
}

#[tokio::test]
async fn an_unsampled_parent_is_never_traced_and_the_ratio_decides_the_rest() {
    let collector = spawn_collector(Duration::ZERO).await;
    let emulator = spawn_emulator(None).await;
    let all = traced_gateway(&emulator.endpoint(), &collector.endpoint(), "1", "").await;
    let unsampled = "11111111111111111111111111111111";
    let reply = post_with(
        all.addr,
        UPDATE,
        &increase("s-1"),
        &[("traceparent", &traceparent(unsampled, false))],
    )
    .await;
    assert_eq!(reply.error_code(), 0);
    // Then one without a parent: at ratio 1 it is traced, in a trace of its own.
    let reply = post(all.addr, UPDATE, increase("s-2")).await;
    assert_eq!(reply.error_code(), 0);
    let spans = collector
        .wait_for(|s| {
            of_kind(s, SPAN_KIND_SERVER).len() == 1 && of_kind(s, SPAN_KIND_CLIENT).len() == 1
        })
        .await;
    assert!(
        in_trace(&spans, unsampled).is_empty(),
        "unsampled parent: nothing"
    );
    let root = of_kind(&spans, SPAN_KIND_SERVER)[0];
    assert!(root.parent_span_id.is_empty(), "no parent: a root");
    assert_eq!(str_attr(root, "chat.group_id"), Some("s-2"));

    // At ratio 0, a request without a parent is not traced; one with a sampled parent is.
    let collector = spawn_collector(Duration::ZERO).await;
    let none = traced_gateway(&emulator.endpoint(), &collector.endpoint(), "0", "").await;
    for i in 0..5 {
        let reply = post(none.addr, UPDATE, increase(&format!("n-{i}"))).await;
        assert_eq!(reply.error_code(), 0);
    }
    let sampled = "22222222222222222222222222222222";
    post_with(
        none.addr,
        UPDATE,
        &increase("n-parent"),
        &[("traceparent", &traceparent(sampled, true))],
    )
    .await;
    let spans = collector
        .wait_for(|s| in_trace(s, sampled).len() == 2)
        .await;
    assert_eq!(
        spans.len(),
        2,
        "only the sampled parent's request and attempt: {spans:#?}"
    );
}

#[tokio::test]
async fn a_failover_is_two_attempts_under_the_request() {
    // Nothing listens on the primary's port: connection refused, never reached.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let primary = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let backup = spawn_recording(None, ok_answer(OK)).await;
    let collector = spawn_collector(Duration::ZERO).await;
    let gw = traced_gateway(
        &primary,
        &collector.endpoint(),
        "1",
        &format!("backup_endpoint = \"{}\"", backup.endpoint()),
    )
    .await;
    let reply = post(gw.addr, UPDATE, increase("fo-1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(backup.count(), 1);
    let spans = collector.wait_for(one_server_two_attempts).await;
    let (server, attempts) = server_and_attempts(&spans);
    let (first, second) = (attempts[0], attempts[1]);
    for a in [first, second] {
        assert_eq!(
            a.parent_span_id, server.span_id,
            "each attempt is the request's child"
        );
        assert_eq!(a.trace_id, server.trace_id);
    }
    assert_eq!(int_attr(first, "chat.attempt"), Some(1));
    assert_eq!(bool_attr(first, "chat.failover"), None);
    assert_eq!(str_attr(first, "error.type"), Some("upstream_unavailable"));
    assert_eq!(int_attr(first, "http.response.status_code"), None);
    assert_eq!(int_attr(second, "chat.attempt"), Some(2));
    assert_eq!(
        bool_attr(second, "chat.failover"),
        Some(true),
        "sent to the backup"
    );
    assert_eq!(
        int_attr(second, "server.port"),
        Some(i64::from(backup.addr.port()))
    );
    assert_eq!(int_attr(second, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(second, "chat.error_code"), Some(0));
}

#[tokio::test]
async fn a_usersig_retry_is_a_second_attempt_to_the_same_host() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let upstream = spawn_recording(
        None,
        Arc::new(move |_| {
            let body = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                EXPIRED
            } else {
                OK
            };
            (Duration::ZERO, json_response(body))
        }),
    )
    .await;
    let collector = spawn_collector(Duration::ZERO).await;
    let gw = traced_gateway(&upstream.endpoint(), &collector.endpoint(), "1", "").await;
    let reply = post(gw.addr, UPDATE, increase("retry-1")).await;
    assert_eq!(reply.error_code(), 0);
    let spans = collector.wait_for(one_server_two_attempts).await;
    let (server, attempts) = server_and_attempts(&spans);
    assert_eq!(int_attr(attempts[0], "chat.error_code"), Some(70001));
    assert_eq!(int_attr(attempts[1], "chat.attempt"), Some(2));
    assert_eq!(int_attr(attempts[1], "chat.error_code"), Some(0));
    for a in &attempts {
        assert_eq!(a.parent_span_id, server.span_id);
        assert_eq!(bool_attr(a, "chat.failover"), None, "same host");
        assert_eq!(
            int_attr(a, "server.port"),
            Some(i64::from(upstream.addr.port()))
        );
    }
}

#[tokio::test]
async fn a_merged_call_has_a_trace_of_its_own_linked_both_ways() {
    const CALLERS: usize = 50;
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(800)).await;
    let collector = spawn_collector(Duration::ZERO).await;
    let sections = "[coalesce]\nmax_wait = \"5s\"";
    let gw = traced_gateway_with(&emulator.endpoint(), &collector.endpoint(), sections).await;
    // The first call holds the group; the callers arriving meanwhile make one batch.
    let addr = gw.addr;
    let first = tokio::spawn(async move { post(addr, UPDATE, increase("hot")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| tokio::spawn(async move { post(addr, UPDATE, increase("hot")).await }))
        .collect();
    for t in tasks {
        let reply = t.await.expect("caller");
        assert_eq!(reply.error_code(), 0);
        assert_eq!(
            reply.headers["x-chat-gateway-coalesced"].to_str().ok(),
            Some("50"),
            "one batch of all the callers"
        );
    }
    assert_eq!(first.await.expect("first").error_code(), 0);

    let spans = collector
        .wait_for(|s| {
            of_kind(s, SPAN_KIND_SERVER).len() == CALLERS + 1
                && s.iter()
                    .any(|s| int_attr(s, "chat.batch.callers").is_some())
        })
        .await;
    let batches: Vec<&Span> = spans
        .iter()
        .filter(|s| int_attr(s, "chat.batch.callers").is_some())
        .collect();
    assert_eq!(batches.len(), 1, "one merged call");
    let batch = batches[0];
    assert_eq!(batch.kind, SPAN_KIND_CLIENT);
    assert_eq!(int_attr(batch, "chat.batch.callers"), Some(CALLERS as i64));
    assert!(batch.parent_span_id.is_empty(), "the root of its own trace");
    let callers: Vec<&Span> = of_kind(&spans, SPAN_KIND_SERVER)
        .into_iter()
        .filter(|s| !s.links.is_empty())
        .collect();
    assert_eq!(callers.len(), CALLERS, "each caller's span links back");
    for c in &callers {
        assert_ne!(
            c.trace_id, batch.trace_id,
            "the merged call is not in a caller's trace"
        );
        assert_eq!(c.links.len(), 1);
        assert_eq!(c.links[0].trace_id, batch.trace_id);
        assert_eq!(c.links[0].span_id, batch.span_id);
    }
    assert_eq!(batch.links.len(), CALLERS, "a link to each caller");
    let mut linked: Vec<&[u8]> = batch.links.iter().map(|l| l.span_id.as_slice()).collect();
    let mut expected: Vec<&[u8]> = callers.iter().map(|c| c.span_id.as_slice()).collect();
    linked.sort();
    expected.sort();
    assert_eq!(linked, expected, "the links are the callers' request spans");
    // The call's attempt is below it; the token wait too.
    let below: Vec<&Span> = in_trace(&spans, &hex(&batch.trace_id))
        .into_iter()
        .filter(|s| s.parent_span_id == batch.span_id)
        .collect();
    assert!(
        below.iter().any(|s| int_attr(s, "chat.attempt") == Some(1)),
        "the attempt is the merged call's child: {below:#?}"
    );
    assert!(below.iter().any(|s| s.name == "rate limit token"));
}

#[tokio::test]
async fn a_collector_that_is_down_loses_spans_and_slows_nothing() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let down = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let emulator = spawn_emulator(None).await;
    let gw = traced_gateway(&emulator.endpoint(), &down, "1", "").await;
    for i in 0..20 {
        let reply = post(gw.addr, UPDATE, increase(&format!("down-{i}"))).await;
        assert_eq!((reply.status.as_u16(), reply.error_code()), (200, 0));
    }
    let started = Instant::now();
    loop {
        let dropped = metric(
            &scrape(gw.admin).await,
            "chat_gateway_trace_spans_dropped_total",
        );
        if dropped > 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no span counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Several threads, so that an export done on the request's thread would show as a slow
// answer rather than a stalled test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_collector_never_slows_a_request() {
    let collector = spawn_collector(Duration::from_secs(5)).await;
    let emulator = spawn_emulator(None).await;
    let gw = traced_gateway(&emulator.endpoint(), &collector.endpoint(), "1", "").await;
    // Over two seconds: exports start (and hang) while requests keep coming.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let sent = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            post(gw.addr, UPDATE, increase(&format!("slow-{i}"))),
        )
        .await
        .expect("answered while the collector was slow");
        assert_eq!(reply.error_code(), 0);
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "a request took {:?} while the collector was slow",
            sent.elapsed()
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!collector.raw().is_empty(), "an export was under way");
}

#[tokio::test]
async fn no_exported_byte_holds_a_secret_the_usersig_the_query_or_a_token() {
    const TOKEN: &str = "caller-token-0123456789";
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let collector = spawn_collector(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).expect("write");
    let sections = format!("[auth]\ntokens_file = \"{}\"", tokens.display());
    let gw = traced_gateway_with(&upstream.endpoint(), &collector.endpoint(), &sections).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let query = "?usersig=caller-sig&identifier=x";
    let get = r#"{"GroupId":"g-1","GroupCounterKeys":["likes"]}"#;
    let kinds: [(&str, String, u16); 6] = [
        (UPDATE, increase("g-1"), 200),
        (GET, get.to_string(), 200),
        (DELETE, r#"{"GroupId":"g-1"}"#.to_string(), 200),
        (
            UPDATE,
            r#"{"GroupId":"g-1","GroupCounter":[]}"#.to_string(),
            200,
        ),
        ("/v4/other/thing", "{}".to_string(), 200),
        (UPDATE, "not json".to_string(), 200),
    ];
    for (path, body, status) in &kinds {
        let reply = post_with(gw.addr, &format!("{path}{query}"), body, &auth).await;
        assert_eq!(reply.status.as_u16(), *status, "{path}");
    }
    // And one refused for its token.
    let reply = post_with(
        gw.addr,
        UPDATE,
        &increase("g-1"),
        &[("authorization", "Bearer wrong-token")],
    )
    .await;
    assert_eq!(reply.status, 401);
    let spans = collector
        .wait_for(|s| of_kind(s, SPAN_KIND_SERVER).len() == kinds.len() + 1)
        .await;
    // The gateway's own answers carry their ErrorCode too: validation, not allowed, invalid
    // JSON, unauthorized.
    let mut codes: Vec<i64> = of_kind(&spans, SPAN_KIND_SERVER)
        .into_iter()
        .filter_map(|span| int_attr(span, "chat.error_code"))
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, [0, 0, 0, 10004, 60003, 60004, 60009], "{codes:?}");

    let sent = upstream.requests();
    assert_eq!(
        sent.len(),
        3,
        "the three valid requests reached the upstream"
    );
    let mut secrets = vec![
        SECRET.to_string(),
        TOKEN.to_string(),
        "wrong-token".to_string(),
    ];
    for r in &sent {
        secrets.push(r.query.clone());
        let sig = r
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "usersig")
            .map(|(_, v)| v)
            .expect("usersig sent upstream");
        secrets.push(sig);
    }
    secrets.push("caller-sig".to_string());
    secrets.push("usersig=".to_string());
    let raw: Vec<u8> = collector
        .raw()
        .iter()
        .flat_map(|r| r.body.to_vec())
        .collect();
    assert!(!raw.is_empty());
    for secret in &secrets {
        assert!(secret.len() >= 8, "{secret}: too short to search for");
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} found in the exported spans"
        );
    }
}

/// The built binary, configured by the standard variables alone (no `[tracing]` section):
/// the exports carry their service name, and the access log line of a traced request carries
/// its trace id (an untraced one none).
#[tokio::test]
async fn the_environment_turns_tracing_on_and_the_access_log_carries_the_trace_id() {
    use crate::binary::{free_port, wait_ready, Running, BIN};
    let collector = spawn_collector(Duration::ZERO).await;
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{SECRET}\n")).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{}\"\nsecret_key_file = \"{}\"\n",
        emulator.endpoint(),
        key.display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let gateway = Running::spawn(
        std::process::Command::new(BIN)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("CHAT_GATEWAY_CONFIG", dir.path().join("gateway.toml"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
            .env("OTEL_SERVICE_NAME", "gw-from-env"),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;
    let untraced = post(addr, UPDATE, increase("env-0")).await;
    let traced = post_with(
        addr,
        UPDATE,
        &increase("env-1"),
        &[("traceparent", &traceparent(TRACE_ID, true))],
    )
    .await;
    collector
        .wait_for(|s| in_trace(s, TRACE_ID).len() == 2)
        .await;
    assert_eq!(collector.spans().len(), 2, "ratio 0 from the environment");
    assert_eq!(collector.service_names()[0], "gw-from-env");

    gateway.signal("-TERM");
    let (code, output) = tokio::task::spawn_blocking(move || gateway.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{output}");
    let access_line = |reply: &Reply| {
        let id = reply.headers["x-request-id"]
            .to_str()
            .expect("id")
            .to_string();
        output
            .lines()
            .find(|l| l.contains("chat_gateway::access") && l.contains(&id))
            .unwrap_or_else(|| panic!("no access line for {id} in:\n{output}"))
            .to_string()
    };
    assert!(
        access_line(&traced).contains(TRACE_ID),
        "{}",
        access_line(&traced)
    );
    assert!(!access_line(&untraced).contains("trace_id"));
}

#[test]
fn check_config_checks_the_tracing_keys() {
    let dir = tempfile::tempdir().expect("dir");
    for (extra, expected) in [
        (
            "[tracing]\nsample_ratio = 2\n",
            "tracing.sample_ratio = 2: must be a number from 0 to 1",
        ),
        (
            "[tracing]\notlp_endpoint = \"collector:4318\"\n",
            "tracing.otlp_endpoint = \"collector:4318\": must be an http:// or https:// URL",
        ),
        (
            "[tracing]\nexporter = \"otlp\"\n",
            "tracing.exporter: unknown key",
        ),
    ] {
        crate::binary::check_config_finds_one_problem(dir.path(), extra, expected);
    }
}

#[tokio::test]
async fn a_read_that_waits_for_its_groups_token_has_a_span_for_the_wait() {
    let emulator = spawn_emulator(None).await;
    let collector = spawn_collector(Duration::ZERO).await;
    let sections =
        "[rate_limit]\ngroup_per_second = 2\ngroup_burst = 1\n[coalesce]\nmax_wait = \"3s\"";
    let gw = traced_gateway_with(&emulator.endpoint(), &collector.endpoint(), sections).await;
    let read = r#"{"GroupId":"wait-1"}"#;
    assert_eq!(
        post(gw.addr, GET, read).await.error_code(),
        0,
        "spends the token"
    );
    let waited = post(gw.addr, GET, read).await;
    assert_eq!(waited.error_code(), 0, "waited for the next token");
    let id = waited.headers["x-request-id"].to_str().expect("id");
    let spans = collector
        .wait_for(|s| {
            s.iter().filter(|s| s.name == "rate limit token").count() == 2
                && s.iter().any(|s| str_attr(s, "chat.request_id") == Some(id))
        })
        .await;
    let request = of_kind(&spans, SPAN_KIND_SERVER)
        .into_iter()
        .find(|s| str_attr(s, "chat.request_id") == Some(id))
        .expect("the waiting request's span");
    let wait = spans
        .iter()
        .find(|s| s.name == "rate limit token" && s.parent_span_id == request.span_id)
        .expect("a wait span below the waiting request");
    assert_eq!(wait.trace_id, request.trace_id);
    assert_eq!(str_attr(wait, "chat.rate_limit.result"), Some("granted"));
    assert!(wait.end_time_unix_nano > wait.start_time_unix_nano);
}
