//! Retention that keeps up: two instances on one PostgreSQL database run
//! a sustained stream of no-op jobs with a 1 s retention, and the record
//! count is sampled every second. It must stay bounded.
//!
//! ```text
//! ASYNC_QUERY_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release --example retention_bench --features postgres [-- SECONDS RATE]
//! ```
//!
//! Defaults: 60 s at 5,000 jobs/s (`submit_many` batches of 250 every
//! 50 ms, alternating between the instances); `claim_batch` 64, cleaner
//! every second on both instances.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_query::dao::PostgresDao;
use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, Principal, QueryExecutor,
    QueryOutput, SubmitRequest,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

struct Noop;

#[async_trait::async_trait]
impl QueryExecutor for Noop {
    async fn execute(&self, _: &AsyncQuery, _: ExecutionContext) -> Result<QueryOutput, BoxError> {
        Ok(QueryOutput::body("1", 1))
    }
}

fn instance(dao: &PostgresDao) -> Result<AsyncQueryService, async_query::Error> {
    AsyncQueryService::builder()
        .config(Config {
            pool_size: 2,
            claim_batch: 64,
            max_queued: 1_000_000,
            retention: Duration::from_secs(1),
            cleaner_interval: Duration::from_secs(1),
            instance_id: uuid::Uuid::new_v4(),
            ..Config::default()
        })
        .dao(Arc::new(dao.clone()))
        .executor(Arc::new(Noop))
        .build()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    let rate: u64 = args.next().map_or(Ok(5_000), |a| a.parse())?;
    let url = std::env::var("ASYNC_QUERY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = PgConnectOptions::from_str(&url)?;
    let name = format!("async_query_retention_{}", uuid::Uuid::new_v4().simple());
    admin
        .connect()
        .await?
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(admin.clone().database(&name))
        .await?;
    let dao = PostgresDao::from_pool(pool.clone());
    dao.migrate().await?;
    let instances = [instance(&dao)?, instance(&dao)?];
    let alice = Principal::new("alice");

    let tick = Duration::from_millis(50);
    let per_tick = usize::try_from(rate * tick.as_millis() as u64 / 1000)?;
    let start = Instant::now();
    let mut submitted = 0u64;
    let mut samples: Vec<i64> = Vec::new();
    let mut next_sample = start + Duration::from_secs(1);
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        let batch = (0..per_tick)
            .map(|_| SubmitRequest::query("noop").with_async_after(Duration::ZERO))
            .collect();
        instances[n % 2].submit_many(&alice, batch).await?;
        submitted += per_tick as u64;
        n += 1;
        if Instant::now() >= next_sample {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM async_query")
                .fetch_one(&pool)
                .await?;
            samples.push(count);
            println!(
                "t={:>3} s  records {count:>7}  submitted {submitted}",
                samples.len()
            );
            next_sample += Duration::from_secs(1);
        }
        let due = start + tick * u32::try_from(n)?;
        tokio::time::sleep_until(due.into()).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM async_query WHERE status IN ('QUEUED', 'PROCESSING')",
    )
    .fetch_one(&pool)
    .await?;
    let max = samples.iter().copied().max().unwrap_or(0);
    let last_third = &samples[samples.len() * 2 / 3..];
    println!(
        "submitted {submitted} jobs in {elapsed:.1} s ({:.0} jobs/s); unfinished at the end {unfinished}",
        submitted as f64 / elapsed
    );
    println!(
        "records: max {max}, median of the last third {}, last {}",
        {
            let mut v = last_third.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        },
        samples.last().copied().unwrap_or(0)
    );
    for service in instances {
        let _ = service.shutdown(Duration::from_secs(5)).await;
    }
    pool.close().await;
    admin
        .connect()
        .await?
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
