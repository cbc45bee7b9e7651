//! One limit check (group then app) with 1, 10 000 and 1 000 000 tracked groups (target: under
//! 200 ns at any size), and memory per tracked group (printed from the process's RSS). The
//! budget lookup of a GroupId with 1, 1 000 and 100 000 exact ids beside 1 000 prefixes of 44
//! distinct lengths: an exact id, a prefix, the defaults, and a GroupId that has to be hashed
//! at every length.

use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use chat_gateway::api::ApiTable;
use chat_gateway::config::{ApiAllowList, GroupLimits, GroupMatch, RateLimitConfig};
use chat_gateway::rate_limit::overrides::Overrides;
use chat_gateway::rate_limit::{LocalLimiter, RateLimiter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn config() -> RateLimitConfig {
    RateLimitConfig {
        // High enough that the checks being timed always pass: the cost of a pass and of a
        // refusal differ only in building the refusal.
        group_per_second: 1_000_000,
        group_burst: 1_000_000,
        app_per_second: 1_000_000,
        app_burst: 1_000_000,
        max_tracked_groups: 10_000_000,
        cleanup_interval: Duration::from_secs(10),
        ..RateLimitConfig::default()
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn limit_check(c: &mut Criterion) {
    let api = ApiTable::new(&ApiAllowList::counters())
        .route("/v4/group_open_http_svc/update_group_counter")
        .unwrap_or_else(|| panic!("allowed"));
    let mut group = c.benchmark_group("rate_limit/check");
    for tracked in [1usize, 10_000, 1_000_000] {
        let before = rss_bytes();
        let limiter = LocalLimiter::new(&config());
        let names: Vec<String> = (0..tracked).map(|i| format!("@TGS#live-{i:08}")).collect();
        for name in &names {
            let _ = limiter.check_now(&api, Some(name));
        }
        let after = rss_bytes();
        if tracked >= 10_000 {
            let names_bytes: usize = names.iter().map(|n| n.capacity() + 24).sum();
            let per_group =
                (after.saturating_sub(before) as f64 - names_bytes as f64) / tracked as f64;
            eprintln!("rate_limit: {tracked} tracked groups: ~{per_group:.0} bytes per group (RSS growth less the bench's own names)");
        }
        // A few hot groups (live streams) among many tracked ones: the common case.
        let hot: Vec<String> = names
            .iter()
            .step_by((tracked / 64).max(1))
            .take(64)
            .cloned()
            .collect();
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("hot", tracked), &tracked, |b, _| {
            b.iter(|| {
                i = (i + 1) % hot.len();
                black_box(limiter.check(&api, Some(&hot[i])).ready())
            })
        });
        // Every check on a different group, spread over the whole map (cache-cold). The name is
        // written into a reused buffer, as a request's GroupId sits in the just-parsed body:
        // reading it from a table of a million strings would time the bench, not the map.
        let mut i = 0usize;
        let mut name = String::with_capacity(32);
        group.bench_with_input(BenchmarkId::new("spread", tracked), &tracked, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                name.clear();
                let _ = write!(name, "@TGS#live-{i:08}");
                black_box(limiter.check(&api, Some(&name)).ready())
            })
        });
    }
    group.finish();
}

/// `ids` exact GroupIds and 1 000 prefixes, each table its own budget.
fn overrides(ids: usize) -> RateLimitConfig {
    let table = |matches, i: usize| GroupLimits {
        matches,
        per_second: 1 + (i % 500) as u32,
        burst: 1 + (i % 7) as u32,
    };
    let mut groups: Vec<GroupLimits> = (0..ids)
        .map(|i| table(GroupMatch::Ids(vec![format!("@TGS#vip-{i:08}")]), i))
        .collect();
    // Lengths 2 to 45: every length a miss has to try.
    groups.extend(
        (0..1_000).map(|i| table(GroupMatch::Prefix(format!("{i:0w$}-", w = 1 + i % 44)), i)),
    );
    RateLimitConfig { groups, ..config() }
}

fn override_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/override_lookup");
    for ids in [1usize, 1_000, 100_000] {
        let lookup = Overrides::new(&overrides(ids));
        let exact = format!("@TGS#vip-{:08}", ids / 2);
        group.bench_with_input(BenchmarkId::new("exact", ids), &ids, |b, _| {
            b.iter(|| black_box(lookup.group(black_box(&exact))))
        });
        group.bench_with_input(BenchmarkId::new("prefix", ids), &ids, |b, _| {
            b.iter(|| black_box(lookup.group(black_box("0000000999-live-1"))))
        });
        group.bench_with_input(BenchmarkId::new("default", ids), &ids, |b, _| {
            b.iter(|| black_box(lookup.group(black_box("@TGS#live-00001234"))))
        });
        // Its first and last bytes fit prefixes of every length, and only the shortest ("0-")
        // matches: each length is hashed, the worst case.
        let worst = format!("0{}", "-".repeat(47));
        group.bench_with_input(BenchmarkId::new("worst", ids), &ids, |b, _| {
            b.iter(|| black_box(lookup.group(black_box(&worst))))
        });
    }
    group.finish();
}

criterion_group!(benches, limit_check, override_lookup);
criterion_main!(benches);
