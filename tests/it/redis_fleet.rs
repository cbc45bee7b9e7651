//! The fleet on a real redis-server: gateways announce themselves while Redis answers, and
//! while it is unreachable each keeps `1 / fleet size` of every budget, so that the fleet
//! together stays near the budget instead of multiplying it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_gateway::config::{RateLimitConfig, RedisBackend, RedisUrl};
use chat_gateway::metrics::Metrics;
use chat_gateway::rate_limit::fleet::FLEET_STALE;
use chat_gateway::rate_limit::RedisLimiter;

use crate::binary::{free_port, Running, BIN};
use crate::redis_limits::{increase, redis_sections, wait_for_gauge, UP};
use crate::redis_server::RedisServer;
use crate::support::*;

const FLEET: &str = "chat_gateway_rate_limit_fleet_size";

const GROUP_RATE: f64 = 6.0;
const GROUP_BURST: f64 = 3.0;
const APP_RATE: f64 = 30.0;
const APP_BURST: f64 = 6.0;

fn rates() -> String {
    format!(
        "group_per_second = {GROUP_RATE}\ngroup_burst = {GROUP_BURST}\napp_per_second = {APP_RATE}\napp_burst = {APP_BURST}\n"
    )
}

async fn wait_for_fleet(admin: SocketAddr, size: f64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = metric(&scrape(admin).await, FLEET);
        if seen == size {
            return;
        }
        assert!(Instant::now() < deadline, "{FLEET} is {seen}, never {size}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends increments through every gateway for `run`, eight callers each: on the group "hot"
/// alone (the app's budget is not what limits them then), or on ever new groups (spending the
/// app's budget). Returns how long it took.
async fn drive(gateways: &[SocketAddr], run: Duration, hot: bool) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (g, &addr) in gateways.iter().enumerate() {
        for caller in 0..8u64 {
            tasks.push(tokio::spawn(async move {
                // Bounded in time and in count; a short pause keeps the load sane.
                for n in 0..10_000u64 {
                    if started.elapsed() >= run {
                        break;
                    }
                    let group = if hot {
                        "hot".to_string()
                    } else {
                        format!("other-{g}-{caller}-{n}")
                    };
                    post(addr, UPDATE, increase(&group)).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("caller");
    }
    started.elapsed().as_secs_f64()
}

/// Drives the hot group, then many groups, for `run` each; checks the upstream saw at most
/// `group_rate x T + group_bursts` calls of the group and `app_rate x T + app_bursts` in all.
async fn drive_within(
    upstream: &RecordingUpstream,
    gateways: &[SocketAddr],
    run: Duration,
    (group_rate, group_bursts): (f64, f64),
    (app_rate, app_bursts): (f64, f64),
) {
    let (_, before) = calls(upstream);
    let elapsed = drive(gateways, run, true).await;
    let (hot, after) = calls(upstream);
    let bound = (group_rate * elapsed + group_bursts).ceil() as usize;
    eprintln!("{hot} calls of the hot group in {elapsed:.1}s (at most {bound})");
    assert!(hot > 1, "the group was served");
    assert!(
        hot <= bound,
        "{hot} calls of one group in {elapsed:.1}s, over {bound}"
    );
    assert_eq!(after - before, hot, "only the hot group's");

    let elapsed = drive(gateways, run, false).await;
    let (_, all) = calls(upstream);
    let app = all - after;
    let bound = (app_rate * elapsed + app_bursts).ceil() as usize;
    eprintln!("{app} calls of the app in {elapsed:.1}s (at most {bound})");
    assert!(app > 1, "the app was served");
    assert!(
        app <= bound,
        "{app} calls of the app in {elapsed:.1}s, over {bound}"
    );
}

fn recording_upstream() -> impl std::future::Future<Output = RecordingUpstream> {
    spawn_recording(
        None,
        ok_answer(
            r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"likes","Value":1}]}"#,
        ),
    )
}

/// How many of the upstream's calls were for the group "hot", and how many in all.
fn calls(upstream: &RecordingUpstream) -> (usize, usize) {
    let seen = upstream.requests();
    let hot = seen
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(r#""GroupId":"hot""#))
        .count();
    (hot, seen.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_keep_a_third_each_while_redis_is_down() {
    const T: Duration = Duration::from_secs(4);
    let mut redis = RedisServer::start();
    let upstream = recording_upstream().await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let gw = spawn_gateway(&config_text(
            &upstream.endpoint(),
            "",
            &format!(
                "{}[coalesce]\nenabled = false\n",
                redis_sections(&redis.url(), "200ms", &rates())
            ),
        ))
        .await;
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
        gateways.push(gw);
    }
    for gw in &gateways {
        wait_for_fleet(gw.admin, 3.0, Duration::from_secs(5)).await;
    }
    let members = redis.cli(&["zcard", &format!("{{chat-gateway:{SDKAPPID}}}:fleet")]);
    assert_eq!(members.trim(), "3", "one member per gateway");
    let pttl: i64 = redis
        .cli(&["pttl", &format!("{{chat-gateway:{SDKAPPID}}}:fleet")])
        .trim()
        .parse()
        .expect("pttl");
    assert!(pttl > 0 && pttl <= 5_000, "the fleet's key expires: {pttl}");

    redis.kill();
    for gw in &gateways {
        wait_for_gauge(gw.admin, 0.0, Duration::from_secs(3)).await;
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|gw| gw.addr).collect();
    // The whole budget over each run, plus each gateway's whole burst (its share would do; the
    // bound leaves room for the run's edges). Each alone at the whole budget would send about
    // three times as many.
    drive_within(
        &upstream,
        &addrs,
        T,
        (GROUP_RATE, 3.0 * GROUP_BURST),
        (APP_RATE, 3.0 * APP_BURST),
    )
    .await;
    for gw in &gateways {
        let scraped = scrape(gw.admin).await;
        assert_eq!(metric(&scraped, FLEET), 3.0, "the last size is kept");
        assert_eq!(metric(&scraped, UP), 0.0, "Redis down throughout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_reached_redis_keeps_the_fixed_share() {
    const T: Duration = Duration::from_secs(3);
    // A port nothing listens on: a Redis that was started once and is gone.
    let mut redis = RedisServer::start();
    redis.kill();
    let upstream = recording_upstream().await;
    let gw = spawn_gateway(&config_text(
        &upstream.endpoint(),
        "",
        &format!(
            "{}fallback_fleet_size = 4\n[coalesce]\nenabled = false\n",
            redis_sections(&redis.url(), "200ms", &rates())
        ),
    ))
    .await;
    let scraped = scrape(gw.admin).await;
    assert_eq!(metric(&scraped, FLEET), 4.0, "{FLEET}");
    assert_eq!(metric(&scraped, UP), 0.0);
    // A quarter of each budget: group 1/s burst 1 (6/4 rounded down, at least 1), app 7/s
    // burst 1. The whole budget would allow about four times as many.
    drive_within(&upstream, &[gw.addr], T, (1.0, 1.0), (7.0, 1.0)).await;
}

#[tokio::test]
async fn the_fleet_gauge_exists_only_with_the_redis_backend() {
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(&emulator.endpoint(), "", "")).await;
    assert!(!scrape(gw.admin).await.contains(FLEET));
}

async fn limiter(redis: &RedisServer) -> RedisLimiter {
    let backend = RedisBackend {
        url: RedisUrl::Url(redis.url()),
        timeout: Duration::from_millis(500),
        auth: Default::default(),
    };
    let config = RateLimitConfig::default();
    let limiter = RedisLimiter::new(&config, &backend, SDKAPPID, &Metrics::new()).expect("limiter");
    assert!(limiter.probe().await, "connected to {}", redis.url());
    limiter
}

#[tokio::test]
async fn the_fleet_set_counts_each_gateway_once_and_forgets_the_silent() {
    let redis = RedisServer::start();
    let key = format!("{{chat-gateway:{SDKAPPID}}}:fleet");
    let (a, b) = (limiter(&redis).await, limiter(&redis).await);
    assert_eq!(a.fleet_size(), 1, "nothing learned yet");
    for _ in 0..3 {
        a.announce().await;
        b.announce().await;
    }
    assert_eq!((a.fleet_size(), b.fleet_size()), (2, 2));
    assert_eq!(redis.cli(&["zcard", &key]).trim(), "2", "one member each");
    // b falls silent (a gateway gone) while a goes on, keeping the set alive: a stops
    // counting b once b is stale.
    let silent = Instant::now();
    while silent.elapsed() <= FLEET_STALE + Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.announce().await;
    }
    assert_eq!(a.fleet_size(), 1, "the silent gateway is forgotten");
    assert_eq!(redis.cli(&["zcard", &key]).trim(), "1");
    // The set expires with the fleet, and no announcement ever lists keys.
    let pttl: i64 = redis.cli(&["pttl", &key]).trim().parse().expect("pttl");
    assert!(pttl > 0 && pttl <= FLEET_STALE.as_millis() as i64, "{pttl}");
    assert_eq!(redis.calls("keys") + redis.calls("scan"), 0);
}

/// `serve` with a Redis that is not there and `fallback_fleet_size = fixed`: the gauge and
/// what the log says, once, about the share it keeps.
async fn never_reached(fixed: u32) -> (f64, String) {
    let mut redis = RedisServer::start();
    redis.kill();
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write");
    let (port, admin_port) = (free_port(), free_port());
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
             [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"http://127.0.0.1:{port}\"\nsecret_key_file = \"{}\"\n\
             {}fallback_fleet_size = {fixed}\n",
            secret.display(),
            redis_sections(&redis.url(), "50ms", ""),
        ),
    )
    .expect("write");
    let gateway = Running::spawn(
        std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(admin).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few probes fail meanwhile (every 250 ms): the log says it once all the same.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let size = metric(&scrape(admin).await, FLEET);
    gateway.signal("-TERM");
    let (_, log) = tokio::task::spawn_blocking(move || gateway.wait(Duration::from_secs(10)))
        .await
        .expect("join");
    (size, log)
}

#[tokio::test]
async fn a_gateway_that_never_reached_redis_says_once_which_share_it_keeps() {
    let (size, log) = never_reached(4).await;
    assert_eq!(size, 4.0);
    assert_eq!(log.matches("Redis never reached").count(), 1, "{log}");
    assert!(log.contains("at 1/4 here"), "{log}");
    let (size, log) = never_reached(0).await;
    assert_eq!(size, 1.0);
    assert_eq!(log.matches("Redis never reached").count(), 1, "{log}");
    assert!(log.contains("keeps each whole rate-limit budget"), "{log}");
}
