//! Fleet-wide rate limits when Redis misbehaves without being down, on a real redis-server:
//! an impossible GCRA state (its host's clock stepped back), a connection that stops
//! answering without closing, and a user that may load the script but not run it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::redis_limits::{increase, redis_sections, wait_for_gauge, UP};
use crate::redis_server::RedisServer;
use crate::support::*;

fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", reply.headers))
}

/// Redis's clock now, in microseconds.
fn redis_now_us(redis: &RedisServer) -> u64 {
    let time = redis.cli(&["time"]);
    let mut parts = time
        .split_whitespace()
        .map(|p| p.parse::<u64>().expect("TIME"));
    let (secs, micros) = (parts.next().expect("secs"), parts.next().expect("micros"));
    secs * 1_000_000 + micros
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_far_in_the_future_blocks_a_key_for_one_interval_only() {
    let redis = RedisServer::start();
    let emulator = spawn_emulator(None).await;
    // Group: t = 500 ms, tau = 500 ms; app: t = 100 ms, tau = 900 ms.
    let rates = "group_per_second = 2\ngroup_burst = 2\napp_per_second = 10\napp_burst = 10\n";
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        &format!(
            "{}[coalesce]\nenabled = false\n",
            redis_sections(&redis.url(), "1s", rates)
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    // What keys written before the Redis host's clock stepped back 104 days look like.
    let future = (redis_now_us(&redis) + 9_000_000_000_000).to_string();
    let prefix = format!("{{chat-gateway:{SDKAPPID}}}");
    let app_key = format!("{prefix}:app:group_open_http_svc/update_group_counter");
    redis.cli(&["set", &format!("{prefix}:group:hot"), &future]);
    redis.cli(&["set", &app_key, &future]);

    let group_refusal = post(gw.addr, UPDATE, increase("hot")).await;
    group_refusal.assert_rejection(200, 10006, "rate_limit_group");
    let app_refusal = post(gw.addr, UPDATE, increase("cold")).await;
    app_refusal.assert_rejection(200, 60007, "rate_limit_app");
    let asked = redis.calls("evalsha");

    // Past the longest wait the budget allows (the group's interval), the gateway asks Redis
    // again, and Redis has corrected the states to budgets spent when it was first asked.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        post(gw.addr, UPDATE, increase("hot")).await.error_code(),
        0,
        "forwarded one interval later"
    );
    assert!(redis.calls("evalsha") > asked, "Redis was asked again");
    assert_eq!(retry_after(&group_refusal), 1, "not 9 million seconds");
    assert_eq!(retry_after(&app_refusal), 1);
    let pttl: i64 = redis.cli(&["pttl", &app_key]).trim().parse().expect("pttl");
    assert!(
        pttl > 0 && pttl <= 1_100,
        "the app key expires as usual: {pttl}"
    );
}

/// A TCP relay between the gateway and Redis that can freeze the connections it carries (stop
/// forwarding bytes, without closing them) while new connections through it work.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let carried = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                carried.lock().expect("lock").push(flag.clone());
                let (from_gateway, to_gateway) = inbound.into_split();
                let (from_redis, to_redis) = outbound.into_split();
                tokio::spawn(pump(from_gateway, to_redis, flag.clone()));
                tokio::spawn(pump(from_redis, to_gateway, flag));
            }
        });
        Relay { addr, frozen, task }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Every connection carried so far goes silent; returns how many.
    fn freeze(&self) -> usize {
        let flags = self.frozen.lock().expect("lock");
        for flag in flags.iter() {
            flag.store(true, Ordering::SeqCst);
        }
        flags.len()
    }

    fn connections(&self) -> usize {
        self.frozen.lock().expect("lock").len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Silent but open: both halves are held until the test's runtime ends.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_without_closing_is_replaced() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port).await;
    let emulator = spawn_emulator(None).await;
    let gw = spawn_gateway(&config_text(
        &emulator.endpoint(),
        "",
        // One group call a second: a group's key then lives about a second after its call
        // (at the default 20/s, 51 ms: too short to look it up from a loaded machine).
        &redis_sections(
            &relay.url(),
            "50ms",
            "app_per_second = 100000\napp_burst = 100000\ngroup_per_second = 1\n",
        ),
    ))
    .await;
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(5)).await;
    assert_eq!(post(gw.addr, UPDATE, increase("a")).await.error_code(), 0);
    assert!(redis.calls("evalsha") >= 1, "checked in Redis");

    assert!(relay.freeze() >= 1);
    // Cut at redis_timeout and decided locally; Redis answers new connections all the while.
    assert_eq!(post(gw.addr, UPDATE, increase("b")).await.error_code(), 0);
    wait_for_gauge(gw.admin, 0.0, Duration::from_secs(1)).await;
    let frozen = relay.connections();
    // About a second of silence, then a new connection: shared limits again.
    wait_for_gauge(gw.admin, 1.0, Duration::from_secs(3)).await;
    assert!(relay.connections() > frozen, "a new connection");
    let checks = redis.calls("evalsha");
    assert_eq!(post(gw.addr, UPDATE, increase("c")).await.error_code(), 0);
    assert!(redis.calls("evalsha") > checks, "checks go to Redis again");
    assert_eq!(
        redis
            .cli(&["exists", &format!("{{chat-gateway:{SDKAPPID}}}:group:c")])
            .trim(),
        "1"
    );
}

// --- a user that may load the script but not run it -------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The `chat-gateway` binary serving with the Redis URL from `GW_REDIS_URL`.
struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(endpoint: &str, redis_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).expect("write");
        let (port, admin_port) = (free_port(), free_port());
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_delay = \"0s\"\n\
                 [chat]\nsdkappid = {SDKAPPID}\nidentifier = \"{ADMIN}\"\nendpoint = \"{endpoint}\"\nsecret_key_file = \"{}\"\n\
                 [rate_limit]\nbackend = \"redis\"\nredis_url_env = \"GW_REDIS_URL\"\n",
                secret.display()
            ),
        )
        .expect("write");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("GW_REDIS_URL", redis_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let served = Served {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(served.admin).await.is_err() {
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    /// Stops it with SIGTERM; what it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let waited = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            if waited.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.child.wait_with_output().expect("output");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_may_not_run_evalsha_keeps_the_gauge_at_zero_and_is_said_once() {
    let redis = RedisServer::start();
    let set = redis.cli(&[
        "acl", "setuser", "gw", "on", ">gw-pw-5", "~*", "+@all", "-evalsha",
    ]);
    assert_eq!(set.trim(), "OK");
    let emulator = spawn_emulator(None).await;
    let gw = Served::start(
        &emulator.endpoint(),
        &format!("redis://gw:gw-pw-5@127.0.0.1:{}/0", redis.port),
    )
    .await;
    // Over more than two idle-probe intervals, with requests now and then (bounded).
    let start = Instant::now();
    let mut samples = 0;
    while start.elapsed() < Duration::from_secs(12) {
        if samples % 5 == 0 {
            assert_eq!(
                post(gw.addr, UPDATE, increase(&format!("g{samples}")))
                    .await
                    .error_code(),
                0,
                "limited locally, and passed"
            );
        }
        let scraped = scrape(gw.admin).await;
        assert!(scraped.contains(UP), "the gauge exists");
        assert_eq!(
            metric(&scraped, UP),
            0.0,
            "Redis not in use while EVALSHA fails (after {:?})",
            start.elapsed()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.stop();
    assert_eq!(
        log.matches("refuses the rate-limit check").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("NOPERM"), "{log}");
    assert!(!log.contains("Redis answers again"), "no flapping: {log}");
    assert!(
        !log.contains("gw-pw-5"),
        "the password is never logged: {log}"
    );
}
