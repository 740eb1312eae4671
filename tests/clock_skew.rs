//! Instances whose machines' clocks are minutes apart share one PostgreSQL
//! job store (needs `ASYNC_QUERY_TEST_POSTGRES_URL`). Each service sets
//! its clock by the database's, so leases written by one instance are
//! judged correctly by another: live jobs are never timed out, and a dead
//! instance's jobs are recovered within a lease and a sweep.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_query::testing::ScriptedExecutor;
use async_query::{AsyncApiDao, AsyncQueryService, Config, QueryStatus, SubmitRequest};
use chrono::{TimeDelta, Utc};
use common::*;

/// The lease of the recovery test: recovery takes one.
const LEASE: Duration = Duration::from_secs(2);
/// The lease of the live-jobs test. Longer: renewals that stall for over
/// two thirds of a lease let a live lease lapse, which is right but not
/// what this test is about (a 2 s lease lapsed once in CI on a busy
/// machine, 5.5 s into the run).
const LIVE_LEASE: Duration = Duration::from_secs(5);
const SWEEP: Duration = Duration::from_millis(300);

/// An instance of its own id whose machine's clock is `skew` off.
fn instance(
    dao: &Arc<dyn AsyncApiDao>,
    pool_size: usize,
    lease: Duration,
    skew: TimeDelta,
) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(Config {
            instance_id: uuid::Uuid::new_v4(),
            pool_size,
            lease,
            cleaner_interval: SWEEP,
            cancellation_check_interval: SWEEP,
            poll_interval: Duration::from_millis(50),
            ..Config::default()
        })
        .dao(Arc::clone(dao))
        .executor(Arc::new(ScriptedExecutor::new()))
        .clock_skew(skew)
        .build()
        .expect("build an instance")
}

/// Waits until job `id` runs.
async fn running(service: &AsyncQueryService, id: uuid::Uuid) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = service.get(&alice(), id).await.unwrap();
        match job.status {
            QueryStatus::Processing => return,
            QueryStatus::Queued if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => panic!("the job never ran: {job:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_reports_its_clock() {
    let Some(db) = pg::fresh().await else { return };
    let first = db.dao.now().await.unwrap().expect("PostgreSQL has a clock");
    let second = db.dao.now().await.unwrap().expect("PostgreSQL has a clock");
    assert!(second >= first, "{first} then {second}");
    // The server runs on this machine: its clock is ours.
    let gap = (first - Utc::now()).abs();
    assert!(gap < TimeDelta::seconds(5), "{gap}");
    db.drop_db().await;
}

/// A runs jobs for two leases with its clock 5 minutes slow; B's
/// cleaner, 5 minutes fast, sweeps all the while. With leases written on A's
/// clock and judged on B's, B would see them 10 minutes expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_jobs_of_an_instance_with_a_slow_clock_are_not_timed_out() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let slow = instance(&dao, 2, LIVE_LEASE, TimeDelta::minutes(-5));
    let fast = instance(&dao, 0, LIVE_LEASE, TimeDelta::minutes(5));
    let run = format!("sleep {}", (LIVE_LEASE * 2).as_millis());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let request = SubmitRequest::query(run.as_str()).with_async_after(Duration::ZERO);
        let job = slow.submit(&alice(), request).await.unwrap();
        // Written on the database's clock, not 5 minutes ago.
        let written = (job.created_on - Utc::now()).abs();
        assert!(
            written < TimeDelta::seconds(5),
            "created_on is {written} off"
        );
        ids.push(job.id);
    }
    for id in ids {
        let ended = fast
            .wait(&alice(), id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(ended.status, QueryStatus::Complete, "{ended:?}");
    }
    let _ = slow.shutdown(Duration::from_secs(1)).await;
    let _ = fast.shutdown(Duration::from_secs(1)).await;
    db.drop_db().await;
}

/// A, 5 minutes fast, dies with two jobs running; B, 5 minutes slow,
/// recovers them. On A's clock their leases would last 10 more minutes for
/// B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_with_a_fast_clock_is_recovered_within_a_lease_and_a_sweep() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let fast = instance(&dao, 2, LEASE, TimeDelta::minutes(5));
    let slow = instance(&dao, 0, LEASE, TimeDelta::minutes(-5));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let request = SubmitRequest::query("block").with_async_after(Duration::ZERO);
        ids.push(fast.submit(&alice(), request).await.unwrap().id);
    }
    for &id in &ids {
        running(&fast, id).await;
    }
    // As a crash: every task stops, nothing more is written.
    drop(fast);
    let died = Instant::now();
    for id in ids {
        let ended = slow
            .wait(&alice(), id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(ended.status, QueryStatus::TimedOut, "{ended:?}");
    }
    let took = died.elapsed();
    println!(
        "a dead instance's jobs were recovered {took:?} after it died (lease {LEASE:?}, sweep {SWEEP:?})"
    );
    // A lease and a sweep, and a second for two busy cores.
    assert!(
        took <= LEASE + SWEEP + Duration::from_secs(1),
        "recovery took {took:?}"
    );
    let _ = slow.shutdown(Duration::from_secs(1)).await;
    db.drop_db().await;
}
