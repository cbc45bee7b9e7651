//! Per-request signing cost: a lock-free read of the cached UserSig plus building the upstream
//! URI (target: under 1 µs). Renewal (a full UserSig) is in the usersig bench.

use std::hint::black_box;
use std::time::Duration;

use chat_gateway::credentials::Credentials;
use chat_gateway::metrics::Metrics;
use chat_gateway::middleware::sign::upstream_uri;
use chat_gateway::usersig::SecretKey;
use criterion::{criterion_group, criterion_main, Criterion};

fn signing(c: &mut Criterion) {
    let key = SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e")
        .unwrap_or_else(|_| panic!("bench key"));
    let credentials = Credentials::new(
        1_400_000_000,
        "administrator",
        Duration::from_secs(3600),
        key,
        Metrics::new(),
    );
    c.bench_function("sign/per_request_uri", |b| {
        b.iter(|| {
            let current = credentials.current();
            upstream_uri(
                black_box("https://adminapisgp.im.qcloud.com"),
                black_box("/v4/group_open_http_svc/update_group_counter"),
                current.query_prefix(),
            )
        })
    });
    c.bench_function("sign/renew", |b| {
        b.iter(|| credentials.renew(black_box(1_800_000_000)))
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
