//! `redis_mode = "cluster"` on a real Redis Cluster: gateways share one budget across it, the
//! app's slot moving to another master mid-load costs no fallback (MOVED, ASK and the new
//! master's missing script are followed), and a replica taking over from a master killed or
//! hung is followed within 2 s while no request waits longer than `redis_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_gateway::api::ApiTable;
use chat_gateway::config::{
    ApiAllowList, Backend, RateLimitConfig, RedisBackend, RedisMode, RedisUrl,
};
use chat_gateway::metrics::Metrics;
use chat_gateway::rate_limit::RedisLimiter;

use crate::redis_limits::{increase, wait_for_gauge, UP};
use crate::redis_sets::{app_tag, wait_until, RedisCluster};
use crate::support::*;

/// The `[rate_limit]` of a gateway in `mode` on `nodes`, and no coalescing (each call its own
/// check, so that counts are exact).
pub(crate) fn mode_sections(mode: &str, nodes: &str, extra: &str) -> String {
    format!(
        "[rate_limit]\nbackend = \"redis\"\nredis_mode = \"{mode}\"\nredis_nodes = {nodes}\n{extra}\n[coalesce]\nenabled = false\n"
    )
}

/// What a load run saw: calls that passed, and the longest any call took.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Duration>>,
    pub passed: Arc<AtomicU64>,
}

impl Load {
    /// Two callers per gateway sending increments of ever new groups, until [`Load::finish`]
    /// (at most 20 000 calls each, with a short pause between).
    pub(crate) fn start(gateways: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let passed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (g, &addr) in gateways.iter().enumerate() {
            for caller in 0..2 {
                let (stop, passed) = (stop.clone(), passed.clone());
                tasks.push(tokio::spawn(async move {
                    let mut longest = Duration::ZERO;
                    for i in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let started = Instant::now();
                        let reply =
                            post(addr, UPDATE, increase(&format!("g{g}-{caller}-{i}"))).await;
                        longest = longest.max(started.elapsed());
                        if reply.error_code() == 0 {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    longest
                }));
            }
        }
        Load {
            stop,
            tasks,
            passed,
        }
    }

    /// Stops the callers; the longest any call took.
    pub(crate) async fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let mut longest = Duration::ZERO;
        for task in self.tasks {
            longest = longest.max(task.await.expect("caller"));
        }
        longest
    }
}

/// Samples every gateway's `backend_up` until `stop`; how many samples said 0.
fn watch_up(admins: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut down = 0;
        for _ in 0..10_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for &admin in &admins {
                if metric(&scrape(admin).await, UP) != 1.0 {
                    down += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        down
    })
}

/// `n` gateways on `cluster`, each using it.
async fn cluster_gateways(
    cluster: &RedisCluster,
    n: usize,
    endpoint: &str,
    extra: &str,
) -> Vec<GatewayHandle> {
    let mut gateways = Vec::new();
    for _ in 0..n {
        let text = mode_sections("cluster", &cluster.nodes_toml(), extra);
        let gw = spawn_gateway(&config_text(endpoint, "", &text)).await;
        wait_for_gauge(gw.admin, 1.0, Duration::from_secs(10)).await;
        gateways.push(gw);
    }
    gateways
}

/// A limiter of the same app beside the gateways, to check another API (its own budget, in
/// the same slot) and see whether the cluster answered each check.
async fn side_limiter(cluster: &RedisCluster) -> RedisLimiter {
    let config = RateLimitConfig {
        backend: Backend::Redis,
        redis_mode: RedisMode::Cluster,
        redis_nodes: cluster.urls(),
        ..RateLimitConfig::default()
    };
    let backend = RedisBackend {
        url: RedisUrl::Url(String::new()),
        timeout: Duration::from_secs(1),
        auth: Default::default(),
    };
    let side = RedisLimiter::new(&config, &backend, SDKAPPID, &Metrics::new()).expect("limiter");
    assert!(side.probe().await, "the cluster answers");
    side
}

/// Checks on `side` until `task` is done (at least 20, bounded by the task): how many the
/// cluster did not answer, of how many.
async fn check_until_done<T>(side: &RedisLimiter, task: &tokio::task::JoinHandle<T>) -> (u32, u32) {
    let get = ApiTable::new(&ApiAllowList::counters())
        .route(GET)
        .expect("allowed");
    let (mut unanswered, mut asked) = (0, 0);
    while (!task.is_finished() || asked < 20) && asked < 10_000 {
        asked += 1;
        if side.check_shared(&get, Some("side")).await.is_none() {
            unanswered += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (unanswered, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_budget_while_the_apps_slot_moves() {
    const RATE: u64 = 100;
    const BURST: u64 = 10;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .expect("cluster");
    let emulator = spawn_emulator(None).await;
    let rates = format!("group_per_second = 100000\ngroup_burst = 100000\napp_per_second = {RATE}\napp_burst = {BURST}\n");
    // A timeout the loaded test machine always meets: a check that fell back would show.
    let extra = format!("redis_timeout = \"1s\"\n{rates}");
    let gateways = cluster_gateways(&cluster, 3, &emulator.endpoint(), &extra).await;
    let side = side_limiter(&cluster).await;

    let slot = cluster.app_slot();
    let from = cluster.master_of(slot).expect("the slot's master");
    let to = (0..3).find(|&n| n != from).expect("another master");
    let addrs: Vec<SocketAddr> = gateways.iter().map(|gw| gw.addr).collect();
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watch = watch_up(
        gateways.iter().map(|gw| gw.admin).collect(),
        stop_watch.clone(),
    );
    let start = Instant::now();
    let load = Load::start(&addrs);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cluster = Arc::new(cluster);
    let moving = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.move_slot(slot, from, to))
    };
    let (unanswered, asked) = check_until_done(&side, &moving).await;
    moving.await.expect("slot moved");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    load.finish().await;
    let elapsed = start.elapsed().as_secs_f64();
    stop_watch.store(true, Ordering::Relaxed);
    let down_samples = watch.await.expect("watch");

    assert_eq!(cluster.master_of(slot), Some(to), "the slot moved");
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {asked} checks fell back while the slot moved"
    );
    assert_eq!(down_samples, 0, "backend_up left 1 while the slot moved");
    let app_key = format!("{}:app:group_open_http_svc/update_group_counter", app_tag());
    assert_eq!(
        cluster.nodes[to].cli(&["exists", &app_key]).trim(),
        "1",
        "state kept on the new master"
    );
    for gw in &gateways {
        let scraped = scrape(gw.admin).await;
        assert_eq!(metric(&scraped, UP), 1.0);
        // The fleet announcement reaches the slot's master too, before and after the move.
        assert_eq!(metric(&scraped, "chat_gateway_rate_limit_fleet_size"), 3.0);
    }
    let fleet_key = format!("{}:fleet", app_tag());
    assert_eq!(cluster.nodes[to].cli(&["zcard", &fleet_key]).trim(), "3");
    let total = emulator.emulator.requests() as f64;
    let budget = RATE as f64 * elapsed + BURST as f64;
    eprintln!("{total} calls upstream in {elapsed:.2}s (budget {budget:.0})");
    assert!(
        total <= budget * 1.05,
        "{total} calls in {elapsed:.2}s over {budget:.0}"
    );
    assert!(
        total >= RATE as f64 * elapsed * 0.5,
        "the budget was used: {total}"
    );
}

/// How the app's master leaves.
enum Gone {
    /// Killed by PID: its connections close.
    Killed,
    /// Stopped (SIGSTOP): silent without closing anything, as a hung host is.
    Silent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_taking_over_from_a_killed_master_is_followed_within_two_seconds() {
    takeover(Gone::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_taking_over_from_a_silent_master_is_followed_within_two_seconds() {
    takeover(Gone::Silent).await;
}

/// Two gateways under load on a cluster whose app master goes (`gone`) and whose replica
/// takes over: they use the new master within 2 s of the takeover, and no call waits longer
/// than `redis_timeout` (and a margin) meanwhile.
async fn takeover(gone: Gone) {
    const TIMEOUT: Duration = Duration::from_millis(100);
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .expect("cluster");
    let emulator = spawn_emulator(None).await;
    let extra = format!(
        "redis_timeout = \"{}ms\"\ngroup_per_second = 100000\ngroup_burst = 100000\napp_per_second = 100000\napp_burst = 100000\n",
        TIMEOUT.as_millis()
    );
    let gateways = cluster_gateways(&cluster, 2, &emulator.endpoint(), &extra).await;
    let slot = cluster.app_slot();
    let master = cluster.master_of(slot).expect("the slot's master");
    let replica = cluster.replica_of(master).expect("its replica");
    let addrs: Vec<SocketAddr> = gateways.iter().map(|gw| gw.addr).collect();
    let load = Load::start(&addrs);
    tokio::time::sleep(Duration::from_millis(500)).await;

    match gone {
        Gone::Killed => cluster.nodes[master].kill(),
        Gone::Silent => cluster.nodes[master].signal("-STOP"),
    }
    let cluster = Arc::new(cluster);
    let promoted = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || {
            wait_until("the replica takes over", Duration::from_secs(20), || {
                cluster.nodes[replica].cli(&["role"]).starts_with("master")
            });
            (Instant::now(), cluster.nodes[replica].calls("evalsha"))
        })
    };
    let (takeover, evalsha_then) = promoted.await.expect("takeover");
    // Followed: every gateway uses the cluster again and checks reach the new master.
    loop {
        let mut up = 0;
        for gw in &gateways {
            if metric(&scrape(gw.admin).await, UP) == 1.0 {
                up += 1;
            }
        }
        if up == gateways.len() && cluster.nodes[replica].calls("evalsha") > evalsha_then + 10 {
            break;
        }
        assert!(
            takeover.elapsed() < Duration::from_secs(2),
            "{up} of {} gateways back on the cluster 2 s after the takeover",
            gateways.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("followed {:?} after the takeover", takeover.elapsed());
    let passed_before = load.passed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        load.passed.load(Ordering::Relaxed) > passed_before,
        "calls pass"
    );
    let longest = load.finish().await;
    // The margin covers the local check, the upstream call and a loaded test machine; a wait
    // for the cluster's own timeouts (2 s) would show.
    assert!(
        longest < TIMEOUT + Duration::from_millis(900),
        "a call waited {longest:?} with redis_timeout = {TIMEOUT:?}"
    );
}

#[test]
fn check_config_names_each_problem_of_the_mode_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let redis = "[rate_limit]\nbackend = \"redis\"\n";
    for (lines, expected) in [
        (
            "redis_mode = \"clustr\"\nredis_url = \"redis://r:6379\"",
            "rate_limit.redis_mode = \"clustr\": must be \"standalone\", \"cluster\" or \"sentinel\"",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\"]\nredis_url = \"redis://r:6379\"",
            "rate_limit.redis_url = \"redis://r:6379\": not with redis_mode = \"cluster\": list the cluster's seed nodes in redis_nodes",
        ),
        (
            "redis_mode = \"cluster\"",
            "rate_limit.redis_nodes: required with redis_mode = \"cluster\"",
        ),
        (
            "redis_mode = \"sentinel\"\nredis_nodes = []\nredis_sentinel_master = \"m\"",
            "rate_limit.redis_nodes: required with redis_mode = \"sentinel\": the sentinels",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = [\"redis://:pw@a:7000\"]",
            "rate_limit.redis_nodes = \"redis://:***@a:7000\": holds a password",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000/3\"]",
            "rate_limit.redis_nodes = \"redis://a:7000/3\": names a database",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\", \"rediss://b:7000\"]",
            "rate_limit.redis_nodes: all nodes must use one scheme",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = \"redis://a:7000\"",
            "rate_limit.redis_nodes = \"redis://a:7000\": must be an array",
        ),
        (
            "redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\"]\nredis_sentinel_master = \"m\"",
            "rate_limit.redis_sentinel_master = \"m\": only with redis_mode = \"sentinel\"",
        ),
        (
            "redis_mode = \"sentinel\"\nredis_nodes = [\"redis://s:26379\"]",
            "rate_limit.redis_sentinel_master: required with redis_mode = \"sentinel\"",
        ),
        (
            "redis_url = \"redis://r:6379\"\nredis_nodes = [\"redis://a:7000\"]",
            "rate_limit.redis_nodes: only with redis_mode = \"cluster\"",
        ),
    ] {
        let sections = format!("{redis}{lines}\n");
        crate::binary::check_config_finds_one_problem(dir.path(), &sections, expected);
    }
    crate::binary::check_config_finds_one_problem(
        dir.path(),
        "[rate_limit]\nredis_mode = \"cluster\"\n",
        "rate_limit.redis_mode = \"cluster\": set only with backend = \"redis\"",
    );
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "pw\n").expect("write");
    let user = format!(
        "redis_username = \"gateway\"\nredis_password_file = \"{}\"\n",
        password.display()
    );
    for lines in [
        "redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\", \"redis://b:7000\"]\n",
        "redis_mode = \"sentinel\"\nredis_nodes = [\"rediss://s:26379\"]\nredis_sentinel_master = \"m\"\n",
    ] {
        crate::binary::check_config_passes(dir.path(), &format!("{redis}{lines}{user}"));
    }
    let test_ca = TestCa::new();
    let ca = test_ca.ca_file();
    crate::binary::check_config_finds_one_problem(
        dir.path(),
        &format!(
            "{redis}redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\"]\nredis_ca_file = \"{}\"\n",
            ca.display()
        ),
        "used only over TLS, but rate_limit.redis_nodes \"redis://a:7000\" is not rediss://",
    );
}
