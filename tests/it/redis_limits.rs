//! Fleet-wide rate limits on a real redis-server: the Lua GCRA itself (same numbers as the
//! local limiter's tests), gateways sharing one budget, and Redis killed, slowed, restarted
//! or refusing the password.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_gateway::api::{Api, ApiTable};
use chat_gateway::config::{ApiAllowList, RateLimitConfig, RedisBackend, RedisUrl};
use chat_gateway::metrics::Metrics;
use chat_gateway::rate_limit::{RedisLimiter, Scope};

use crate::redis_server::RedisServer;
use crate::support::*;

pub(crate) const UP: &str = "chat_gateway_rate_limit_backend_up";

pub(crate) fn update() -> Api {
    ApiTable::new(&ApiAllowList::counters())
        .route(UPDATE)
        .expect("allowed")
}

pub(crate) fn limits(
    group_rate: u32,
    group_burst: u32,
    app_rate: u32,
    app_burst: u32,
) -> RateLimitConfig {
    RateLimitConfig {
        group_per_second: group_rate,
        group_burst,
        app_per_second: app_rate,
        app_burst,
        max_tracked_groups: 100_000,
        cleanup_interval: Duration::from_secs(10),
        ..RateLimitConfig::default()
    }
}

pub(crate) async fn limiter(redis: &RedisServer, config: &RateLimitConfig) -> RedisLimiter {
    let backend = RedisBackend {
        url: RedisUrl::Url(redis.url()),
        timeout: Duration::from_millis(500),
        auth: Default::default(),
    };
    let limiter = RedisLimiter::new(config, &backend, SDKAPPID, &Metrics::new()).expect("limiter");
    assert!(limiter.probe().await, "connected to {}", redis.url());
    limiter
}

// --- the script ----------------------------------------------------------------------------

#[tokio::test]
async fn script_passes_exactly_the_burst_then_retry_after_is_one_interval() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(2, 5, 1000, 1000)).await;
    for i in 0..5 {
        assert_eq!(
            l.check_shared(&update(), Some("g")).await,
            Some(Ok(())),
            "request {i}"
        );
    }
    let refusal = l
        .check_shared(&update(), Some("g"))
        .await
        .expect("answered")
        .expect_err("over the burst");
    assert_eq!(refusal.scope, Scope::Group);
    // 1/rate = 500 ms, less the little time the checks took.
    assert!(
        refusal.retry_after <= Duration::from_millis(500)
            && refusal.retry_after > Duration::from_millis(400),
        "{:?}",
        refusal.retry_after
    );
    assert_eq!(refusal.retry_after_secs(), 1);
    tokio::time::sleep(refusal.retry_after + Duration::from_millis(5)).await;
    assert_eq!(
        l.check_shared(&update(), Some("g")).await,
        Some(Ok(())),
        "one more after 1/rate"
    );
    assert!(matches!(
        l.check_shared(&update(), Some("g")).await,
        Some(Err(_))
    ));
}

#[tokio::test]
async fn script_group_refusal_spends_no_app_token() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(1, 1, 1, 2)).await;
    assert_eq!(l.check_shared(&update(), Some("hot")).await, Some(Ok(())));
    for _ in 0..10 {
        let answer = l.check_shared(&update(), Some("hot")).await;
        assert_eq!(
            answer.map(|r| r.map_err(|r| r.scope)),
            Some(Err(Scope::Group))
        );
    }
    assert_eq!(
        l.check_shared(&update(), Some("cold")).await,
        Some(Ok(())),
        "the app still had a token"
    );
    let refusal = l
        .check_shared(&update(), Some("third"))
        .await
        .expect("answered")
        .expect_err("app budget spent");
    assert_eq!(refusal.scope, Scope::App);
    assert!(refusal.retry_after <= Duration::from_secs(1));
    // An app refusal spends nothing either: "third" still has its whole group burst.
    assert_eq!(
        redis
            .cli(&[
                "exists",
                &format!("{{chat-gateway:{SDKAPPID}}}:group:third")
            ])
            .trim(),
        "0"
    );
}

#[tokio::test]
async fn script_app_limit_caps_the_sum_over_groups_and_keys_expire() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(100, 100, 10, 10)).await;
    let mut passed = 0;
    for i in 0..50 {
        if l.check_shared(&update(), Some(&format!("group-{i}")))
            .await
            .expect("answered")
            .is_ok()
        {
            passed += 1;
        }
    }
    assert_eq!(passed, 10);
    let refusal = l
        .check_shared(&update(), Some("fresh"))
        .await
        .expect("answered")
        .expect_err("app limit");
    assert_eq!(refusal.scope, Scope::App);
    assert!(refusal.retry_after <= Duration::from_millis(100));
    // Keys carry the sdkappid inside one hash tag, and expire once they equal a new one.
    let app_key =
        format!("{{chat-gateway:{SDKAPPID}}}:app:group_open_http_svc/update_group_counter");
    let pttl: i64 = redis.cli(&["pttl", &app_key]).trim().parse().expect("pttl");
    assert!(pttl > 0 && pttl <= 1_100, "pttl {pttl}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(redis.cli(&["dbsize"]).trim(), "0", "idle keys vanish");
}

// --- gateways through Redis ------------------------------------------------------------------

pub(crate) fn redis_sections(url: &str, timeout: &str, rates: &str) -> String {
    format!("[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout = \"{timeout}\"\n{rates}")
}

pub(crate) async fn wait_for_gauge(admin: std::net::SocketAddr, value: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if metric(&scrape(admin).await, UP) == value {
            return;
        }
        assert!(Instant::now() < deadline, "{UP} never became {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn increase(group: &str) -> String {
    format!(
        r#"{{"GroupId":"{group}","GroupCounter":[{{"Key":"likes","Value":1}}],"Mode":"Increase"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_budget() {
    const RATE: u64 = 100;
    const BURST: u64 = 10;
    const RUN: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    let rates = format!("group_per_second = 100000\ngroup_burst = 100000\napp_per_second = {RATE}\napp_burst = {BURST}\n");
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let gw = spawn_gateway(&config_text(
            &emulator.endpoint(),
            "",
            // A timeout the loaded test machine always meets: this test is about sharing, and a
            // gateway that fell back to limiting alone would spend the whole budget by itself.
            // Refusals answered at once (no waiting for a token) keep the count of Redis
            // checks against calls and refusals exact.
            &format!(
                "{}[coalesce]\nenabled = false\n",
                redis_sections(&redis.url(), "1s", &rates)
            ),
        ))
        .await;
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
        gateways.push(gw);
    }
    let before = redis.calls("evalsha");
    let start = Instant::now();
    let mut tasks = Vec::new();
    let passed: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (g, gw) in gateways.iter().enumerate() {
        for t in 0..8 {
            let (addr, passed) = (gw.addr, passed[g].clone());
            tasks.push(tokio::spawn(async move {
                // Bounded in time and in count.
                for i in 0..20_000 {
                    if start.elapsed() >= RUN {
                        break;
                    }
                    if post(addr, UPDATE, increase(&format!("g{g}-{t}-{i}")))
                        .await
                        .error_code()
                        == 0
                    {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("driver");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let shares: Vec<u64> = passed.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let total: u64 = shares.iter().sum();
    let upstream = emulator.emulator.requests() as u64;
    let ceiling = (RATE as f64 * elapsed + BURST as f64) * 1.05;
    eprintln!(
        "{total} calls upstream in {elapsed:.2}s (budget {:.0}), shares {shares:?}",
        RATE as f64 * elapsed + BURST as f64
    );
    assert_eq!(
        total, upstream,
        "every pass reached the upstream, nothing else did"
    );
    assert!(
        (total as f64) <= ceiling,
        "{total} calls in {elapsed:.2}s over a budget of {ceiling:.0}: {shares:?}"
    );
    assert!(
        (total as f64) >= RATE as f64 * elapsed * 0.8,
        "the budget was used: {total} in {elapsed:.2}s"
    );
    // Each gateway gets a fair share: once a token frees up every gateway asks for it, so
    // arrival decides. (With a local pre-check pacing each gateway's checks on its own clock,
    // splits like [218, 9, 83] were seen.) Even shares are 1/3; the bound leaves room for a
    // loaded test machine.
    for share in &shares {
        assert!(
            *share >= total / 6,
            "each gateway gets a fair share: {shares:?}"
        );
    }
    for gw in &gateways {
        assert_eq!(
            metric(&scrape(gw.admin).await, UP),
            1.0,
            "Redis in use throughout"
        );
    }
    let mut refused = 0.0;
    for gw in &gateways {
        let scraped = scrape(gw.admin).await;
        refused += metric(
            &scraped,
            r#"chat_gateway_rate_limited_total{api="group_open_http_svc/update_group_counter",scope="app"}"#,
        );
    }
    // One check per upstream call, plus one per refusal that got past the gateway's memory of
    // Redis's waits: at most the calls plus all refusals, and about one check per freed token
    // per gateway.
    let checks = redis.calls("evalsha") - before;
    let requests = total + refused as u64;
    eprintln!("{requests} requests, {total} calls upstream, {checks} Redis checks");
    assert!(
        checks >= total && checks <= requests,
        "{checks} checks for {total} calls and {refused} refusals"
    );
    assert!(
        checks as f64 <= 3.0 * ceiling,
        "refused callers are answered without Redis: {checks} checks"
    );
}

/// Drives one gateway until `stop`; returns the slowest answer and how many there were.
fn drive(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, u64)> {
    tokio::spawn(async move {
        let (mut slowest, mut count) = (Duration::ZERO, 0u64);
        for i in 0..100_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let sent = Instant::now();
            let reply = post(addr, UPDATE, increase(&format!("g{i}"))).await;
            assert_eq!(reply.error_code(), 0, "answered and passed");
            slowest = slowest.max(sent.elapsed());
            count += 1;
        }
        (slowest, count)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_limits_locally_then_shares_again() {
    let mut redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &redis_sections(
            &redis.url(),
            "50ms",
            "app_per_second = 100000\napp_burst = 100000\n",
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    assert_eq!(post(gw.addr, UPDATE, increase("a")).await.error_code(), 0);
    assert!(redis.calls("evalsha") >= 1, "checked in Redis");

    let stop = Arc::new(AtomicBool::new(false));
    let driver = drive(gw.addr, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    wait_for_gauge(gw.admin, 0.0, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (slowest, count) = driver.await.expect("driver");
    assert!(count > 0);
    // 50 ms of redis_timeout at most, plus the emulator and a loaded test machine.
    assert!(
        slowest < Duration::from_millis(750),
        "slowest answer {slowest:?}"
    );

    redis.restart();
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    assert_eq!(post(gw.addr, UPDATE, increase("b")).await.error_code(), 0);
    assert_eq!(
        redis
            .cli(&["exists", &format!("{{chat-gateway:{SDKAPPID}}}:group:b")])
            .trim(),
        "1",
        "limits are shared again, with no restart of the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_no_request_more_than_the_timeout() {
    let redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &redis_sections(
            &redis.url(),
            "50ms",
            "app_per_second = 100000\napp_burst = 100000\n",
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let driver = drive(gw.addr, stop.clone());
    // Redis stops answering anyone for 1.5 s.
    let mut sleeper = Command::new(require_tool("redis-cli"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port.to_string(),
            "debug",
            "sleep",
            "1.5",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    wait_for_gauge(gw.admin, 0.0, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (slowest, count) = driver.await.expect("driver");
    assert!(count > 0);
    // Well under the 1.5 s Redis spends asleep.
    assert!(
        slowest < Duration::from_millis(750),
        "slowest answer {slowest:?}"
    );
    let _ = sleeper.wait();
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
}

/// A silent Redis is answered by the local limiter, never by a pass: one group with a burst
/// of 1, five requests at once while Redis sleeps, exactly one forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_answered_by_the_local_limiter_not_by_a_pass() {
    const OK: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;
    let redis = RedisServer::start();
    let upstream = spawn_recording(None, ok_answer(OK)).await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &redis_sections(
            &redis.url(),
            "200ms",
            "group_per_second = 1\ngroup_burst = 1\napp_per_second = 100000\napp_burst = 100000\n",
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    // Redis stops answering anyone for 2 s; each request waits 200 ms for it.
    let mut sleeper = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args(["debug", "sleep", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `Set`, not `Increase`: five separate calls, none merged by coalescing.
    let replies = futures_util::future::join_all((0..5).map(|i| {
        post(
            gw.addr,
            UPDATE,
            format!(
                r#"{{"GroupId":"one-group","GroupCounter":[{{"Key":"likes","Value":{i}}}],"Mode":"Set"}}"#
            ),
        )
    }))
    .await;
    let passed = replies.iter().filter(|r| r.rejected().is_none()).count();
    for reply in replies.iter().filter(|r| r.rejected().is_some()) {
        reply.assert_rejection(200, 10006, "rate_limit_group");
    }
    assert_eq!(
        passed,
        1,
        "{:?}",
        replies.iter().map(|r| r.rejected()).collect::<Vec<_>>()
    );
    assert_eq!(upstream.count(), 1, "exactly one forwarded");
    let _ = sleeper.wait();
}

#[tokio::test]
async fn the_gauge_exists_only_with_the_redis_backend() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    assert!(!scrape(gw.admin).await.contains(UP));
}

// --- wrong URL, wrong password -------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[test]
fn check_config_says_what_is_wrong_with_the_url_and_never_prints_a_password() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write");
    let path = dir.path().join("gateway.toml");
    let check = |rate_limit: &str, env: Option<(&str, &str)>| {
        let text = format!(
            "[chat]\nsdkappid = {SDKAPPID}\nregion = \"singapore\"\nsecret_key_file = \"{}\"\n[rate_limit]\n{rate_limit}",
            secret.display()
        );
        std::fs::write(&path, text).expect("write");
        let mut cmd = Command::new(BIN);
        cmd.args(["check-config", "--config"]).arg(&path);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, text) = check(
        "backend = \"redis\"\nredis_url = \"redis://:hunter2-pw@10.0.0.9:6379\"\n",
        None,
    );
    assert_eq!(code, Some(2));
    assert!(
        text.contains("rate_limit.redis_url") && text.contains("redis_url_env"),
        "{text}"
    );
    assert!(
        text.contains("***") && !text.contains("hunter2-pw"),
        "{text}"
    );

    let (code, text) = check(
        "backend = \"redis\"\nredis_url = \"http://10.0.0.9:6379\"\n",
        None,
    );
    assert_eq!(code, Some(2));
    assert!(text.contains("redis:// or rediss://"), "{text}");

    let var = "CHAT_GATEWAY_TEST_REDIS_URL_UNSET";
    let (code, text) = check(
        &format!("backend = \"redis\"\nredis_url_env = \"{var}\"\n"),
        None,
    );
    assert_eq!(code, Some(2));
    assert!(text.contains(var) && text.contains("not set"), "{text}");

    let (code, text) = check(
        &format!("backend = \"redis\"\nredis_url_env = \"{var}\"\n"),
        Some((var, "rediss://:hunter2-pw@redis.example:6380/0")),
    );
    assert_eq!(code, Some(0), "{text}");

    let (code, text) = check("backend = \"memcached\"\n", None);
    assert_eq!(code, Some(2));
    assert!(text.contains("rate_limit.backend"), "{text}");
}

/// A password changed on Redis's side only, after start-up: an outage like any other (the
/// gateway limits locally), said once and clearly, never with a password.
#[tokio::test]
async fn a_password_changed_on_redis_only_is_said_clearly_and_the_gateway_limits_locally() {
    let redis = RedisServer::start_with(&["--requirepass", "right-pw-7"]);
    let emulator = spawn_emulator(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
             [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{}\"\nsecret_key_file = \"{}\"\n\
             [rate_limit]\nbackend = \"redis\"\nredis_url_env = \"GW_REDIS_URL\"\n",
            emulator.endpoint(),
            secret.display()
        ),
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env(
            "GW_REDIS_URL",
            format!("redis://:right-pw-7@127.0.0.1:{}/0", redis.port),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_gauge(admin, 1.0, Duration::from_secs(10)).await;
    let auth = ["-a", "right-pw-7", "--no-auth-warning"];
    let set = redis.cli(&[&auth[..], &["config", "set", "requirepass", "wrong-pw-3"]].concat());
    assert_eq!(set.trim(), "OK", "{set}");
    let auth = ["-a", "wrong-pw-3", "--no-auth-warning"];
    redis.cli(
        &[
            &auth[..],
            &["client", "kill", "type", "normal", "skipme", "yes"],
        ]
        .concat(),
    );
    // It notices, answers, and limits locally.
    wait_for_gauge(admin, 0.0, Duration::from_secs(10)).await;
    assert_eq!(post(addr, UPDATE, increase("x")).await.error_code(), 0);
    let scraped = scrape(admin).await;
    assert!(scraped.contains(UP), "the gauge exists");
    assert_eq!(metric(&scraped, UP), 0.0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let waited = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if waited.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("WRONGPASS/NOAUTH"), "{log}");
    assert!(
        !log.contains("wrong-pw-3") && !log.contains("right-pw-7"),
        "the password is never logged: {log}"
    );
    assert_eq!(log.matches("Redis refused").count(), 1, "said once: {log}");
}

/// What one Redis check costs on loopback, in-process (no HTTP): p50 / p99 / p99.9 of 20 000
/// sequential checks. A measurement, not a pass/fail test (the machine's load decides the
/// tail): `cargo test --release --test it redis_check_latency -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn redis_check_latency() {
    let redis = RedisServer::start();
    let l = limiter(&redis, &limits(1_000_000, 1_000_000, 1_000_000, 1_000_000)).await;
    let api = update();
    let mut took = Vec::with_capacity(20_000);
    for i in 0..21_000 {
        let sent = Instant::now();
        let answer = l.check_shared(&api, Some("live-1")).await;
        if i >= 1_000 {
            took.push(sent.elapsed());
        }
        assert_eq!(answer, Some(Ok(())));
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    eprintln!(
        "Redis check, 1 connection: p50 {:?} p99 {:?} p99.9 {:?}",
        at(0.5),
        at(0.99),
        at(0.999)
    );
}

/// A hot group's batches wait for the app's token while other groups spend the app's budget.
/// Redis's script spends nothing on an app refusal, so the batch must still take its group's
/// token when the app's comes: the group's calls stay within `per_second x T + burst`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_group_waiting_for_the_apps_budget_keeps_within_its_own_on_redis() {
    const T: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    let upstream = spawn_recording(
        None,
        ok_answer(r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"likes","Value":1}]}"#),
    )
    .await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &redis_sections(
            &redis.url(),
            "500ms",
            "group_per_second = 2\ngroup_burst = 1\napp_per_second = 20\napp_burst = 1\n",
        ),
    ))
    .await;
    let addr = gw.addr;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..12u64 {
        tasks.push(tokio::spawn(async move {
            for n in 0..10_000u64 {
                if started.elapsed() >= T {
                    break;
                }
                // Eight callers of the hot group; four spend the app's budget on other groups.
                let group = if caller < 8 {
                    "hot".to_string()
                } else {
                    format!("other-{caller}-{n}")
                };
                post(addr, UPDATE, increase(&group)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hot = upstream
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(r#""GroupId":"hot""#))
        .count();
    // 2/s over the run (which ends once the callers' last answers are in) plus the burst.
    let bound = (2.0 * elapsed).ceil() as usize + 1;
    assert!(hot > 1, "the hot group was served");
    assert!(
        hot <= bound,
        "{hot} calls of the hot group in {elapsed:.1}s; at most {bound}"
    );
}
