//! Lifecycle overhead as a web handler sees it: every loop runs inside a
//! task spawned on a 2-worker runtime, next to two floors measured in the
//! same run:
//!
//! - spawn + oneshot: `tokio::spawn` of a task that answers on a oneshot;
//! - spawn + record: the same, plus a `Mutex<HashMap>` record (keyed by a
//!   counter, holding the status, the query text and the owner's name)
//!   inserted `QUEUED` and updated twice (`PROCESSING`, `COMPLETE`): the
//!   least a job system can do.
//!
//! Cases:
//!
//! - `inline`: one no-op query submitted and answered inline (per-operation
//!   p50 / p99 and ratios to the floors);
//! - `detached`: 200,000 no-op jobs submitted with async-after 0, then
//!   awaited one by one (jobs/s and ratio to the floors);
//! - `submit_many`: the same 200,000 jobs submitted in batches of 1,000.
//!
//! `cargo bench --bench lifecycle` prints one table per case. The old
//! `block_on`-thread figures (where every operation, the floors' too,
//! includes a cross-thread wake-up of the parked main thread) are printed
//! with `-- --block-on`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, Principal, QueryExecutor,
    QueryOutput, QueryStatus, SubmitRequest,
};

/// Operations per inline sample; several samples give a median.
const INLINE_OPS: usize = 50_000;
const JOBS: usize = 200_000;
const BATCH: usize = 1_000;
const ROUNDS: usize = 5;

struct Noop;

#[async_trait::async_trait]
impl QueryExecutor for Noop {
    async fn execute(&self, _: &AsyncQuery, _: ExecutionContext) -> Result<QueryOutput, BoxError> {
        Ok(QueryOutput::body("[]", 0))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn service(max_queued: usize) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(Config {
            max_queued,
            ..Config::default()
        })
        .executor(Arc::new(Noop))
        .build()
        .expect("service")
}

/// The floor's job record: what any job system must own per job.
struct Record {
    status: QueryStatus,
    query: String,
    owner: String,
}

type Records = Arc<Mutex<HashMap<u64, Record>>>;

fn queued(records: &Records, i: u64) {
    let record = Record {
        status: QueryStatus::Queued,
        query: "noop".to_owned(),
        owner: "alice".to_owned(),
    };
    records.lock().expect("lock").insert(i, record);
}

/// The two status updates a worker makes.
fn run(records: &Records, i: u64) {
    for status in [QueryStatus::Processing, QueryStatus::Complete] {
        if let Some(record) = records.lock().expect("lock").get_mut(&i) {
            record.status = status;
        }
    }
}

/// Floor 1: spawn a task that answers on a oneshot.
async fn spawn_oneshot() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(());
    });
    rx.await.expect("oneshot");
}

/// Floor 2: spawn + oneshot, and a record inserted and updated twice.
async fn spawn_record(records: &Records, i: u64) {
    queued(records, i);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = Arc::clone(records);
    tokio::spawn(async move {
        run(&worker, i);
        let _ = tx.send(());
    });
    rx.await.expect("oneshot");
    let records = records.lock().expect("lock");
    let done = records
        .get(&i)
        .map(|r| (r.status, r.query.len() + r.owner.len()));
    assert_eq!(done, Some((QueryStatus::Complete, 9)));
}

async fn submit_inline(service: &AsyncQueryService, principal: &Principal) {
    let job = service
        .submit(principal, SubmitRequest::query("noop"))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Complete);
}

/// Runs `work` where a handler would: in a task spawned on `rt`.
fn in_task<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(async { tokio::spawn(work).await.expect("task") })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

/// p50 and p99 in µs of `ops` calls of `op`, each timed alone.
async fn latencies<F, Fut>(ops: usize, mut op: F) -> (f64, f64)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(ops);
    for i in 0..ops {
        let t = Instant::now();
        op(i as u64).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

fn inline(rt: &tokio::runtime::Runtime) {
    let (mut oneshot, mut record, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    let mut p99s = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (p50, p99) = in_task(rt, latencies(INLINE_OPS, |_| spawn_oneshot()));
        oneshot.push(p50);
        p99s.0.push(p99);
        let (p50, p99) = in_task(rt, async {
            let records = Records::default();
            latencies(INLINE_OPS, |i| {
                let records = Arc::clone(&records);
                async move { spawn_record(&records, i).await }
            })
            .await
        });
        record.push(p50);
        p99s.1.push(p99);
        let (p50, p99) = in_task(rt, async {
            // A fresh service per round keeps the in-memory store small.
            let service = service(1_000);
            let alice = Principal::new("alice");
            latencies(INLINE_OPS, |_| submit_inline(&service, &alice)).await
        });
        ours.push(p50);
        p99s.2.push(p99);
    }
    let (oneshot, record, ours) = (median(oneshot), median(record), median(ours));
    println!(
        "\n### inline: submit -> COMPLETE returned by submit ({ROUNDS} rounds x {INLINE_OPS} ops, medians)\n"
    );
    println!("| case | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| floor: spawn + oneshot | {oneshot:.2} µs | {:.2} µs |",
        median(p99s.0)
    );
    println!(
        "| floor: spawn + record, 2 updates | {record:.2} µs | {:.2} µs |",
        median(p99s.1)
    );
    println!(
        "| `submit` -> COMPLETE inline | {ours:.2} µs | {:.2} µs |",
        median(p99s.2)
    );
    println!(
        "| **ratio** to spawn + record (to spawn + oneshot) | **{:.2}x** ({:.2}x) | |",
        ours / record,
        ours / oneshot
    );
}

/// Floor: `n` spawned tasks answering on oneshots, awaited afterwards.
async fn many_oneshots(n: usize) {
    let mut waits = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(());
        });
        waits.push(rx);
    }
    for rx in waits {
        rx.await.expect("oneshot");
    }
}

/// Floor: as above, with a record inserted and updated twice per task.
async fn many_records(n: usize) {
    let records = Records::default();
    let mut waits = Vec::with_capacity(n);
    for i in 0..n as u64 {
        queued(&records, i);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let records = Arc::clone(&records);
        tokio::spawn(async move {
            run(&records, i);
            let _ = tx.send(());
        });
        waits.push(rx);
    }
    for rx in waits {
        rx.await.expect("oneshot");
    }
}

async fn await_all(service: &AsyncQueryService, alice: &Principal, ids: Vec<uuid::Uuid>) {
    for id in ids {
        let job = service
            .wait(alice, id, Duration::from_secs(60))
            .await
            .expect("wait");
        assert_eq!(job.status, QueryStatus::Complete);
    }
}

/// `n` jobs submitted one by one with async-after 0, then awaited.
async fn detached(n: usize) {
    let service = service(n);
    let alice = Principal::new("alice");
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let request = SubmitRequest::query("noop").with_async_after(Duration::ZERO);
        ids.push(service.submit(&alice, request).await.expect("submit").id);
    }
    await_all(&service, &alice, ids).await;
}

/// `n` jobs submitted in batches of [`BATCH`], then awaited.
async fn submitted_many(n: usize) {
    let service = service(n);
    let alice = Principal::new("alice");
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n / BATCH {
        let requests = (0..BATCH).map(|_| SubmitRequest::query("noop")).collect();
        let jobs = service
            .submit_many(&alice, requests)
            .await
            .expect("submit_many");
        ids.extend(jobs.into_iter().map(|job| job.id));
    }
    await_all(&service, &alice, ids).await;
}

/// Jobs per second of `work(JOBS)` in a spawned task, median of the rounds.
fn rate<Fut: Future<Output = ()> + Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: fn(usize) -> Fut,
) -> f64 {
    let rates = (0..ROUNDS)
        .map(|_| {
            in_task(rt, async move {
                let t = Instant::now();
                work(JOBS).await;
                JOBS as f64 / t.elapsed().as_secs_f64()
            })
        })
        .collect();
    median(rates)
}

fn throughput(rt: &tokio::runtime::Runtime) {
    let oneshot = rate(rt, many_oneshots);
    let record = rate(rt, many_records);
    let one_by_one = rate(rt, detached);
    let many = rate(rt, submitted_many);
    println!("\n### throughput: {JOBS} no-op jobs, then awaited ({ROUNDS} rounds, medians)\n");
    println!("| case | jobs/s | ratio to spawn + record |");
    println!("|---|---|---|");
    println!(
        "| floor: spawn + oneshot | {:.0} k | {:.2} |",
        oneshot / 1e3,
        oneshot / record
    );
    println!(
        "| floor: spawn + record, 2 updates | {:.0} k | 1.00 |",
        record / 1e3
    );
    println!(
        "| `submit` (async-after 0), one by one | {:.0} k | **{:.2}** |",
        one_by_one / 1e3,
        one_by_one / record
    );
    println!(
        "| `submit_many`, batches of {BATCH} | {:.0} k | **{:.2}** |",
        many / 1e3,
        many / record
    );
}

/// The old figures: loops on the `block_on` thread.
fn block_on_figures(rt: &tokio::runtime::Runtime) {
    let (base, ours) = rt.block_on(async {
        let base = latencies(INLINE_OPS, |_| spawn_oneshot()).await;
        let service = service(1_000);
        let alice = Principal::new("alice");
        let ours = latencies(INLINE_OPS, |_| submit_inline(&service, &alice)).await;
        (base, ours)
    });
    println!("\n### inline on the block_on thread (old figures)\n");
    println!("| case | p50 | p99 |");
    println!("|---|---|---|");
    println!("| spawn + oneshot | {:.2} µs | {:.2} µs |", base.0, base.1);
    println!(
        "| `submit` -> COMPLETE inline | {:.2} µs | {:.2} µs |",
        ours.0, ours.1
    );
    println!("| ratio | {:.2}x | |", ours.0 / base.0);
}

/// One case of `n` jobs, run once in a spawned task (for a profiler).
fn profile(rt: &tokio::runtime::Runtime, case: &str, n: usize) {
    match case {
        "inline" => in_task(rt, async move {
            let service = service(1_000);
            let alice = Principal::new("alice");
            for _ in 0..n {
                submit_inline(&service, &alice).await;
            }
        }),
        "detached" => in_task(rt, detached(n)),
        "many" => in_task(rt, submitted_many(n)),
        "floor" => in_task(rt, async move {
            let records = Records::default();
            for i in 0..n as u64 {
                spawn_record(&records, i).await;
            }
        }),
        other => panic!("--profile takes inline, detached, many or floor, not {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs benches with `--test`: a smoke run only.
    if args.iter().any(|a| a == "--test") {
        let rt = runtime();
        in_task(&rt, async {
            let service = service(100);
            submit_inline(&service, &Principal::new("alice")).await;
            submitted_many(BATCH).await;
        });
        return;
    }
    // With `--features metrics`, `-- --prometheus` installs the exporter's
    // recorder, as the SQL Lab does (without it, the facade's calls find no
    // recorder).
    if args.iter().any(|a| a == "--prometheus") {
        #[cfg(feature = "metrics")]
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder");
        #[cfg(not(feature = "metrics"))]
        panic!("--prometheus needs --features metrics");
    }
    // `-- --profile inline|detached|many|floor N`: one case, N jobs, once, in a
    // spawned task, for `valgrind --tool=callgrind` (see docs/BENCHMARKS.md).
    if let Some(at) = args.iter().position(|a| a == "--profile") {
        let case = args.get(at + 1).map_or("inline", String::as_str);
        let n = args
            .get(at + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        profile(&runtime(), case, n);
        return;
    }
    let rt = runtime();
    inline(&rt);
    throughput(&rt);
    if args.iter().any(|a| a == "--block-on") {
        block_on_figures(&rt);
    }
}
