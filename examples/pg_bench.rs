//! End-to-end PostgreSQL figures against a raw sqlx baseline in the same run.
//!
//! ```text
//! ASYNC_QUERY_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release --example pg_bench --features postgres
//! ```
//!
//! Creates a scratch database next to the one in the URL and drops it after.
//! `PG_BENCH_QUICK=1` runs only the `submit_many` bursts;
//! `PG_BENCH_MAX_RUNNING=n` sets `Config::max_running_per_principal` for
//! them.
//!
//! Reports: jobs/s for 20,000 no-op jobs on one instance with 2 worker slots
//! (bulk: all submitted detached, then awaited; one by one: each submitted and
//! awaited inline), and submit → completion-seen latency over 1,000
//! sequential jobs, next to the bare `INSERT` + `UPDATE` round trips a job
//! needs, on the same table.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_query::dao::{AsyncApiDao, Claim, PostgresDao};
use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, Principal, QueryExecutor,
    QueryOutput, QueryStatus, SubmitRequest,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

const JOBS: usize = 20_000;
const LATENCY_JOBS: usize = 1_000;

struct Noop;

#[async_trait::async_trait]
impl QueryExecutor for Noop {
    async fn execute(&self, _: &AsyncQuery, _: ExecutionContext) -> Result<QueryOutput, BoxError> {
        Ok(QueryOutput::body("[]", 0))
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: p50 {:?}  p99 {:?}  max {:?}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

/// The bare round trips one job needs: insert it, mark it complete.
async fn bare_job(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO async_query (id, kind, query, query_type, principal_name, principal_roles, \
         status, async_after_ms, max_run_time_ms, created_on, updated_on) \
         VALUES ($1, '{\"type\":\"query\"}', 'noop', '', 'alice', '[]', 'PROCESSING', 0, 0, 0, 0)",
    )
    .bind(id)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE async_query SET status = 'COMPLETE', result = '[]' WHERE id = $1 AND status = 'PROCESSING'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The most 2 slots can do when nothing is claimed ahead: each DAO call
/// writes the 2 finished jobs and claims the next 2, one commit per call,
/// with no runtime around it. 20,000 queued jobs, then deleted.
async fn two_slot_ceiling(dao: &PostgresDao) -> Result<f64, Box<dyn std::error::Error>> {
    use async_query::dao::StatusChange;
    use async_query::model::Lease;
    let now = chrono::Utc::now();
    let jobs: Vec<AsyncQuery> = (0..JOBS)
        .map(|_| async_query::testing::sample_job(now))
        .collect();
    for chunk in jobs.chunks(1_000) {
        dao.create_many(chunk).await?;
    }
    let lease = Lease {
        owner: uuid::Uuid::new_v4(),
        expires_at: now,
    };
    let t = Instant::now();
    let mut running = dao.claim(&Claim::new(lease.clone(), 2, now)).await?;
    while !running.is_empty() {
        let done: Vec<_> = running
            .iter()
            .map(|job| {
                let change = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, now)
                    .with_result(async_query::QueryResult::message(now, "[]"));
                (job.id, change)
            })
            .collect();
        running = dao
            .update_and_claim(&done, &Claim::new(lease.clone(), 2, now))
            .await?
            .1;
    }
    let rate = JOBS as f64 / t.elapsed().as_secs_f64();
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|job| job.id).collect();
    dao.delete(&ids).await?;
    Ok(rate)
}

async fn service(
    dao: &PostgresDao,
    claim_batch: usize,
) -> Result<AsyncQueryService, Box<dyn std::error::Error>> {
    Ok(AsyncQueryService::builder()
        .config(Config {
            pool_size: 2,
            max_queued: JOBS,
            claim_batch,
            event_capacity: 4 * JOBS,
            // `PG_BENCH_MAX_RUNNING=n`: claims keep the principal within n
            // running jobs (`Config::max_running_per_principal`).
            max_running_per_principal: std::env::var("PG_BENCH_MAX_RUNNING")
                .ok()
                .and_then(|v| v.parse().ok()),
            ..Config::default()
        })
        .dao(Arc::new(dao.clone()))
        .executor(Arc::new(Noop))
        .build()?)
}

/// The sequential and one-by-one phases; returns the 2-connection
/// baseline's jobs/s.
async fn sequential_phases(
    pool: &sqlx::PgPool,
    dao: &PostgresDao,
    alice: &Principal,
) -> Result<f64, Box<dyn std::error::Error>> {
    // Baseline: the round trips a job needs, bare: INSERT it, UPDATE it done.
    let mut base = Vec::with_capacity(LATENCY_JOBS);
    for _ in 0..LATENCY_JOBS {
        let t = Instant::now();
        bare_job(pool).await?;
        base.push(t.elapsed());
    }
    let base_total: Duration = base.iter().sum();
    report("baseline INSERT + UPDATE (sequential)", base.clone());
    println!(
        "baseline sequential: {:.0} jobs/s",
        LATENCY_JOBS as f64 / base_total.as_secs_f64()
    );
    // Baseline throughput with 2 concurrent connections, as 2 workers.
    let t = Instant::now();
    let halves = (0..2).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..JOBS / 2 {
                bare_job(&pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        })
    });
    for half in futures::future::join_all(halves).await {
        half??;
    }
    let base_rate = JOBS as f64 / t.elapsed().as_secs_f64();
    println!("baseline 2 connections: {base_rate:.0} jobs/s");
    let ceiling = two_slot_ceiling(dao).await?;
    println!(
        "floor for 2 slots that claim nothing ahead (bare update_and_claim loop, 2 finished + 2 claimed per call): {ceiling:.0} jobs/s"
    );

    // Sequential submit -> completion seen (inline path).
    let svc = service(dao, 1).await?;
    let mut ours = Vec::with_capacity(LATENCY_JOBS);
    for _ in 0..LATENCY_JOBS {
        let t = Instant::now();
        let job = svc.submit(alice, SubmitRequest::query("noop")).await?;
        assert_eq!(job.status, QueryStatus::Complete);
        ours.push(t.elapsed());
    }
    let ours_total: Duration = ours.iter().sum();
    report("service submit -> COMPLETE (sequential)", ours.clone());
    println!(
        "service one by one: {:.0} jobs/s",
        LATENCY_JOBS as f64 / ours_total.as_secs_f64()
    );
    let mut b = base.clone();
    b.sort();
    let mut o = ours.clone();
    o.sort();
    println!(
        "latency ratio p50 {:.2}x  p99 {:.2}x",
        percentile(&o, 0.5).as_secs_f64() / percentile(&b, 0.5).as_secs_f64(),
        percentile(&o, 0.99).as_secs_f64() / percentile(&b, 0.99).as_secs_f64()
    );

    // Bulk: submit all detached, then await all.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let request = SubmitRequest::query("noop").with_async_after(Duration::ZERO);
        ids.push(svc.submit(alice, request).await?.id);
    }
    let submitted = t.elapsed();
    for id in &ids {
        let job = svc.wait(alice, *id, Duration::from_secs(120)).await?;
        assert_eq!(job.status, QueryStatus::Complete);
    }
    let bulk = JOBS as f64 / t.elapsed().as_secs_f64();
    println!(
        "service bulk: {JOBS} jobs in {:?} (submitting took {submitted:?}): {bulk:.0} jobs/s, {:.2} of the 2-connection baseline",
        t.elapsed(),
        bulk / base_rate
    );

    svc.shutdown(Duration::from_secs(5)).await?;
    Ok(base_rate)
}

/// An idle worker elsewhere: a submit-only instance and a worker instance
/// (polling every 60 s, so only LISTEN/NOTIFY can start the job quickly).
async fn remote_phase(
    dao: &PostgresDao,
    alice: &Principal,
) -> Result<(), Box<dyn std::error::Error>> {
    let remote = |pool_size| {
        AsyncQueryService::builder()
            .config(Config {
                pool_size,
                poll_interval: Duration::from_secs(60),
                ..Config::default()
            })
            .dao(Arc::new(dao.clone()))
            .executor(Arc::new(Noop))
            .build()
    };
    let submitter = remote(0)?;
    let worker = remote(2)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut remote_latency = Vec::with_capacity(LATENCY_JOBS);
    for _ in 0..LATENCY_JOBS {
        let t = Instant::now();
        let job = submitter
            .submit(alice, SubmitRequest::query("noop"))
            .await?;
        assert_eq!(job.status, QueryStatus::Complete);
        remote_latency.push(t.elapsed());
    }
    report(
        "submit-only instance -> idle worker instance -> COMPLETE seen (sequential)",
        remote_latency,
    );
    drop((submitter, worker));
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("ASYNC_QUERY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = PgConnectOptions::from_str(&url)?;
    let name = format!("async_query_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .connect()
        .await?
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    // `PG_BENCH_ASYNC_COMMIT=1`: this client's sessions commit without
    // waiting for the WAL flush (`synchronous_commit = off`; a server crash
    // can lose the last few hundred ms of status changes, never corrupt).
    let async_commit = std::env::var("PG_BENCH_ASYNC_COMMIT").is_ok_and(|v| v == "1");
    let mut options = admin.clone().database(&name);
    if async_commit {
        options = options.options([("synchronous_commit", "off")]);
        println!("sessions use synchronous_commit = off");
    }
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await?;
    let dao = PostgresDao::from_pool(pool.clone());
    dao.migrate().await?;
    let alice = Principal::new("alice");
    // `PG_BENCH_QUICK=1`: only the `submit_many` bursts.
    let quick = std::env::var("PG_BENCH_QUICK").is_ok_and(|v| v == "1");
    let base_rate = if quick {
        f64::NAN
    } else {
        sequential_phases(&pool, &dao, &alice).await?
    };

    // Bulk through `submit_many` (batches of 1,000, one transaction each),
    // with one claim per job, then with claims of `claim_batch` and batched
    // write-behind of the records. Completion is seen by waiting for the
    // last job, then counting the finished ones in the database.
    for claim_batch in [1, 64, 256] {
        let svc = service(&dao, claim_batch).await?;
        let done_before: i64 =
            sqlx::query_scalar("SELECT count(*) FROM async_query WHERE status = 'COMPLETE'")
                .fetch_one(&pool)
                .await?;
        let t = Instant::now();
        let mut ids = std::collections::HashSet::with_capacity(JOBS);
        let mut last = None;
        for _ in 0..JOBS / 1_000 {
            let batch = (0..1_000).map(|_| SubmitRequest::query("noop")).collect();
            let jobs = svc.submit_many(&alice, batch).await?;
            last = jobs.last().map(|j| j.id);
            ids.extend(jobs.into_iter().map(|j| j.id));
        }
        let submitted = t.elapsed();
        if let Some(last) = last {
            svc.wait(&alice, last, Duration::from_secs(120)).await?;
        }
        loop {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM async_query WHERE status = 'COMPLETE'")
                    .fetch_one(&pool)
                    .await?;
            if (done - done_before) as usize >= JOBS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = t.elapsed();
        let many = JOBS as f64 / elapsed.as_secs_f64();
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM async_query WHERE status = 'COMPLETE' AND id = ANY($1)",
        )
        .bind(ids.iter().copied().collect::<Vec<_>>())
        .fetch_one(&pool)
        .await?;
        assert_eq!(stored as usize, JOBS, "every job COMPLETE in the database");
        println!(
            "service bulk (submit_many, claim_batch {claim_batch}): {JOBS} jobs in {elapsed:?} (submitting took {submitted:?}): {many:.0} jobs/s, {:.2} of the 2-connection baseline",
            many / base_rate
        );
        svc.shutdown(Duration::from_secs(5)).await?;
    }

    if !quick {
        remote_phase(&dao, &alice).await?;
    }
    pool.close().await;
    admin
        .connect()
        .await?
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
