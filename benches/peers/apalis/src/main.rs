//! apalis 1.0 + apalis-postgres with their defaults: 20,000 no-op jobs
//! pushed with `push_bulk`, run by one worker with concurrency 2, timed from
//! the first push until every job is recorded `Done` (as `pg_bench` times
//! async-query: until every record is `COMPLETE`).
//!
//! Creates a scratch database next to the one in
//! `ASYNC_QUERY_TEST_POSTGRES_URL` and drops it after.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{PgConnectOptions, PgPool, PostgresStorage};

const JOBS: usize = 20_000;
const BATCH: usize = 1_000;

async fn job(_n: u64, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Jobs whose completion apalis has recorded.
async fn count_done(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .fetch_one(pool)
        .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("ASYNC_QUERY_TEST_POSTGRES_URL")
        .map_err(|_| "set ASYNC_QUERY_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/test")?;
    let admin: PgConnectOptions = url.parse()?;
    let name = format!("apalis_bench_{}", std::process::id());
    let server = PgPool::connect_with(admin.clone()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&server).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&server).await?;
    let pool = PgPool::connect_with(admin.clone().database(&name)).await?;
    PostgresStorage::setup(&pool).await?;

    let mut backend = PostgresStorage::new(&pool);
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for batch in 0..JOBS / BATCH {
        let first = (batch * BATCH) as u64;
        backend.push_bulk((first..first + BATCH as u64).collect()).await?;
    }
    let pushed = start.elapsed();
    let worker = WorkerBuilder::new("peer-bench")
        .backend(backend)
        .data(Arc::clone(&done))
        .concurrency(2)
        .build(job);
    let running = tokio::spawn(worker.run());
    loop {
        if done.load(Ordering::Relaxed) >= JOBS && count_done(&pool).await? >= JOBS as i64 {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err("apalis did not finish 20,000 jobs in 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    running.abort();
    println!(
        "apalis 1.0 bulk (push_bulk, concurrency 2): {JOBS} jobs in {elapsed:?} (pushing took {pushed:?}): {:.0} jobs/s",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&server).await?;
    Ok(())
}
