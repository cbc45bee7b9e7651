//! Cost of signing and checking a typical admin UserSig (what the gateway pays per renewal,
//! and what the emulator pays per request).

use chat_gateway::usersig::{generate, verify, SecretKey};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const SDKAPPID: u64 = 1_400_000_000;
const IDENTIFIER: &str = "administrator";
const TIME: u64 = 1_732_600_000;
const EXPIRE: u64 = 3600;

fn key() -> SecretKey {
    match SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e") {
        Ok(key) => key,
        Err(err) => panic!("bench key: {err}"),
    }
}

fn usersig(c: &mut Criterion) {
    let key = key();
    c.bench_function("usersig/generate", |b| {
        b.iter(|| {
            generate(
                black_box(&key),
                black_box(SDKAPPID),
                black_box(IDENTIFIER),
                black_box(TIME),
                black_box(EXPIRE),
            )
        })
    });
    let sig = generate(&key, SDKAPPID, IDENTIFIER, TIME, EXPIRE);
    c.bench_function("usersig/verify", |b| {
        b.iter(|| {
            verify(
                black_box(&key),
                black_box(&sig),
                black_box(SDKAPPID),
                black_box(IDENTIFIER),
                black_box(TIME + 60),
            )
        })
    });
}

criterion_group!(benches, usersig);
criterion_main!(benches);
