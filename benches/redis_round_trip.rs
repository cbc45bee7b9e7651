//! The round trip of the gateway's check to Redis, alone (no gateway), at a given pace: the
//! floor of the latency a check adds, measured the way the gateway meets it. The load script
//! runs it after each one-connection round, once back to back (as `redis-benchmark` does) and
//! once with one check started every `PERIOD_US` (the gateway's own time per request at one
//! connection): on a virtual machine a CPU that has been idle longer takes longer to wake, so
//! Redis answers a check that comes at the gateway's pace more slowly than one of a
//! back-to-back stream, whoever sends it.
//!
//! Environment: `REDIS_PORT` (required), `SHA` (the loaded `gcra.lua`, required), `N` [20000]
//! checks, `PERIOD_US` [0: back to back]. Between checks the client spins, as the gateway's CPU
//! is busy with the rest of the request. Prints `p50_us p99_us`. Not a criterion bench: it
//! only runs when the load script (or a person) asks, against a Redis on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn env(name: &str, default: Option<&str>) -> String {
    match (std::env::var(name), default) {
        (Ok(v), _) => v,
        (Err(_), Some(d)) => d.to_string(),
        (Err(_), None) => {
            eprintln!("redis_round_trip: {name} is required (run by benches/load/run.sh)");
            std::process::exit(0)
        }
    }
}

/// One check of the gateway's shape: the app key and a group among 1 024, the script's
/// numbers far from any limit, under the bench's own key prefix.
fn check(sha: &str, group: u32) -> Vec<u8> {
    let key = |kind: &str, name: &str| format!("{{bench-round-trip}}:{kind}:{name}");
    redis::cmd("EVALSHA")
        .arg(sha)
        .arg(4)
        .arg(key("app", "x"))
        .arg(key("numbers:app", "x"))
        .arg(key("group", &group.to_string()))
        .arg(key("numbers:group", &group.to_string()))
        .arg([1000u64, 999_999_000, 1000, 999_999_000].as_slice())
        .get_packed_command()
}

/// Reads one whole reply.
fn answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if redis::parse_redis_value(buf).is_ok() {
            return Ok(());
        }
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = env("REDIS_PORT", None).parse().unwrap_or(6379);
    let sha = env("SHA", None);
    let n: usize = env("N", Some("20000")).parse().unwrap_or(20_000);
    let period = Duration::from_micros(env("PERIOD_US", Some("0")).parse().unwrap_or(0));
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut buf, mut took) = (Vec::new(), Vec::with_capacity(n));
    let mut group = 1u32;
    for _ in 0..n.max(1) {
        group = group.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let command = check(&sha, (group >> 16) % 1024);
        let start = Instant::now();
        stream.write_all(&command)?;
        answer(&mut stream, &mut buf)?;
        took.push(start.elapsed());
        while start.elapsed() < period {
            std::hint::spin_loop();
        }
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_micros();
    println!("{} {}", at(0.5), at(0.99));
    Ok(())
}
