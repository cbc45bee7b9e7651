//! Keys applied live that once waited for a restart: the bounds on requests in flight and on
//! connections, the header deadline, caller TLS, the `[chat]` identity and secret key, the
//! tokens file. Each test rewrites the file of a running gateway (the binary) the Kubernetes
//! way and looks at the effect from outside; `chat_gateway_config_restart_pending` stays 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::binary::free_port;
use crate::redis_limits::increase;
use crate::reload::{key_dir, reloads, start, stop, wait_for_reloads, ConfigMap};
use crate::support::*;

const OK_BODY: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

/// The config text: listeners and `server` lines (no drain delay unless they say), the
/// `[chat]` section (`chat` lines), coalescing off, limits nobody reaches, then further
/// `sections`.
fn text(ports: (u16, u16), server: &str, chat: &str, sections: &str) -> String {
    let drain = if server.contains("drain_delay") {
        ""
    } else {
        "drain_delay = \"0s\""
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n{drain}\n{server}\n\
         [chat]\n{chat}\n[coalesce]\nenabled = false\n\
         [rate_limit]\ngroup_per_second = 1000\ngroup_burst = 1000\n\
         app_per_second = 100000\napp_burst = 100000\n{sections}\n",
        ports.0, ports.1
    )
}

/// `[chat]` lines: the emulator's identity, its endpoint, the key file in `keys`.
fn chat(endpoint: &str, keys: &Path) -> String {
    identity(endpoint, SDKAPPID, ADMIN, &keys.join("key"))
}

fn identity(endpoint: &str, sdkappid: u64, identifier: &str, key_file: &Path) -> String {
    format!(
        "sdkappid = {sdkappid}\nidentifier = \"{identifier}\"\nendpoint = \"{endpoint}\"\n\
         secret_key_file = \"{}\"\n",
        key_file.display()
    )
}

async fn pending(admin: SocketAddr) -> f64 {
    metric(&scrape(admin).await, "chat_gateway_config_restart_pending")
}

/// `n` increments sent at once (each its own group); how many were refused `overloaded`.
/// The rest must pass.
async fn overloaded(addr: SocketAddr, n: usize) -> usize {
    let replies = futures_util::future::join_all(
        (0..n).map(|i| post(addr, UPDATE, increase(&format!("slow-{i}")))),
    )
    .await;
    let mut refused = 0;
    for reply in replies {
        if reply.rejected() == Some("overloaded") {
            reply.assert_rejection(503, 60018, "overloaded");
            refused += 1;
        } else {
            assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
        }
    }
    refused
}

/// Lowered, the one bound on requests in flight refuses overload at the new value at once;
/// raised, it lets them all through again.
#[tokio::test]
async fn max_in_flight_lowered_and_raised_applies_to_the_next_requests() {
    // Slow answers, so that the requests sent at once are in flight together.
    let emulator = spawn_emulator_with_latency(None, Duration::from_millis(800)).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let file = |server: &str| text(ports, server, &chat, "");
    let mut map = ConfigMap::new(&file("max_in_flight = 3"));
    let gw = start(&map.path(), ports).await;
    assert_eq!(overloaded(gw.addr, 3).await, 0, "3 at once within 3");

    map.swap(&file("max_in_flight = 1"));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    assert_eq!(overloaded(gw.addr, 3).await, 2, "one at a time now");

    map.swap(&file("max_in_flight = 3"));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    assert_eq!(overloaded(gw.addr, 3).await, 0, "3 at once again");
    assert_eq!(pending(gw.admin).await, 0.0);
    stop(gw).await;
}

/// Lowered, the bound on open connections closes the next connection past it at once (and
/// counts it); the connections already open stay.
#[tokio::test]
async fn max_connections_lowered_closes_the_next_connection_past_it() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let file = |server: &str| text(ports, server, &chat, "");
    let mut map = ConfigMap::new(&file("max_connections = 3"));
    let gw = start(&map.path(), ports).await;
    let first = TcpStream::connect(gw.addr).await.expect("connect");
    let mut second = TcpStream::connect(gw.addr).await.expect("connect");
    let mut third = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(
        !closed_within(&mut third, Duration::from_millis(500)).await,
        "a third connection is within 3"
    );
    drop(third);

    map.swap(&file("max_connections = 2"));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    let mut past = TcpStream::connect(gw.addr).await.expect("connect");
    assert!(
        closed_within(&mut past, Duration::from_secs(1)).await,
        "a third connection past the new bound of 2 is closed at once"
    );
    let scraped = scrape(gw.admin).await;
    assert_eq!(
        metric(&scraped, "chat_gateway_connections_refused_total"),
        1.0
    );
    assert_eq!(metric(&scraped, "chat_gateway_caller_connections"), 2.0);
    assert!(
        !closed_within(&mut second, Duration::from_millis(200)).await,
        "the open ones stay"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = post(gw.addr, UPDATE, increase("g")).await;
    assert_eq!(reply.error_code(), 0, "room again: {:?}", reply.body);
    assert_eq!(pending(gw.admin).await, 0.0);
    stop(gw).await;
}

/// A shortened header deadline cuts the next silent connections (callers' and admin's) at
/// the new value; a connection accepted before keeps the deadline it started with.
#[tokio::test]
async fn header_read_timeout_shortened_cuts_new_slow_connections() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let file = |server: &str| text(ports, server, &chat, "");
    let mut map = ConfigMap::new(&file("header_read_timeout = \"30s\""));
    let gw = start(&map.path(), ports).await;
    let mut before = TcpStream::connect(gw.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;

    map.swap(&file("header_read_timeout = \"300ms\""));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let mut admin = TcpStream::connect(gw.admin).await.expect("connect");
    for (name, stream) in [("caller", &mut silent), ("admin", &mut admin)] {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a silent {name} connection is still open"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        !closed_within(&mut before, Duration::from_millis(300)).await,
        "the connection accepted before keeps its 30 s"
    );
    assert_eq!(pending(gw.admin).await, 0.0);
    stop(gw).await;
}

/// The drain delay in force when the shutdown signal comes is the one kept: raised by a
/// reload, new requests are still served after SIGTERM while readiness is off.
#[tokio::test]
async fn drain_delay_reloaded_is_the_one_kept_at_shutdown() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let file = |server: &str| text(ports, server, &chat, "");
    let mut map = ConfigMap::new(&file("drain_delay = \"0s\"\nshutdown_grace = \"5s\""));
    let gw = start(&map.path(), ports).await;
    map.swap(&file("drain_delay = \"3s\"\nshutdown_grace = \"6s\""));
    wait_for_reloads(gw.admin, "applied", 1.0).await;

    gw.running.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(gw.admin, "/readyz").await.status != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness still on after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = post(gw.addr, UPDATE, increase("draining")).await;
    assert_eq!(
        reply.error_code(),
        0,
        "served within the reloaded drain delay"
    );
    let (code, output) =
        tokio::task::spawn_blocking(move || gw.running.wait(Duration::from_secs(15)))
            .await
            .expect("join");
    assert_eq!(code, Some(0), "{output}");
}

/// A TLS handshake with 127.0.0.1 trusting `ca_pem` only; the server's certificate.
async fn handshake(
    addr: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<TcpStream>,
    rustls::pki_types::CertificateDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, tcp).await?;
    let cert = stream.get_ref().1.peer_certificates().expect("certificate")[0].clone();
    Ok((stream, cert))
}

/// The first certificate of a PEM file.
fn der(path: &Path) -> rustls::pki_types::CertificateDer<'static> {
    let pem = std::fs::read(path).expect("read");
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next();
    first.expect("a certificate").expect("pem")
}

/// One increment over an established TLS stream.
async fn post_over(stream: tokio_rustls::client::TlsStream<TcpStream>, addr: SocketAddr) -> u16 {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1");
    tokio::spawn(conn);
    let req = Request::post(UPDATE)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(increase("tls"))))
        .expect("request");
    sender
        .send_request(req)
        .await
        .expect("answer")
        .status()
        .as_u16()
}

/// Waits until a handshake trusting `ca` sees the certificate in `cert_file`.
async fn wait_for_certificate(addr: SocketAddr, ca: &TestCa, cert_file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((_, cert)) = handshake(addr, &ca.ca_pem).await {
            if cert == der(cert_file) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not served",
            cert_file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plain to TLS on the same listener, then TLS files at new paths: each new handshake sees
/// the certificate in force; the watches follow the new paths (a rotation in place there
/// is served too); then plain again.
#[tokio::test]
async fn caller_tls_files_swapped_apply_to_new_handshakes() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let tls = |ca: &TestCa| {
        let (cert, key) = ca.server_files();
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            cert.display(),
            key.display()
        )
    };
    let (first, second) = (TestCa::new(), TestCa::new());
    let mut map = ConfigMap::new(&text(ports, "", &chat, ""));
    let gw = start(&map.path(), ports).await;
    assert_eq!(
        post(gw.addr, UPDATE, increase("plain")).await.error_code(),
        0
    );
    assert!(
        handshake(gw.addr, &first.ca_pem).await.is_err(),
        "plain yet"
    );

    map.swap(&text(ports, &tls(&first), &chat, ""));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    let (stream, cert) = handshake(gw.addr, &first.ca_pem).await.expect("TLS now");
    assert_eq!(cert, der(&first.server_files().0));
    assert_eq!(post_over(stream, gw.addr).await, 200);

    map.swap(&text(ports, &tls(&second), &chat, ""));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    let (stream, cert) = handshake(gw.addr, &second.ca_pem).await.expect("new files");
    assert_eq!(cert, der(&second.server_files().0));
    assert_eq!(post_over(stream, gw.addr).await, 200);
    assert!(
        handshake(gw.addr, &first.ca_pem).await.is_err(),
        "old files"
    );

    // A rotation in place at the new paths: the second CA's files now hold a third pair.
    let third = TestCa::new();
    let (cert, key) = second.server_files();
    let (new_cert, new_key) = third.server_files();
    std::fs::copy(&new_key, &key).expect("copy key");
    std::fs::copy(&new_cert, &cert).expect("copy cert");
    wait_for_certificate(gw.addr, &third, &cert).await;

    // And back to plain TCP.
    map.swap(&text(ports, "", &chat, ""));
    wait_for_reloads(gw.admin, "applied", 3.0).await;
    assert_eq!(
        post(gw.addr, UPDATE, increase("plain")).await.error_code(),
        0
    );
    assert!(
        handshake(gw.addr, &third.ca_pem).await.is_err(),
        "plain again"
    );
    assert_eq!(pending(gw.admin).await, 0.0);
    stop(gw).await;
}

/// The `sdkappid`, `identifier` and UserSig of the last request the upstream saw.
fn last_identity(upstream: &RecordingUpstream) -> (u64, String, String) {
    let seen = upstream.requests();
    let pairs = seen.last().expect("a request").query_pairs();
    let value = |name: &str| {
        let raw = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        let raw = raw.unwrap_or_else(|| panic!("no {name} in {pairs:?}"));
        let decoded = percent_encoding::percent_decode_str(&raw).decode_utf8();
        decoded.expect("utf-8").into_owned()
    };
    let sdkappid = value("sdkappid").parse().expect("sdkappid");
    (sdkappid, value("identifier"), value("usersig"))
}

/// Sends one increment; the identity the upstream saw, and whether its UserSig was made
/// with `key` for that identity.
async fn signed_with(
    gw: SocketAddr,
    upstream: &RecordingUpstream,
    key: &chat_gateway::usersig::SecretKey,
) -> (u64, String, bool) {
    let reply = post(gw, UPDATE, increase("signed")).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    let (sdkappid, identifier, sig) = last_identity(upstream);
    let now = chat_gateway::credentials::unix_now();
    let valid = chat_gateway::usersig::verify(key, &sig, sdkappid, &identifier, now).is_ok();
    (sdkappid, identifier, valid)
}

/// A new `sdkappid` and `identifier` sign the next request; a new `secret_key_file` path
/// gives the key (and its watch follows the path); a path that cannot be read is refused
/// whole and the running credentials keep serving.
#[tokio::test]
async fn chat_identity_and_secret_key_apply_to_the_next_request() {
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let ports = (free_port(), free_port());
    let (keys, other) = (key_dir(), tempfile::tempdir().expect("dir"));
    let (key_file, other_file) = (keys.path().join("key"), other.path().join("key"));
    let other_key = chat_gateway::usersig::SecretKey::new("another-key").expect("key");
    std::fs::write(&other_file, "another-key\n").expect("write");
    let file = |sdkappid, identifier, key_file: &Path| {
        let chat = identity(&upstream.endpoint(), sdkappid, identifier, key_file);
        text(ports, "", &chat, "")
    };
    let mut map = ConfigMap::new(&file(SDKAPPID, ADMIN, &key_file));
    let gw = start(&map.path(), ports).await;
    let first = signed_with(gw.addr, &upstream, &key()).await;
    assert_eq!(first, (SDKAPPID, ADMIN.to_string(), true));

    map.swap(&file(1400000042, "ops-admin", &key_file));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    let renamed = signed_with(gw.addr, &upstream, &key()).await;
    assert_eq!(renamed, (1400000042, "ops-admin".to_string(), true));

    map.swap(&file(1400000042, "ops-admin", &other_file));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    let (.., with_other) = signed_with(gw.addr, &upstream, &other_key).await;
    assert!(with_other, "signed with the key at the new path");
    assert_eq!(get(gw.admin, "/readyz").await.status, 200);

    // The watch follows the new path: a key rotated there signs the next UserSigs.
    let rotated = chat_gateway::usersig::SecretKey::new("rotated-key").expect("key");
    std::fs::write(other.path().join("next"), "rotated-key\n").expect("write");
    std::fs::rename(other.path().join("next"), &other_file).expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !signed_with(gw.addr, &upstream, &rotated).await.2 {
        assert!(
            Instant::now() < deadline,
            "the rotated key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let missing = keys.path().join("missing");
    map.swap(&file(1400000099, "someone-else", &missing));
    wait_for_reloads(gw.admin, "refused", 1.0).await;
    let kept = signed_with(gw.addr, &upstream, &rotated).await;
    assert_eq!(
        kept,
        (1400000042, "ops-admin".to_string(), true),
        "nothing changed"
    );
    assert_eq!(get(gw.admin, "/readyz").await.status, 200);
    assert_eq!(reloads(gw.admin, "applied").await, 2.0);
    assert_eq!(pending(gw.admin).await, 0.0);
    let output = stop(gw).await;
    let named = format!(
        "chat.secret_key_file = {:?}: cannot read the secret key",
        missing.display().to_string()
    );
    assert!(output.contains(&named), "{named} not logged:\n{output}");
    for secret in [SECRET, "another-key", "rotated-key"] {
        assert!(!output.contains(secret), "a key was logged:\n{output}");
    }
}

/// A new `usersig_ttl` sets the lifetime of the next UserSig; `secret_key_env` in place of
/// `secret_key_file` takes the key from that variable of the running process.
#[tokio::test]
async fn usersig_ttl_and_a_secret_key_variable_apply_to_the_next_request() {
    const VAR: &str = "CHAT_GATEWAY_TEST_RELOADED_KEY";
    let upstream = spawn_recording(None, ok_answer(OK_BODY)).await;
    let ports = (free_port(), free_port());
    let keys = key_dir();
    let with_file = identity(
        &upstream.endpoint(),
        SDKAPPID,
        ADMIN,
        &keys.path().join("key"),
    );
    let mut map = ConfigMap::new(&text(ports, "", &with_file, ""));
    let running = crate::binary::Running::spawn(
        std::process::Command::new(crate::binary::BIN)
            .args(["serve", "--config"])
            .arg(map.path())
            .env("RUST_LOG", "info,chat_gateway::access=off")
            .env(VAR, "key-from-the-variable"),
    );
    let gw = crate::reload::Gateway {
        running,
        addr: format!("127.0.0.1:{}", ports.0).parse().expect("addr"),
        admin: format!("127.0.0.1:{}", ports.1).parse().expect("addr"),
    };
    crate::binary::wait_ready(gw.admin).await;
    let lifetime = || {
        let (.., sig) = last_identity(&upstream);
        chat_gateway::usersig::decode(&sig)
            .expect("a UserSig")
            .expire
    };
    assert!(signed_with(gw.addr, &upstream, &key()).await.2);
    let default_ttl = lifetime();

    let with_var = format!(
        "sdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{}\"\n\
         secret_key_env = \"{VAR}\"\nusersig_ttl = \"2h\"\n",
        upstream.endpoint()
    );
    map.swap(&text(ports, "", &with_var, ""));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    let from_var = chat_gateway::usersig::SecretKey::new("key-from-the-variable").expect("key");
    assert!(
        signed_with(gw.addr, &upstream, &from_var).await.2,
        "signed with the variable's key"
    );
    assert_eq!(lifetime(), 7200, "the new lifetime (was {default_ttl})");
    assert_ne!(default_ttl, 7200);
    assert_eq!(pending(gw.admin).await, 0.0);
    let output = stop(gw).await;
    assert!(!output.contains("key-from-the-variable"), "{output}");
}

/// One increment with `Authorization: Bearer <token>` (none when `None`).
async fn with_token(addr: SocketAddr, token: Option<&str>) -> Reply {
    let mut req = Request::post(UPDATE)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(increase("auth"))))
        .expect("request");
    send(addr, req).await
}

fn accepted(reply: &Reply) -> bool {
    if reply.status == 401 {
        reply.assert_rejection(401, 60004, "unauthorized");
        return false;
    }
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    true
}

/// A new tokens file path: the old file's token is refused and the new one accepted, and
/// the watch follows the new file; no tokens file: no token needed.
#[tokio::test]
async fn tokens_file_path_changed_switches_the_tokens() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let chat = chat(&emulator.endpoint(), keys.path());
    let tokens = tempfile::tempdir().expect("dir");
    let (old, new) = (tokens.path().join("old"), tokens.path().join("new"));
    std::fs::write(&old, "old-token\n").expect("write");
    std::fs::write(&new, "new-token\n").expect("write");
    let file = |auth: &Path| {
        let section = format!("[auth]\ntokens_file = \"{}\"", auth.display());
        text(ports, "", &chat, &section)
    };
    let mut map = ConfigMap::new(&file(&old));
    let gw = start(&map.path(), ports).await;
    assert!(accepted(&with_token(gw.addr, Some("old-token")).await));
    assert!(!accepted(&with_token(gw.addr, Some("new-token")).await));

    map.swap(&file(&new));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    assert!(
        !accepted(&with_token(gw.addr, Some("old-token")).await),
        "old file's token"
    );
    assert!(
        accepted(&with_token(gw.addr, Some("new-token")).await),
        "new file's token"
    );

    // The watch follows the new file.
    std::fs::write(tokens.path().join("next"), "newer-token\n").expect("write");
    std::fs::rename(tokens.path().join("next"), &new).expect("swap");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !accepted(&with_token(gw.addr, Some("newer-token")).await) {
        assert!(
            Instant::now() < deadline,
            "the new file's change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    map.swap(&text(ports, "", &chat, ""));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    assert!(
        accepted(&with_token(gw.addr, None).await),
        "no tokens file: open"
    );
    assert_eq!(pending(gw.admin).await, 0.0);
    stop(gw).await;
}
