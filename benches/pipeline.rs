//! The whole pipeline in-process (caller request to the upstream future, with a no-op upstream
//! that answers a fixed OK envelope), with and without the observe layer (metrics and the log
//! event), through the handle a config reload swaps, and each stage on its own, so that a
//! regression shows where it is. Before timing, it counts the heap allocations one request
//! makes through the whole pipeline.
// The one unsafe here is the counting allocator's forwarding to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chat_gateway::config::Config;
use chat_gateway::error::GatewayError;
use chat_gateway::exchange::{GatewayResponse, UpstreamReport};
use chat_gateway::metrics::Outcome;
use chat_gateway::middleware::sign::upstream_uri;
use chat_gateway::stack::{self, StackParts};
use chat_gateway::usersig::SecretKey;
use chat_gateway::validated_apis::update_group_counter;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

/// Counts allocations (and reallocations) so the bench can say how many a request makes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BODY: &[u8] =
    br#"{"GroupId":"live-1","GroupCounter":[{"Key":"likes","Value":1}],"Mode":"Increase"}"#;
const OK: &[u8] = br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"likes","Value":1}]}"#;
const PATH: &str = "/v4/group_open_http_svc/update_group_counter";

fn parts() -> StackParts {
    parts_with("")
}

/// 100 000 GroupIds and 1 000 prefixes with budgets of their own (none names the bench's
/// group, whose lookup then goes through both).
fn overrides() -> String {
    let ids: Vec<String> = (0..100_000)
        .map(|i| format!("\"@TGS#vip-{i:08}\""))
        .collect();
    let mut text = format!(
        "[[rate_limit.groups]]\nids = [{}]\nper_second = 1000000000\n",
        ids.join(",")
    );
    for i in 0..1_000 {
        text.push_str(&format!(
            "[[rate_limit.groups]]\nprefix = \"{i:04}-live-\"\nper_second = 1000000000\n"
        ));
    }
    text
}

/// The bench's parts with `extra` sections (a `[tracing]` one needs the runtime entered).
fn parts_with(extra: &str) -> StackParts {
    let text = format!(
        r#"
[chat]
sdkappid = 1400000000
endpoint = "https://127.0.0.1:18443"
secret_key_file = "/unused"
[rate_limit]
group_per_second = 1000000000
group_burst = 1000000000
app_per_second = 1000000000
app_burst = 1000000000
{extra}
"#
    );
    let config = Config::parse(&text).unwrap_or_else(|p| panic!("bench config: {p}"));
    let key = SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e")
        .unwrap_or_else(|_| panic!("bench key"));
    StackParts::from_config(&config, key).unwrap_or_else(|e| panic!("parts: {e}"))
}

/// Answers at once, the way a pooled client does when the answer is ready: with the report
/// the real upstream service attaches.
fn noop_upstream(
) -> impl Service<Request<Full<Bytes>>, Response = GatewayResponse, Error = GatewayError, Future: Send>
       + Clone
       + Send
       + 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = http::Response::new(Full::new(Bytes::from_static(OK)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response.extensions_mut().insert(UpstreamReport {
            error_code: Some(0),
            elapsed: std::time::Duration::ZERO,
        });
        Ok::<_, GatewayError>(response)
    })
}

fn request() -> Request<Full<Bytes>> {
    Request::post(PATH)
        .header("content-type", "application/json")
        .header("content-length", BODY.len())
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap_or_else(|_| panic!("request"))
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|_| panic!("runtime"));
    let parts = parts();
    let observed = stack::build::<Full<Bytes>, _>(&parts, noop_upstream());
    let unobserved = stack::build_unobserved::<Full<Bytes>, _>(&parts, noop_upstream());
    eprintln!(
        "pipeline/whole (metrics on): {:.1} allocations per request",
        allocations_per_request(&runtime, observed.clone())
    );
    eprintln!(
        "pipeline/whole (metrics off): {:.1} allocations per request",
        allocations_per_request(&runtime, unobserved.clone())
    );
    c.bench_function("pipeline/whole (metrics on)", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = observed.clone();
            async move { black_box(svc.oneshot(request()).await) }
        })
    });
    // What a running gateway serves: the pipeline in force, loaded once per request from the
    // handle a config reload swaps.
    let current = chat_gateway::reload::Current::new(observed.clone());
    c.bench_function("pipeline/whole (metrics on, reloadable)", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = current.clone();
            async move { black_box(svc.oneshot(request()).await) }
        })
    });
    let many = stack::build::<Full<Bytes>, _>(&parts_with(&overrides()), noop_upstream());
    c.bench_function("pipeline/whole (metrics on, 100 000 overrides)", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = many.clone();
            async move { black_box(svc.oneshot(request()).await) }
        })
    });
    c.bench_function("pipeline/whole (metrics off)", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = unobserved.clone();
            async move { black_box(svc.oneshot(request()).await) }
        })
    });
    traced(c, &runtime);

    // Stage by stage.
    c.bench_function("stage/body_read", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                http_body_util::Limited::new(Full::new(Bytes::from_static(BODY)), 65536)
                    .collect()
                    .await
                    .map(|c| c.to_bytes()),
            )
        })
    });
    c.bench_function("stage/validation", |b| {
        b.iter(|| black_box(update_group_counter::API.validate(black_box(BODY)).is_ok()))
    });
    c.bench_function("stage/validation_parse_only", |b| {
        b.iter(|| {
            black_box(
                chat_gateway::validation::validate_counter(
                    chat_gateway::validation::CounterPayload::Update,
                    black_box(BODY),
                )
                .is_ok(),
            )
        })
    });
    let api = parts.table.route(PATH).unwrap_or_else(|| panic!("allowed"));
    c.bench_function("stage/limit_check", |b| {
        b.iter(|| black_box(parts.limiter.check(&api, Some(black_box("live-1"))).ready()))
    });
    let base: Arc<str> = Arc::from("https://127.0.0.1:18443");
    c.bench_function("stage/signing", |b| {
        b.iter(|| {
            let current = parts.credentials.current();
            black_box(upstream_uri(&base, PATH, current.query_prefix()))
        })
    });
    c.bench_function("stage/metrics", |b| {
        b.iter(|| {
            let m = api.metrics(&parts.metrics);
            m.request(Outcome::Ok, black_box(0.001), black_box(0.00001));
            m.upstream_duration(black_box(0.001));
            api.metrics(&parts.metrics).upstream_error_code(Some(0));
        })
    });
}

/// The whole pipeline with tracing on: every request sampled, and none (ratio 0: what most
/// requests cost at a small ratio). Spans go to a port nothing listens on: the export fails
/// at once and the queue, full, drops what comes next, so this measures what a request pays
/// (its spans made, ended and offered to the queue), not the export.
fn traced(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| panic!("port"));
    for (name, ratio) in [("every request sampled", "1"), ("none sampled", "0")] {
        let _entered = runtime.enter();
        let parts = parts_with(&format!(
            "[tracing]\notlp_endpoint = \"http://{closed}\"\nsample_ratio = {ratio}\n"
        ));
        let svc = stack::build::<Full<Bytes>, _>(&parts, noop_upstream());
        eprintln!(
            "pipeline/whole (traced, {name}): {:.1} allocations per request",
            allocations_per_request(runtime, svc.clone())
        );
        c.bench_function(&format!("pipeline/whole (traced, {name})"), |b| {
            b.to_async(runtime).iter(|| {
                let svc = svc.clone();
                async move { black_box(svc.oneshot(request()).await) }
            })
        });
    }
}

/// Heap allocations per request through `svc`, the request's own construction excluded, after
/// a warm-up (metric series and pooled state are made on first use).
fn allocations_per_request<S>(runtime: &tokio::runtime::Runtime, svc: S) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = GatewayResponse> + Clone,
    S::Error: std::fmt::Debug,
{
    const N: u64 = 10_000;
    runtime.block_on(async {
        for _ in 0..100 {
            let _ = svc.clone().oneshot(request()).await;
        }
        let mut total = 0;
        for _ in 0..N {
            let req = request();
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let answer = svc.clone().oneshot(req).await;
            drop(black_box(answer));
            total += ALLOCATIONS.load(Ordering::Relaxed) - before;
        }
        total as f64 / N as f64
    })
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
