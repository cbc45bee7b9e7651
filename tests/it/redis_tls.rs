//! The fleet-wide limiter's Redis over TLS with a client certificate and an ACL user, on a real
//! redis-server: the budget shared, credentials or certificates refused at start-up (the
//! gateway exits, naming the problem, never the password), and a rotated password file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::check_config_finds_one_problem;
use crate::redis_limits::{increase, wait_for_gauge, UP};
use crate::redis_server::RedisServer;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");
const ADMIN_PW: &str = "admin-pw-41";
const GATEWAY_PW: &str = "gw-pw-Secret-52";

/// `redis-cli` as the default user (it has a password here).
fn admin_cli(redis: &RedisServer, args: &[&str]) -> String {
    let mut all = vec!["--user", "default", "--pass", ADMIN_PW, "--no-auth-warning"];
    all.extend_from_slice(args);
    redis.cli(&all)
}

/// A TLS Redis whose default user has a password, with the ACL user `gateway` / `password`.
fn tls_redis(ca: &TestCa, verify_clients: bool, password: &str) -> RedisServer {
    let redis = RedisServer::start_tls(ca, verify_clients, &["--requirepass", ADMIN_PW]);
    let set = admin_cli(
        &redis,
        &[
            "acl",
            "setuser",
            "gateway",
            "on",
            &format!(">{password}"),
            "~*",
            "&*",
            "+@all",
        ],
    );
    assert_eq!(set.trim(), "OK", "{set}");
    redis
}

/// The `[rate_limit]` lines: Redis over TLS as `gateway`, the password from `password_file`,
/// the CA and the client certificate when given.
fn tls_section(
    redis: &RedisServer,
    password_file: &Path,
    ca: Option<&TestCa>,
    rates: &str,
) -> String {
    let mut text = format!(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"1s\"\n\
         redis_username = \"gateway\"\nredis_password_file = \"{}\"\n{rates}",
        redis.tls_url(),
        password_file.display()
    );
    if let Some(ca) = ca {
        text.push_str(&format!("redis_ca_file = \"{}\"\n", ca.ca_file().display()));
    }
    text
}

pub(crate) fn client_cert_lines(ca: &TestCa) -> String {
    let (cert, key) = ca.client_files();
    format!(
        "redis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// The ids of the connections authenticated as `gateway`.
fn gateway_client_ids(redis: &RedisServer) -> Vec<String> {
    admin_cli(redis, &["client", "list"])
        .lines()
        .filter(|l| l.contains(" user=gateway "))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect()
}

pub(crate) fn write_password(dir: &Path, password: &str) -> PathBuf {
    let path = dir.join("redis-password");
    std::fs::write(&path, format!("{password}\n")).expect("write");
    path
}

/// Runs the binary with `rate_limit` as its `[rate_limit]` section until it exits (at most
/// Serves with `rate_limit` until it exits: non-zero, having said `said`; what it printed.
pub(crate) fn exits_saying(rate_limit: &str, said: &str) -> String {
    let (code, text) = serve_until_exit(rate_limit);
    assert!(
        code.is_some_and(|c| c != 0),
        "exits non-zero: {code:?} {text}"
    );
    assert!(text.contains(said), "{said:?} not said:\n{text}");
    text
}

/// 20 s); its exit code and what it wrote.
pub(crate) fn serve_until_exit(rate_limit: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n\
             [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"http://127.0.0.1:9\"\nsecret_key_file = \"{}\"\n\
             {rate_limit}",
            secret.display()
        ),
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_over_tls_with_a_client_certificate_and_an_acl_user() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, true, GATEWAY_PW);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let emulator = spawn_emulator(None).await;
    // Four calls at once, then one a second: fewer than eight pass in the run below, where
    // each gateway alone would pass four.
    let rates = format!(
        "group_per_second = 1000\ngroup_burst = 1000\napp_per_second = 1\napp_burst = 4\n{}",
        client_cert_lines(&ca)
    );
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let text = config_text(
            &emulator.endpoint(),
            "",
            &format!(
                "{}[coalesce]\nenabled = false\n",
                tls_section(&redis, &password, Some(&ca), &rates)
            ),
        );
        let gw = spawn_gateway(&text).await;
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(10)).await;
        gateways.push(gw);
    }
    let clients = admin_cli(&redis, &["client", "list"]);
    assert!(clients.contains("user=gateway"), "{clients}");
    two_gateways_pass_one_budget(&gateways, &emulator).await;
}

/// Twelve calls of one API (each to its own group) alternating between two gateways whose app
/// budget is 1/s with a burst of 4: together they pass the one budget (the burst, then one a
/// second), only passes reach `emulator`, and Redis stays in use.
pub(crate) async fn two_gateways_pass_one_budget(
    gateways: &[GatewayHandle],
    emulator: &EmulatorHandle,
) {
    let start = Instant::now();
    let mut passed = 0;
    for i in 0..12 {
        let gw = &gateways[i % 2];
        if post(gw.addr, UPDATE, increase(&format!("g{i}")))
            .await
            .error_code()
            == 0
        {
            passed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ceiling = 4 + elapsed.floor() as usize + 1;
    assert!(passed >= 4, "the burst passed: {passed}");
    assert!(
        passed <= ceiling,
        "{passed} passed in {elapsed:.1}s; one budget allows {ceiling}"
    );
    assert_eq!(
        emulator.emulator.requests() as usize,
        passed,
        "only passes went upstream"
    );
    for gw in gateways {
        assert_eq!(metric(&scrape(gw.admin).await, UP), 1.0);
    }
}

#[tokio::test]
async fn a_wrong_password_at_start_stops_the_gateway_naming_it_never_the_password() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, true, GATEWAY_PW);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), "not-the-Password-63");
    let section = tls_section(&redis, &password, Some(&ca), &client_cert_lines(&ca));
    let port = redis.tls_port.expect("tls");
    let said = format!("Redis at 127.0.0.1:{port} refused the username/password");
    let text = exits_saying(&section, &said);
    assert!(!text.contains("not-the-Password-63"), "{text}");
    assert!(!text.contains(GATEWAY_PW), "{text}");
}

#[tokio::test]
async fn an_untrusted_redis_certificate_at_start_stops_the_gateway_naming_the_certificate() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, false, GATEWAY_PW);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    // No redis_ca_file: the public roots do not vouch for the test CA.
    let port = redis.tls_port.expect("tls");
    let said = format!("the certificate of Redis at 127.0.0.1:{port} is not trusted");
    let text = exits_saying(&tls_section(&redis, &password, None, ""), &said);
    assert!(text.contains("redis_ca_file"), "says what to set: {text}");
    assert!(!text.contains(GATEWAY_PW), "{text}");
}

#[tokio::test]
async fn a_missing_or_untrusted_client_certificate_at_start_stops_the_gateway_saying_so() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, true, GATEWAY_PW);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let port = redis.tls_port.expect("tls");
    let said = format!("Redis at 127.0.0.1:{port} refused the gateway's TLS client certificate");
    let text = exits_saying(&tls_section(&redis, &password, Some(&ca), ""), &said);
    assert!(
        text.contains("redis_client_cert_file"),
        "says what to set: {text}"
    );
    // A client certificate from a CA Redis does not trust: refused the same way.
    let other = TestCa::new();
    let section = tls_section(&redis, &password, Some(&ca), &client_cert_lines(&other));
    exits_saying(&section, "refused the gateway's TLS client certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_used_when_the_connection_is_replaced() {
    let ca = TestCa::new();
    let redis = tls_redis(&ca, true, GATEWAY_PW);
    let dir = tempfile::tempdir().expect("dir");
    let password = write_password(dir.path(), GATEWAY_PW);
    let emulator = spawn_emulator(None).await;
    let text = config_text(
        &emulator.endpoint(),
        "",
        &tls_section(&redis, &password, Some(&ca), &client_cert_lines(&ca)),
    );
    let gw = spawn_gateway(&text).await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(10)).await;
    let before = gateway_client_ids(&redis);
    assert_eq!(before.len(), 1, "one connection as gateway: {before:?}");
    // The new password on both sides; the old one stops working.
    let set = admin_cli(
        &redis,
        &[
            "acl",
            "setuser",
            "gateway",
            "resetpass",
            ">gw-pw-Rotated-74",
        ],
    );
    assert_eq!(set.trim(), "OK", "{set}");
    write_password(dir.path(), "gw-pw-Rotated-74");
    // The file is looked at once a second; the working connection stays in use meanwhile.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(metric(&scrape(gw.admin).await, UP), 1.0);
    assert_eq!(
        gateway_client_ids(&redis),
        before,
        "the working connection stays"
    );
    let killed = admin_cli(&redis, &["client", "kill", "user", "gateway"]);
    assert_eq!(killed.trim(), "1", "{killed}");
    // The next connection authenticates with the new password.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clients = admin_cli(&redis, &["client", "list"]);
        let up = metric(&scrape(gw.admin).await, UP) == 1.0;
        if up && clients.contains("user=gateway") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection as gateway: up {up}, {clients}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(gw.addr, UPDATE, increase("after")).await.error_code(),
        0
    );
}

#[test]
fn check_config_says_what_is_wrong_with_the_redis_user_password_and_tls_files() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new();
    let d = dir.path().display();
    std::fs::write(dir.path().join("pw"), "pw-Never-Shown-85\n").expect("write");
    std::fs::write(dir.path().join("empty"), "").expect("write");
    let (cert, _) = ca.client_files();
    let (server_cert, _) = ca.server_files();
    let redis = "[rate_limit]\nbackend = \"redis\"\nredis_url = \"rediss://127.0.0.1:6380/0\"\n";
    let plain = "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n";
    let cases = [
        (
            format!(
                "{redis}redis_password_env = \"GW_TEST_PW\"\nredis_password_file = \"{d}/pw\"\n"
            ),
            "rate_limit.redis_password_file",
            "not both",
        ),
        (
            format!("{redis}redis_password_env = \"GW_TEST_PW_NEVER_SET_96\"\n"),
            "rate_limit.redis_password_env",
            "is not set",
        ),
        (
            format!("{redis}redis_password_file = \"{d}/missing\"\n"),
            "rate_limit.redis_password_file",
            "cannot read the password",
        ),
        (
            format!("{redis}redis_password_file = \"{d}/empty\"\n"),
            "rate_limit.redis_password_file",
            "is empty",
        ),
        (
            format!("{redis}redis_ca_file = \"{d}/missing.pem\"\n"),
            "rate_limit.redis_ca_file",
            "cannot read",
        ),
        (
            format!("{redis}redis_ca_file = \"{}\"\n", server_cert.display()),
            "rate_limit.redis_ca_file",
            "not a CA",
        ),
        (
            format!("{redis}redis_client_cert_file = \"{}\"\n", cert.display()),
            "rate_limit.redis_client_cert_file",
            "needs redis_client_key_file",
        ),
        (
            format!(
                "{redis}redis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n",
                cert.display(),
                cert.display()
            ),
            "rate_limit.redis_client_key_file",
            "holds no PEM private key",
        ),
        (
            format!("{plain}redis_ca_file = \"{}\"\n", ca.ca_file().display()),
            "rate_limit.redis_ca_file",
            "used only over TLS",
        ),
        (
            "[rate_limit]\nredis_username = \"gateway\"\n".to_string(),
            "rate_limit.redis_username",
            "set only with backend",
        ),
    ];
    for (sections, key, why) in cases {
        check_config_finds_one_problem(dir.path(), &sections, key);
        check_config_finds_one_problem(dir.path(), &sections, why);
    }
    // All of it at once, right: accepted, and the password is not printed.
    let sections = format!(
        "{redis}redis_username = \"gateway\"\nredis_password_file = \"{d}/pw\"\nredis_ca_file = \"{}\"\n{}",
        ca.ca_file().display(),
        client_cert_lines(&ca)
    );
    let secret = dir.path().join("secret-key");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "{sections}\n[chat]\nsdkappid = {SDKAPPID}\nregion = \"singapore\"\nsecret_key_file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("pw-Never-Shown-85"), "{text}");
}
