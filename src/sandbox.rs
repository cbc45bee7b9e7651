//! Sandbox mode: `chat-gateway serve` without a config runs against an in-process emulator,
//! reached through the real client path on loopback, with a throwaway key.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ChatConfig, Config, Endpoint, SecretSource, ServerConfig};
use crate::emulator::{self, Emulator};
use crate::usersig::SecretKey;
use crate::Listeners;

pub const SANDBOX_SDKAPPID: u64 = 1400000000;
pub const SANDBOX_LISTEN: &str = "127.0.0.1:8080";
pub const SANDBOX_ADMIN: &str = "127.0.0.1:9090";
/// The sandbox emulator's answer time.
pub const SANDBOX_LATENCY: Duration = Duration::from_millis(30);

/// The line printed at start; the README shows the same one.
pub fn curl_line(listen: SocketAddr) -> String {
    format!(
        "curl -sS -X POST http://{listen}/v4/group_open_http_svc/update_group_counter \
         -H 'Content-Type: application/json' \
         -d '{{\"GroupId\":\"sandbox-live-1\",\"GroupCounter\":[{{\"Key\":\"likes\",\"Value\":1}}],\"Mode\":\"Increase\"}}'"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot listen on {addr}: {source} (is another gateway running?)")]
    Bind {
        addr: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

/// A random 64-character hex key, like the ones Tencent issues; it never leaves the process.
fn throwaway_key() -> SecretKey {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    SecretKey::new(hex).unwrap_or_else(|_| unreachable!("64 hex characters are not empty"))
}

async fn bind(addr: &'static str) -> Result<TcpListener, SandboxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SandboxError::Bind { addr, source })
}

pub async fn run(shutdown: impl Future<Output = ()> + Send) -> Result<(), SandboxError> {
    let key = throwaway_key();
    let emulator_listener = bind("127.0.0.1:0").await?;
    let emulator_addr = emulator_listener
        .local_addr()
        .map_err(|source| SandboxError::Bind {
            addr: "127.0.0.1:0",
            source,
        })?;
    let callers = bind(SANDBOX_LISTEN).await?;
    let admin = bind(SANDBOX_ADMIN).await?;
    // A realistic round trip, so that coalescing can be seen (and measured) without Tencent.
    let emulator = Emulator::with_latency(
        SANDBOX_SDKAPPID,
        "administrator",
        key.clone(),
        SANDBOX_LATENCY,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let emulator_task = tokio::spawn(emulator::serve(emulator_listener, emulator, None, async {
        let _ = stop_rx.await;
    }));

    let mut config = Config::new(ChatConfig::new(
        SANDBOX_SDKAPPID,
        Endpoint {
            https: false,
            authority: emulator_addr.to_string(),
        },
        SecretSource::Env(String::new()),
    ));
    config.server = ServerConfig {
        listen: callers.local_addr().map_err(|source| SandboxError::Bind {
            addr: SANDBOX_LISTEN,
            source,
        })?,
        admin_listen: admin.local_addr().map_err(|source| SandboxError::Bind {
            addr: SANDBOX_ADMIN,
            source,
        })?,
        // A sandbox has no load balancer to wait for: stop promptly on Ctrl-C.
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    println!("chat-gateway sandbox: an in-process Chat emulator plays Tencent (sdkappid {SANDBOX_SDKAPPID}, throwaway key)");
    println!("callers: http://{SANDBOX_LISTEN}   admin: http://{SANDBOX_ADMIN}/metrics");
    println!("try:");
    println!("{}", curl_line(config.server.listen));
    let result = crate::run(config, key, Listeners { callers, admin }, shutdown).await;
    let _ = stop_tx.send(());
    let _ = emulator_task.await;
    Ok(result?)
}
