//! Graceful shutdown.

mod common;

use std::time::Duration;

use async_query::{Error, QueryStatus, SubmitRequest};
use common::*;

#[tokio::test(start_paused = true)]
async fn shutdown_lets_short_jobs_finish_and_stops_the_rest() {
    let h = harness(async_query::Config {
        pool_size: 3,
        ..config()
    });
    let zero = |q: &str| SubmitRequest::query(q).with_async_after(Duration::ZERO);
    let short = submit(&h.service, zero("sleep 2000")).await;
    let long = h.service.submit(&alice(), zero("block")).await.unwrap();
    let start = tokio::time::Instant::now();
    let report = h.service.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "waits out the grace period for the long job"
    );
    assert_eq!(report.stopped, vec![long.id]);

    let short = h.service.get(&alice(), short.id).await.unwrap();
    assert_eq!(short.status, QueryStatus::Complete);
    let long = h.service.get(&alice(), long.id).await.unwrap();
    assert_eq!(long.status, QueryStatus::TimedOut);
    assert!(long.result.unwrap().message.unwrap().contains("shut down"));
    assert!(matches!(
        h.service.submit(&alice(), zero("x")).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_as_soon_as_the_last_job_finishes() {
    let h = harness(config());
    let job = submit(
        &h.service,
        SubmitRequest::query("sleep 1500").with_async_after(Duration::ZERO),
    )
    .await;
    let start = tokio::time::Instant::now();
    let report = h.service.shutdown(Duration::from_secs(60)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert!(report.stopped.is_empty());
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::Complete
    );
}

#[tokio::test(start_paused = true)]
async fn queued_jobs_stay_queued_for_the_next_start() {
    let h = harness(async_query::Config {
        pool_size: 1,
        ..config()
    });
    let zero = |q: &str| SubmitRequest::query(q).with_async_after(Duration::ZERO);
    h.service.submit(&alice(), zero("sleep 100")).await.unwrap();
    let queued = h.service.submit(&alice(), zero("later")).await.unwrap();
    h.service.shutdown(Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        h.service.get(&alice(), queued.id).await.unwrap().status,
        QueryStatus::Queued
    );
    assert_eq!(
        h.executor.started(),
        vec!["sleep 100".to_string()],
        "nothing new starts after shutdown began"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_everything_even_when_the_store_fails() {
    use async_query::testing::{FaultyDao, ScriptedExecutor};
    use std::sync::Arc;
    let (dao, faults) = FaultyDao::new(Arc::new(async_query::MemoryDao::new()));
    let service = async_query::AsyncQueryService::builder()
        .config(config())
        .dao(Arc::new(dao))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    service
        .submit(
            &alice(),
            SubmitRequest::query("block").with_async_after(Duration::ZERO),
        )
        .await
        .unwrap();
    faults.fail_always(true);
    let err = service.shutdown(Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, Error::Dao { .. }), "{err:?}");
    faults.fail_always(false);
    assert!(matches!(
        service.submit(&alice(), SubmitRequest::query("x")).await,
        Err(Error::ShuttingDown)
    ));
}

/// One slot, `claim_batch` 4, three 1 s jobs: one runs, two are claimed
/// ahead.
async fn three_claimed_ahead() -> (Harness, Vec<async_query::AsyncQuery>) {
    let h = harness(async_query::Config {
        pool_size: 1,
        claim_batch: 4,
        ..config()
    });
    let requests = (0..3).map(|_| SubmitRequest::query("sleep 1000")).collect();
    let jobs = h.service.submit_many(&alice(), requests).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    (h, jobs)
}

#[tokio::test(start_paused = true)]
async fn jobs_claimed_ahead_run_within_the_grace_period() {
    let (h, jobs) = three_claimed_ahead().await;
    for job in &jobs {
        let claimed = h.service.get(&alice(), job.id).await.unwrap();
        assert_eq!(claimed.status, QueryStatus::Processing, "claimed at once");
    }
    let report = h.service.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(report.stopped.is_empty(), "{:?}", report.stopped);
    for job in &jobs {
        let done = h.service.get(&alice(), job.id).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
    assert_eq!(h.executor.max_running(), 1);
    assert!(matches!(
        h.service
            .submit_many(&alice(), vec![SubmitRequest::query("x")])
            .await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn jobs_claimed_ahead_that_the_grace_period_cannot_fit_end_timedout() {
    let (h, jobs) = three_claimed_ahead().await;
    let report = h
        .service
        .shutdown(Duration::from_millis(1500))
        .await
        .unwrap();
    // The first ran, the second was running at the deadline, the third
    // never started: both end TIMEDOUT, none stays PROCESSING.
    let mut statuses = Vec::new();
    for job in &jobs {
        statuses.push(h.service.get(&alice(), job.id).await.unwrap().status);
    }
    assert_eq!(
        statuses,
        [
            QueryStatus::Complete,
            QueryStatus::TimedOut,
            QueryStatus::TimedOut
        ]
    );
    let mut stopped = report.stopped.clone();
    stopped.sort();
    let mut expected = vec![jobs[1].id, jobs[2].id];
    expected.sort();
    assert_eq!(stopped, expected);
    assert_eq!(h.executor.started(), ["sleep 1000", "sleep 1000"]);
}
