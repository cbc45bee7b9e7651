//! Spawns gateways, emulators and scripted upstreams on 127.0.0.1:0, and a plain HTTP client.

#![allow(dead_code)]

mod certs;
mod client;
mod collector;
mod raw;
mod recording;
mod spawn;
mod tools;

pub use certs::*;
pub use client::*;
pub use collector::*;
pub use raw::*;
pub use recording::*;
pub use spawn::*;
pub use tools::*;

use chat_gateway::usersig::SecretKey;
use tokio::sync::oneshot;

pub const SDKAPPID: u64 = 1400000000;
pub const ADMIN: &str = "administrator";
pub const SECRET: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
pub const UPDATE: &str = chat_gateway::validated_apis::update_group_counter::API.path;
pub const GET: &str = chat_gateway::validated_apis::get_group_counter::API.path;
pub const DELETE: &str = chat_gateway::validated_apis::delete_group_counter::API.path;

pub fn key() -> SecretKey {
    SecretKey::new(SECRET).expect("key")
}

/// Something that stops when dropped.
pub struct Stopper(Option<oneshot::Sender<()>>);

impl Stopper {
    pub fn new() -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = oneshot::channel::<()>();
        (Stopper(Some(tx)), async move {
            let _ = rx.await;
        })
    }
    pub fn stop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This process's resident set size in bytes (the gateway runs in-process in these tests).
pub fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}
