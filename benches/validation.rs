//! Cost of checking request bodies, parse included.
//!
//! Targets: a typical update (GroupId, two entries, Mode) under 1 µs, a maximal one (20 keys
//! of 128 bytes) under 5 µs.

use std::hint::black_box;
use std::time::Duration;

use chat_gateway::validated_apis::{get_group_counter, update_group_counter, ValidatedApi};
use chat_gateway::validation::{validate_counter, validate_object, CounterPayload};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const TYPICAL_UPDATE: &str = r#"{"GroupId":"@TGS#aQPZUPQMN","GroupCounter":[{"Key":"likes","Value":1},{"Key":"views","Value":-3}],"Mode":"Increase"}"#;
const TYPICAL_GET: &str = r#"{"GroupId":"@TGS#aQPZUPQMN","GroupCounterKeys":["likes","views"]}"#;
const TYPICAL_OTHER: &str =
    r#"{"GroupId":"@TGS#aQPZUPQMN","Member_Account":"user1","ShutUpTime":60}"#;

/// 20 distinct keys of 128 bytes each, sharing a long prefix so equality checks do real work.
fn max_keys() -> Vec<String> {
    (0..20)
        .map(|i| format!("{}{i:02}", "k".repeat(126)))
        .collect()
}

fn max_update() -> String {
    let entries: Vec<String> = max_keys()
        .iter()
        .map(|key| format!(r#"{{"Key":"{key}","Value":{}}}"#, i64::MIN))
        .collect();
    format!(
        r#"{{"GroupId":"{}","GroupCounter":[{}],"Mode":"Set"}}"#,
        "g".repeat(48),
        entries.join(",")
    )
}

fn max_get() -> String {
    let keys: Vec<String> = max_keys().iter().map(|key| format!(r#""{key}""#)).collect();
    format!(
        r#"{{"GroupId":"{}","GroupCounterKeys":[{}]}}"#,
        "g".repeat(48),
        keys.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let max_update = max_update();
    let max_get = max_get();
    let cases: [(&str, CounterPayload, &str); 4] = [
        ("update/typical", CounterPayload::Update, TYPICAL_UPDATE),
        ("update/max", CounterPayload::Update, &max_update),
        ("get/typical", CounterPayload::Get, TYPICAL_GET),
        ("get/max", CounterPayload::Get, &max_get),
    ];
    let mut group = c.benchmark_group("validate_counter");
    for (name, api, body) in cases {
        assert!(validate_counter(api, body.as_bytes()).is_ok(), "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| validate_counter(black_box(api), black_box(body.as_bytes())))
        });
    }
    group.finish();

    // What the validation layer runs: the walk plus the owned facts it keeps for later layers.
    let apis: [(&str, &ValidatedApi, &str); 2] = [
        ("update/typical", &update_group_counter::API, TYPICAL_UPDATE),
        ("get/typical", &get_group_counter::API, TYPICAL_GET),
    ];
    let mut group = c.benchmark_group("registry");
    for (name, api, body) in apis {
        assert!(api.validate(body.as_bytes()).is_ok(), "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| api.validate(black_box(body.as_bytes())))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("validate_object");
    assert!(validate_object(TYPICAL_OTHER.as_bytes()).is_ok());
    group.throughput(Throughput::Bytes(TYPICAL_OTHER.len() as u64));
    group.bench_function("typical", |b| {
        b.iter(|| validate_object(black_box(TYPICAL_OTHER.as_bytes())))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
