//! The built binary: sandbox mode, check-config, SIGTERM shutdown, and secret hygiene.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");

/// Kills the child on drop so a failing test leaves nothing running.
pub(crate) struct Running(Option<Child>);

impl Running {
    pub(crate) fn spawn(cmd: &mut Command) -> Self {
        Running(Some(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        ))
    }
    fn pid(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
    /// Waits for exit; returns the code and everything printed.
    pub(crate) fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.0.take().expect("child");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        (status.and_then(|s| s.code()), out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) async fn wait_ready(admin: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(admin).await {
            drop(stream);
            if get(admin, "/readyz").await.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "gateway not ready at {admin}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8080\"\nflavour = \"vanilla\"\n[chat]\nregion = \"atlantis\"\nsecret_key_file = \"/x\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.flavour",
        "unknown key",
        "chat.region",
        "atlantis",
        "chat.sdkappid",
        "required",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

/// Settings `check-config` used to accept: each is now one problem (key, value, why).
/// Runs `check-config` on `sections` plus a `[chat]` whose key file is in `dir`.
fn run_check_config(dir: &std::path::Path, sections: &str) -> std::process::Output {
    let secret = dir.join("secret-key");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let path = dir.join("gateway.toml");
    let text = format!(
        "{sections}\n[chat]\nsdkappid = {SDKAPPID}\nregion = \"singapore\"\nsecret_key_file = \"{}\"\n",
        secret.display()
    );
    std::fs::write(&path, text).expect("write");
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run")
}

/// `check-config` on `sections` (see [`run_check_config`]): exit 2, exactly one problem, and
/// `expected` among what it says.
pub(crate) fn check_config_finds_one_problem(
    dir: &std::path::Path,
    sections: &str,
    expected: &str,
) {
    let out = run_check_config(dir, sections);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{sections}: {stderr}");
    assert!(stderr.contains("1 problem(s)"), "{sections}: {stderr}");
    assert!(
        stderr.contains(expected),
        "{expected} missing from:\n{stderr}"
    );
}

/// `check-config` on `sections` (see [`run_check_config`]) finds nothing wrong.
pub(crate) fn check_config_passes(dir: &std::path::Path, sections: &str) {
    let out = run_check_config(dir, sections);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{sections}: {said}");
}

#[test]
fn check_config_refuses_settings_that_do_not_do_what_they_seem() {
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.path().join("tls.crt"), leaf.pem()).expect("write");
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write");
    let d = dir.path().display();
    let leaf_as_ca = format!(
        "[server]\ntls_cert_file = \"{d}/tls.crt\"\ntls_key_file = \"{d}/tls.key\"\ntls_client_ca_file = \"{d}/tls.crt\"\n"
    );
    for (extra, expected) in [
        (
            "[rate_limit]\nbackend = \"redis\"\nredis_url = \"rediss://r:6380/0#insecure\"\n",
            "rate_limit.redis_url = \"rediss://r:6380/0#insecure\": #insecure turns off",
        ),
        (
            "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://r:6379/99999999999\"\n",
            "rate_limit.redis_url = \"redis://r:6379/99999999999\": the database number must be",
        ),
        (
            "[coalesce]\nmax_wait = \"1ns\"\n",
            "coalesce.max_wait = 1ns: must be at least 1ms",
        ),
        (
            "[rate_limit]\nredis_url_env = \"CHAT_GATEWAY_REDIS_URL\"\n",
            "rate_limit.redis_url_env = \"CHAT_GATEWAY_REDIS_URL\": set only with backend = \"redis\"",
        ),
        (
            leaf_as_ca.as_str(),
            "server.tls_client_ca_file = ",
        ),
    ] {
        check_config_finds_one_problem(dir.path(), extra, expected);
    }
}

#[test]
fn check_config_accepts_the_example_and_checks_the_secret_file() {
    let dir = tempfile::tempdir().expect("dir");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/gateway.example.toml"
    ))
    .expect("example");
    let secret = dir.path().join("secret-key");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let text = example.replace(
        "/var/run/secrets/chat/secret-key",
        &secret.display().to_string(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &text).expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&secret, "").expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chat.secret_key_file"));
}

#[test]
fn usersig_command_prints_a_sig_that_verifies() {
    let out = Command::new(BIN)
        .args([
            "usersig",
            "--sdkappid",
            "1400000000",
            "--identifier",
            "admin",
            "--expire",
            "600",
        ])
        .env("CHAT_GATEWAY_SECRET_KEY", SECRET)
        .output()
        .expect("run");
    assert!(out.status.success());
    let sig = String::from_utf8(out.stdout).expect("utf8");
    let now = chat_gateway::credentials::unix_now();
    let doc = chat_gateway::usersig::verify(&key(), sig.trim(), 1400000000, "admin", now)
        .expect("verifies");
    assert_eq!(doc.expire, 600);
    let out = Command::new(BIN)
        .args(["usersig", "--sdkappid", "1", "--identifier", "admin"])
        .env_remove("CHAT_GATEWAY_SECRET_KEY")
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// Sandbox mode on its documented ports, answering the README's curl line.
#[tokio::test]
async fn sandbox_answers_the_readme_curl_line() {
    let running = Running::spawn(
        Command::new(BIN)
            .arg("serve")
            .env_remove("CHAT_GATEWAY_CONFIG")
            .env("RUST_LOG", "trace"),
    );
    wait_ready("127.0.0.1:9090".parse().expect("addr")).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let line = chat_gateway::sandbox::curl_line("127.0.0.1:8080".parse().expect("addr"));
    assert!(
        readme.contains(&line),
        "the README shows the sandbox's curl line:\n{line}"
    );
    require_tool("curl");
    for expected in [1, 2] {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .await
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(json["ActionStatus"], "OK", "{json}");
        assert_eq!(json["GroupCounter"][0]["Value"], expected);
    }
    running.signal("-INT");
    let (code, output) = running.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(&line), "the sandbox prints the curl line");
    assert!(
        !output.contains("usersig="),
        "a UserSig was printed:\n{output}"
    );
    assert!(
        !output.contains("eJ"),
        "something like a UserSig was printed"
    );
}

/// SIGTERM with a slow request in flight: readiness off at once, the request completes, exit 0.
/// The whole run is at trace level; nothing printed holds the key or a UserSig.
#[tokio::test]
async fn sigterm_drains_and_never_prints_secrets() {
    let slow: Script = std::sync::Arc::new(|_| {
        (
            Duration::from_millis(1500),
            json_response(r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#),
        )
    });
    let upstream = spawn_recording(None, slow).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"500ms\"\nshutdown_grace = \"5s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nendpoint = \"{}\"\nsecret_key_file = \"{}\"\n",
        upstream.endpoint(),
        dir.path().join("key").display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let running = Running::spawn(
        Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", "trace"),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;

    let in_flight = tokio::spawn(post(
        addr,
        UPDATE,
        r#"{"GroupId":"g","GroupCounter":[{"Key":"k","Value":1}],"Mode":"Increase"}"#,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    running.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(admin, "/readyz").await.status,
        503,
        "readiness off at once"
    );
    let reply = in_flight.await.expect("join");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.error_code(), 0, "the request in flight completed");
    let (code, output) = tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{output}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.count(), 1);

    let sent_sig = upstream.requests()[0]
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == "usersig")
        .map(|(_, v)| v)
        .expect("usersig");
    assert!(
        output.contains("chat_gateway::access"),
        "the run was logged:\n{output}"
    );
    for secret in [SECRET, &sent_sig, "usersig="] {
        assert!(
            !output.contains(secret),
            "printed output holds {secret:.12}..."
        );
    }
}

/// `chat-gateway emulator` with its defaults (app admin `administrator`, the key from
/// `CHAT_GATEWAY_SECRET_KEY`) serving HTTPS from `--tls-cert` / `--tls-key`: a gateway that
/// trusts the CA signs for `administrator` with the same key and gets through; one that signs
/// for another admin gets the emulator's 60010.
#[tokio::test]
async fn standalone_emulator_over_tls_with_its_defaults() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_files();
    let dir = tempfile::tempdir().expect("dir");
    let key_file = secret_key_file(&dir);
    let emulator_port = free_port();
    let emulator = Running::spawn(
        emulator_command(emulator_port)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("CHAT_GATEWAY_SECRET_KEY", SECRET),
    );
    let mut gateways = Vec::new();
    for identifier in ["administrator", "someone-else"] {
        let (port, admin_port) = (free_port(), free_port());
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
             [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{identifier}\"\nendpoint = \"https://127.0.0.1:{emulator_port}\"\n\
             secret_key_file = {:?}\nca_file = {:?}\n",
            key_file.display().to_string(),
            ca.ca_file().display().to_string(),
        );
        let path = dir.path().join(format!("{identifier}.toml"));
        std::fs::write(&path, config).expect("write");
        let gateway = Running::spawn(Command::new(BIN).arg("serve").arg("--config").arg(&path));
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
        wait_ready(admin).await;
        gateways.push((
            gateway,
            format!("127.0.0.1:{port}")
                .parse::<std::net::SocketAddr>()
                .expect("addr"),
        ));
    }
    let body = r#"{"GroupId":"tls","GroupCounter":[{"Key":"likes","Value":3}],"Mode":"Increase"}"#;
    let reply = post_once_the_emulator_answers(gateways[0].1, body).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(reply.json()["GroupCounter"][0]["Value"], 3);
    let other = post(gateways[1].1, UPDATE, body).await;
    assert_eq!(other.error_code(), 60010, "{:?}", other.body);
    for (gateway, _) in gateways {
        stop_cleanly(gateway).await;
    }
    let output = stop_cleanly(emulator).await;
    assert!(!output.contains(SECRET), "the emulator printed its key");
}

/// Two processes, as another team would run them: `chat-gateway emulator` on its own, and
/// `chat-gateway serve` finding its config through `CHAT_GATEWAY_CONFIG` (no `--config`).
#[tokio::test]
async fn standalone_emulator_behind_a_gateway_configured_by_env() {
    let dir = tempfile::tempdir().expect("dir");
    let key_file = secret_key_file(&dir);
    let emulator_port = free_port();
    let emulator = Running::spawn(
        emulator_command(emulator_port)
            .args(["--identifier", "ops-admin"])
            .arg("--secret-key-file")
            .arg(&key_file),
    );
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"ops-admin\"\nendpoint = \"http://127.0.0.1:{emulator_port}\"\nsecret_key_file = \"{}\"\n",
        key_file.display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let gateway = Running::spawn(
        Command::new(BIN)
            .arg("serve")
            .env("CHAT_GATEWAY_CONFIG", dir.path().join("gateway.toml")),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;
    let body = r#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":2}],"Mode":"Increase"}"#;
    let reply = post_once_the_emulator_answers(addr, body).await;
    assert_eq!(reply.error_code(), 0, "{:?}", reply.body);
    assert_eq!(reply.json()["GroupCounter"][0]["Value"], 2);
    let reply = post(addr, GET, r#"{"GroupId":"g"}"#).await;
    assert_eq!(
        reply.json()["GroupCounter"][0]["Value"],
        2,
        "the emulator kept the counter"
    );
    stop_cleanly(gateway).await;
    stop_cleanly(emulator).await;
}

/// The test key, in a file of `dir`.
fn secret_key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write");
    path
}

/// `chat-gateway emulator` on 127.0.0.1:`port` for the test app; callers add the rest.
fn emulator_command(port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--sdkappid", &SDKAPPID.to_string()]);
    cmd
}

/// Posts an update through the gateway at `addr` until its upstream, an emulator that may
/// still be starting, answers (15 s at most).
async fn post_once_the_emulator_answers(addr: std::net::SocketAddr, body: &'static str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = post(addr, UPDATE, body).await;
        if reply.rejected() != Some("upstream_unavailable") {
            return reply;
        }
        assert!(Instant::now() < deadline, "the emulator never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then the process must exit 0 within 10 s; returns what it printed.
async fn stop_cleanly(running: Running) -> String {
    running.signal("-TERM");
    let (code, output) = tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    assert_eq!(code, Some(0), "{output}");
    output
}

/// A log reader that stops reading (a stuck log shipper) must not stall requests: the access
/// log of 3 000 requests (~600 KB) is far more than a pipe holds (64 KB), and nobody reads the
/// gateway's stderr until it has exited. Writing log lines on the request path would block
/// after a few hundred requests.
#[tokio::test]
async fn a_log_reader_that_stops_reading_never_stalls_requests() {
    const REQUESTS: usize = 3_000;
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = secret_key_file(&dir);
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{}\"\nsecret_key_file = \"{}\"\n\
         [rate_limit]\ngroup_per_second = 1000000\ngroup_burst = 1000000\napp_per_second = 1000000\napp_burst = 1000000\n",
        emulator.endpoint(),
        key_file.display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let gateway = Running::spawn(
        Command::new(BIN)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("CHAT_GATEWAY_CONFIG", dir.path().join("gateway.toml")),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_ready(admin).await;

    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let all = async {
        for i in 0..REQUESTS {
            let req = http::Request::post(UPDATE)
                .header(http::header::HOST, addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"GroupId":"g","GroupCounter":[{"Key":"likes","Value":1}],"Mode":"Increase"}"#,
                )))
                .expect("request");
            let response = sender.send_request(req).await.expect("response");
            assert_eq!(response.status(), 200, "request {i}");
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("requests stalled behind the unread log");
    let answered = metric(
        &scrape(admin).await,
        r#"chat_gateway_requests_total{api="group_open_http_svc/update_group_counter",outcome="ok"}"#,
    );
    assert_eq!(answered, REQUESTS as f64);
    assert_eq!(
        metric(&scrape(admin).await, "chat_gateway_log_lines_dropped_total"),
        0.0,
        "queued for the log thread, not dropped"
    );
    let reply = post(addr, GET, r#"{"GroupId":"g"}"#).await;
    assert_eq!(reply.json()["GroupCounter"][0]["Value"], REQUESTS);
    let output = stop_cleanly(gateway).await;
    assert!(
        output.contains("chat_gateway::access"),
        "the log holds access lines"
    );
}
