//! Gateways and emulators on 127.0.0.1:0, and the config text tests start them with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_gateway::config::Config;
use chat_gateway::emulator::{self, Emulator};
use chat_gateway::usersig::SecretKey;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

pub struct EmulatorHandle {
    pub addr: SocketAddr,
    pub emulator: Arc<Emulator>,
    pub tls: bool,
    _stop: Stopper,
}

impl EmulatorHandle {
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }
}

pub async fn spawn_emulator(tls: Option<&TestCa>) -> EmulatorHandle {
    spawn_emulator_with_latency(tls, Duration::ZERO).await
}

/// An emulator that waits `latency` before each answer.
pub async fn spawn_emulator_with_latency(
    tls: Option<&TestCa>,
    latency: Duration,
) -> EmulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let emulator = Emulator::with_latency(SDKAPPID, ADMIN, key(), latency);
    let (stop, stopped) = Stopper::new();
    tokio::spawn(emulator::serve(
        listener,
        emulator.clone(),
        tls.map(|ca| ca.server_config.clone()),
        stopped,
    ));
    EmulatorHandle {
        addr,
        emulator,
        tls: tls.is_some(),
        _stop: stop,
    }
}

pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Stopper,
    pub task: JoinHandle<()>,
}

impl GatewayHandle {
    /// Sends the shutdown signal (what SIGTERM does in the binary).
    pub fn signal_shutdown(&mut self) {
        self.stop.stop();
    }
}

/// A config for tests: listeners on port 0, the given endpoint, then `extra` TOML lines added
/// to the `[chat]` section or as further sections.
pub fn config_text(endpoint: &str, chat_extra: &str, sections: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
drain_delay = "0s"
shutdown_grace = "5s"

[chat]
sdkappid = {SDKAPPID}
identifier = "{ADMIN}"
endpoint = "{endpoint}"
secret_key_file = "/not/read/in/tests"
{chat_extra}

[upstream]
connect_timeout = "1s"
request_timeout = "2s"
{sections}
"#
    )
}

pub async fn spawn_gateway(config: &str) -> GatewayHandle {
    spawn_gateway_with_key(config, key()).await
}

/// Like [`spawn_gateway`], starting with `key` (use it when the config's `secret_key_file`
/// really exists and holds that key, so that reloads start from the same key).
pub async fn spawn_gateway_with_key(config: &str, key: SecretKey) -> GatewayHandle {
    let config = Config::parse(config).unwrap_or_else(|p| panic!("test config: {p}"));
    let callers = TcpListener::bind(config.server.listen).await.expect("bind");
    let admin = TcpListener::bind(config.server.admin_listen)
        .await
        .expect("bind");
    let addr = callers.local_addr().expect("addr");
    let admin_addr = admin.local_addr().expect("addr");
    let (stop, stopped) = Stopper::new();
    let task = tokio::spawn(async move {
        chat_gateway::run(
            config,
            key,
            chat_gateway::Listeners { callers, admin },
            stopped,
        )
        .await
        .expect("gateway run");
    });
    GatewayHandle {
        addr,
        admin: admin_addr,
        stop,
        task,
    }
}
