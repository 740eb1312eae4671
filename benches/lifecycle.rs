//! Lifecycle overhead against bare Tokio baselines measured in the same run.
//!
//! - `inline`: one no-op query submitted and answered inline, against
//!   `tokio::spawn` + oneshot.
//! - `throughput`: 100,000 no-op jobs submitted detached and awaited, against
//!   spawn + oneshot, and spawn + a `Mutex<HashMap>` record with two status
//!   updates.
//!
//! Besides criterion's figures, the bench prints per-operation p50/p99 of the
//! inline path and of the baseline (criterion reports sample means).
//!
//! `cargo bench --bench lifecycle`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, Principal, QueryExecutor,
    QueryOutput, QueryStatus, SubmitRequest,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const JOBS: usize = 100_000;

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

async fn spawn_oneshot() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(());
    });
    rx.await.expect("oneshot");
}

async fn submit_inline(service: &AsyncQueryService, principal: &Principal) {
    let job = service
        .submit(principal, SubmitRequest::query("noop"))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Complete);
}

fn inline(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("inline");
    group.bench_function("baseline: spawn + oneshot", |b| {
        b.to_async(&rt).iter(spawn_oneshot)
    });
    group.bench_function("submit -> COMPLETE inline", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            // A fresh service per sample keeps the in-memory store small.
            let service = service(1_000);
            let alice = Principal::new("alice");
            let start = Instant::now();
            for _ in 0..iters {
                submit_inline(&service, &alice).await;
            }
            start.elapsed()
        })
    });
    group.finish();

    // Per-operation percentiles, which criterion does not report.
    rt.block_on(async {
        let ops = 50_000;
        let mut base = Vec::with_capacity(ops);
        for _ in 0..ops {
            let t = Instant::now();
            spawn_oneshot().await;
            base.push(t.elapsed());
        }
        let service = service(1_000);
        let alice = Principal::new("alice");
        let mut ours = Vec::with_capacity(ops);
        for _ in 0..ops {
            let t = Instant::now();
            submit_inline(&service, &alice).await;
            ours.push(t.elapsed());
        }
        let (b50, b99) = percentiles(&mut base);
        let (o50, o99) = percentiles(&mut ours);
        println!(
            "inline percentiles over {ops} ops: baseline p50 {b50:?} p99 {b99:?}; submit p50 {o50:?} p99 {o99:?}; p50 ratio {:.2}x",
            o50.as_secs_f64() / b50.as_secs_f64()
        );
    });
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

async fn many_spawn_oneshot(n: usize) {
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

async fn many_spawn_with_records(n: usize) {
    let records: Arc<Mutex<HashMap<u64, QueryStatus>>> = Arc::default();
    let mut waits = Vec::with_capacity(n);
    for i in 0..n as u64 {
        records.lock().expect("lock").insert(i, QueryStatus::Queued);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let records = Arc::clone(&records);
        tokio::spawn(async move {
            records
                .lock()
                .expect("lock")
                .insert(i, QueryStatus::Processing);
            records
                .lock()
                .expect("lock")
                .insert(i, QueryStatus::Complete);
            let _ = tx.send(());
        });
        waits.push(rx);
    }
    for rx in waits {
        rx.await.expect("oneshot");
    }
}

async fn many_jobs(n: usize) {
    let service = service(n);
    let alice = Principal::new("alice");
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let request = SubmitRequest::query("noop").with_async_after(Duration::ZERO);
        ids.push(service.submit(&alice, request).await.expect("submit").id);
    }
    for id in ids {
        let job = service
            .wait(&alice, id, Duration::from_secs(60))
            .await
            .expect("wait");
        assert_eq!(job.status, QueryStatus::Complete);
    }
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("throughput");
    group.sample_size(10);
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("baseline: spawn + oneshot", |b| {
        b.to_async(&rt).iter(|| many_spawn_oneshot(JOBS))
    });
    group.bench_function("baseline: spawn + Mutex<HashMap> record, 2 updates", |b| {
        b.to_async(&rt).iter(|| many_spawn_with_records(JOBS))
    });
    group.bench_function("service: submit detached + wait", |b| {
        b.to_async(&rt).iter(|| many_jobs(JOBS))
    });
    group.finish();
}

criterion_group!(benches, inline, throughput);
criterion_main!(benches);
