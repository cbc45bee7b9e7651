//! Reloading the config of a running gateway (the binary, so that SIGHUP reaches it alone):
//! the file swapped the Kubernetes way while the gateway serves load, a broken file refused,
//! a touch that is no reload, SIGHUP, and a key that needs a restart. Coalescing is off, so
//! that a call over budget is refused at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::binary::{free_port, wait_ready, Running, BIN};
use crate::redis_limits::increase;
use crate::support::*;

/// A mounted ConfigMap: `gateway.toml -> ..data/gateway.toml`, `..data -> ..<timestamp>`.
/// A new version is a new directory, and `..data` is swapped to it with one rename.
pub(crate) struct ConfigMap {
    dir: tempfile::TempDir,
    versions: usize,
}

impl ConfigMap {
    pub(crate) fn new(content: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink("..data/gateway.toml", dir.path().join("gateway.toml"))
            .expect("symlink");
        let mut map = ConfigMap { dir, versions: 0 };
        map.swap(content);
        map
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub(crate) fn swap(&mut self, content: &str) {
        self.versions += 1;
        let version = format!(
            "..2026_12_07_21_00_{:02}.{}",
            self.versions,
            1000 + self.versions
        );
        std::fs::create_dir(self.dir.path().join(&version)).expect("version dir");
        std::fs::write(self.dir.path().join(&version).join("gateway.toml"), content)
            .expect("write");
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.path().join("..data")).expect("swap ..data");
    }
}

/// A gateway binary serving from `file`, with its addresses.
pub(crate) struct Gateway {
    pub(crate) running: Running,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
}

/// The config text: listeners, the emulator, the key in `key_dir`, coalescing off, groups at
/// 1/s (so that bursts decide within a test), then `rate_limit` lines.
pub(crate) fn config(
    ports: (u16, u16),
    endpoint: &str,
    key_dir: &Path,
    rate_limit: &str,
) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\ndrain_delay = \"0s\"\n\
         [chat]\nsdkappid = {SDKAPPID}\nendpoint = \"{endpoint}\"\nsecret_key_file = \"{}\"\n\
         [coalesce]\nenabled = false\n\
         [rate_limit]\ngroup_per_second = 1\napp_per_second = 100000\napp_burst = 100000\n{rate_limit}\n",
        ports.0,
        ports.1,
        key_dir.join("key").display()
    )
}

pub(crate) async fn start(file: &Path, ports: (u16, u16)) -> Gateway {
    // No access log: nobody reads the pipe until the end, and the reload lines must fit.
    let running = Running::spawn(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(file)
            .env("RUST_LOG", "info,chat_gateway::access=off"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", ports.0).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", ports.1).parse().expect("addr");
    wait_ready(admin).await;
    Gateway {
        running,
        addr,
        admin,
    }
}

pub(crate) fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), format!("{SECRET}\n")).expect("key");
    dir
}

pub(crate) async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    let series = format!("chat_gateway_config_reloads_total{{result=\"{result}\"}}");
    metric(&scrape(admin).await, &series)
}

/// Waits until `result` reloads reach `count` (the contract: within 5 s of the change; more
/// is allowed here for a loaded machine).
pub(crate) async fn wait_for_reloads(admin: SocketAddr, result: &str, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloads(admin, result).await < count {
        assert!(
            Instant::now() < deadline,
            "no {result} reload number {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many of `n` quick increments of `group` pass; the rest must be refused for the group.
pub(crate) async fn passed(addr: SocketAddr, group: &str, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        let reply = post(addr, UPDATE, increase(group)).await;
        if reply.error_code() == 0 {
            passed += 1;
        } else {
            reply.assert_rejection(200, 10006, "rate_limit_group");
        }
    }
    passed
}

/// SIGTERM; returns what the gateway printed.
pub(crate) async fn stop(gateway: Gateway) -> String {
    gateway.running.signal("-TERM");
    let (code, output) =
        tokio::task::spawn_blocking(move || gateway.running.wait(Duration::from_secs(10)))
            .await
            .expect("join");
    assert_eq!(code, Some(0), "{output}");
    output
}

/// Load on groups that never run out (each request its own group), until `stop`; at most
/// 5 000 requests. Every answer must be a success.
pub(crate) fn background_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && sent < 5_000 {
            let reply = post(addr, UPDATE, increase(&format!("load-{sent}"))).await;
            assert_eq!(
                (reply.status.as_u16(), reply.error_code()),
                (200, 0),
                "request {sent} failed during the reload: {:?}",
                reply.body
            );
            sent += 1;
        }
        sent
    })
}

/// Spends `group`'s tokens as they come, until `stop`, so that its bucket stays empty.
pub(crate) fn keep_spent(
    addr: SocketAddr,
    group: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) && rounds < 2_000 {
            let _ = post(addr, UPDATE, increase(group)).await;
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Load that never runs out (see [`background_load`]), until [`Load::finish`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    sent: tokio::task::JoinHandle<usize>,
}

impl Load {
    /// Stops the load; every answer was a success and some were sent.
    pub(crate) async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert!(self.sent.await.expect("load") > 0, "load was sent");
    }
}

/// With the running file at `group_burst = 3` (1/s): a fresh group passes 3; then, under
/// load and with a group kept spent, `with_burst_10` swapped in: the spent group gets no
/// token back from the larger burst, a fresh one passes 10. Returns the load, still running.
pub(crate) async fn from_burst_3_to_10_under_load(
    gw: &Gateway,
    map: &mut ConfigMap,
    with_burst_10: &str,
) -> Load {
    assert_eq!(
        passed(gw.addr, "fresh-before", 5).await,
        3,
        "the first burst"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = background_load(gw.addr, stop.clone());
    let stop_spending = Arc::new(AtomicBool::new(false));
    let spending = keep_spent(gw.addr, "spent", stop_spending.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    map.swap(with_burst_10);
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    stop_spending.store(true, Ordering::Relaxed);
    spending.await.expect("spending");
    // At 1/s a token or two can come while the requests are sent; a refilled bucket would
    // pass all 10.
    let spent = passed(gw.addr, "spent", 10).await;
    assert!(
        spent <= 2,
        "a spent burst came back with the larger one: {spent}"
    );
    let fresh = passed(gw.addr, "fresh-after", 12).await;
    assert!((10..=12).contains(&fresh), "the new burst: {fresh} of 12");
    Load { stop, sent }
}

/// The ConfigMap swapped under load: the new burst applies to the next requests, no request
/// fails, and a group that spent its burst does not get tokens back from the larger burst.
#[tokio::test]
async fn a_swapped_config_map_applies_at_once_without_refilling_or_failing_requests() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let text = |rate_limit: &str| config(ports, &emulator.endpoint(), keys.path(), rate_limit);
    let mut map = ConfigMap::new(&text("group_burst = 3"));
    let gw = start(&map.path(), ports).await;
    let loaded_at = metric(
        &scrape(gw.admin).await,
        "chat_gateway_config_last_reload_success_timestamp_seconds",
    );
    assert!(loaded_at > 0.0, "set at start");
    let load = from_burst_3_to_10_under_load(&gw, &mut map, &text("group_burst = 10")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.finish().await;

    let scraped = scrape(gw.admin).await;
    assert_eq!(reloads(gw.admin, "refused").await, 0.0);
    assert_eq!(metric(&scraped, "chat_gateway_config_restart_pending"), 0.0);
    assert!(
        metric(
            &scraped,
            "chat_gateway_config_last_reload_success_timestamp_seconds"
        ) >= loaded_at
    );
    let output = stop(gw).await;
    assert!(output.contains("config reloaded"), "{output}");
}

/// A file with problems changes nothing: each problem is logged as check-config names it,
/// the refused count goes up, and the running limits keep serving. Fixing the file applies it.
#[tokio::test]
async fn a_broken_file_is_refused_and_the_running_config_stays() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let text = |rate_limit: &str| config(ports, &emulator.endpoint(), keys.path(), rate_limit);
    let mut map = ConfigMap::new(&text("group_burst = 2"));
    let gw = start(&map.path(), ports).await;

    map.swap(&text("group_burst = 0\ngroup_colour = \"blue\""));
    wait_for_reloads(gw.admin, "refused", 1.0).await;
    assert_eq!(passed(gw.addr, "a", 4).await, 2, "the running burst");
    assert_eq!(reloads(gw.admin, "applied").await, 0.0);
    assert_eq!(
        metric(
            &scrape(gw.admin).await,
            "chat_gateway_config_restart_pending"
        ),
        0.0
    );

    map.swap(&text("group_burst = 5"));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    assert_eq!(passed(gw.addr, "b", 7).await, 5, "the fixed file applies");
    assert_eq!(reloads(gw.admin, "refused").await, 1.0);
    let output = stop(gw).await;
    for named in [
        "rate_limit.group_burst = 0: must be a positive integer",
        "rate_limit.group_colour: unknown key",
    ] {
        assert!(output.contains(named), "{named} not logged:\n{output}");
    }
}

/// A touch that changes no byte is no reload; SIGHUP reloads whatever the file holds, and a
/// file rewritten in place (not swapped) is read on SIGHUP too.
#[tokio::test]
async fn a_touch_is_no_reload_and_sighup_is_one() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let text = |rate_limit: &str| config(ports, &emulator.endpoint(), keys.path(), rate_limit);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text("group_burst = 2")).expect("write");
    let gw = start(&file, ports).await;

    // The same bytes written again: a new mtime, the same content.
    std::fs::write(&file, text("group_burst = 2")).expect("write");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(reloads(gw.admin, "applied").await, 0.0, "a touch reloaded");

    gw.running.signal("-HUP");
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    std::fs::write(&file, text("group_burst = 4")).expect("write");
    gw.running.signal("-HUP");
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    assert_eq!(
        passed(gw.addr, "g", 6).await,
        4,
        "the rewritten file applies"
    );
    stop(gw).await;
}

/// A key that needs a restart keeps its running value and is named in the log; the gauge is
/// 1 until the file agrees with the running gateway again; the rest of the change applies.
#[tokio::test]
async fn a_restart_only_key_is_kept_named_and_pending_until_the_file_agrees() {
    let emulator = spawn_emulator(None).await;
    let keys = key_dir();
    let ports = (free_port(), free_port());
    let other_port = free_port();
    let text =
        |ports, rate_limit: &str| config(ports, &emulator.endpoint(), keys.path(), rate_limit);
    let mut map = ConfigMap::new(&text(ports, "group_burst = 2"));
    let gw = start(&map.path(), ports).await;
    let pending = |scraped: &str| metric(scraped, "chat_gateway_config_restart_pending");
    assert_eq!(pending(&scrape(gw.admin).await), 0.0, "0 from the start");

    map.swap(&text((other_port, ports.1), "group_burst = 3"));
    wait_for_reloads(gw.admin, "applied", 1.0).await;
    assert_eq!(pending(&scrape(gw.admin).await), 1.0);
    assert_eq!(
        passed(gw.addr, "a", 5).await,
        3,
        "the rest applied, on the running listener"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", other_port))
            .await
            .is_err(),
        "nothing listens on the new port before a restart"
    );

    // A refused file leaves the gauge as it was.
    map.swap("not toml [");
    wait_for_reloads(gw.admin, "refused", 1.0).await;
    assert_eq!(pending(&scrape(gw.admin).await), 1.0);

    map.swap(&text(ports, "group_burst = 3"));
    wait_for_reloads(gw.admin, "applied", 2.0).await;
    assert_eq!(
        pending(&scrape(gw.admin).await),
        0.0,
        "file and gateway agree"
    );
    let output = stop(gw).await;
    assert!(
        output.contains("config file changes server.listen, which takes effect only at a restart"),
        "{output}"
    );
}
