//! Retries, opt-in: transient executor errors and jobs of dead instances
//! get further attempts with backoff; everything else ends as in Elide.
//! The conformance area `dao_retries` checks the store's part on every
//! back-end; these tests check what a user sees, on the paused clock.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{
    AsyncApiDao, AsyncQuery, AsyncQueryService, Config, ExportFormat, MemoryDao, QueryStatus,
    ResultBody, RetryPolicy, SubmitRequest,
};
use common::*;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

fn retrying(attempts: u32) -> Config {
    Config {
        retry: RetryPolicy::attempts(attempts).with_backoff(SECOND, 10 * SECOND),
        ..config()
    }
}

fn detached(query: &str) -> SubmitRequest {
    SubmitRequest::query(query).with_async_after(Duration::ZERO)
}

fn body(job: &AsyncQuery) -> String {
    match job.result.as_ref().map(|r| &r.body) {
        Some(ResultBody::Inline(body)) => body.to_string(),
        other => panic!("no inline body: {other:?}"),
    }
}

fn message(job: &AsyncQuery) -> String {
    let message = job.result.as_ref().and_then(|r| r.message.clone());
    message.unwrap_or_default()
}

/// A job that fails transiently twice runs three times, waiting a backoff
/// (1 s, then 2 s, at least half of each) before each retry, and its
/// events tell the whole story in order.
#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_until_one_succeeds() {
    let h = harness(retrying(3));
    let mut events = h.service.subscribe(&admin());
    let started = Instant::now();
    let job = submit(&h.service, detached("flaky 2")).await;
    let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
    assert_eq!((done.attempt, done.retry_at), (3, None));
    assert_eq!(body(&done), r#"{"attempt":3}"#);
    assert_eq!(h.executor.started().len(), 3, "three attempts ran");
    assert!(
        took >= Duration::from_millis(1_500) && took <= Duration::from_millis(3_100),
        "waited {took:?} in all: between half and all of 1 s + 2 s"
    );

    use QueryStatus::*;
    let mut steps = Vec::new();
    while steps.last() != Some(&(Some(Processing), Complete)) {
        let event = tokio::time::timeout(SECOND, events.recv())
            .await
            .expect("an event")
            .expect("not lagged");
        if event.id == job.id && event.progress.is_none() {
            steps.push((event.from, event.to));
        }
    }
    let attempt = [(Some(Processing), Queued), (Some(Queued), Processing)];
    // A free slot: the submit starts its first attempt at once.
    let mut expected = vec![(None, Processing)];
    expected.extend(attempt);
    expected.extend(attempt);
    expected.push((Some(Processing), Complete));
    assert_eq!(steps, expected);
}

/// Out of attempts, the job ends `FAILURE` with the last attempt's error.
#[tokio::test(start_paused = true)]
async fn a_job_out_of_attempts_fails_with_its_last_error() {
    let h = harness(retrying(2));
    let job = submit(&h.service, detached("flaky 5")).await;
    let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
    assert_eq!((done.status, done.attempt), (QueryStatus::Failure, 2));
    assert_eq!(message(&done), "flaky: attempt 2");
    assert_eq!(h.executor.started().len(), 2);
}

/// Only errors marked `Transient` are retried, and retries are off unless
/// configured (Elide's behaviour): one attempt, then `FAILURE`.
#[tokio::test(start_paused = true)]
async fn only_transient_errors_are_retried_and_only_when_configured() {
    let h = harness(retrying(3));
    let job = submit(&h.service, detached("fail boom")).await;
    let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
    assert_eq!((done.status, done.attempt), (QueryStatus::Failure, 1));
    assert_eq!(message(&done), "boom");

    let off = harness(config());
    let job = submit(&off.service, detached("flaky 1")).await;
    let done = off
        .service
        .wait(&alice(), job.id, 60 * SECOND)
        .await
        .unwrap();
    assert_eq!((done.status, done.attempt), (QueryStatus::Failure, 1));
    assert_eq!(message(&done), "flaky: attempt 1");
    assert_eq!(off.executor.started().len(), 1, "no retry by default");
}

/// An export whose record stream fails transiently half-way is retried
/// from the start, and what is stored is the second attempt's whole file.
#[tokio::test(start_paused = true)]
async fn an_export_that_fails_transiently_half_way_is_exported_again_whole() {
    let h = harness(retrying(2));
    let request = SubmitRequest::export("rows 10 flaky 5", ExportFormat::NDJSON)
        .with_async_after(Duration::ZERO);
    let job = submit(&h.service, request).await;
    let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
    assert_eq!((done.status, done.attempt), (QueryStatus::Complete, 2));
    let result = done.result.expect("a result");
    assert_eq!(result.record_count, Some(10));
    let download = h.service.download(&alice(), job.id, None).await.unwrap();
    let bytes = read_download(download).await;
    assert_eq!(
        bytes.iter().filter(|b| **b == b'\n').count(),
        10,
        "one file of 10 rows"
    );
}

/// A job waiting for its retry can be cancelled: it never runs again.
#[tokio::test(start_paused = true)]
async fn a_job_waiting_for_its_retry_can_be_cancelled() {
    let h = harness(retrying(3));
    let job = submit(&h.service, detached("flaky 5")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiting = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(
        (waiting.status, waiting.attempt),
        (QueryStatus::Queued, 2),
        "attempt 1 failed and attempt 2 waits"
    );
    let retry_at = waiting.retry_at.expect("a retry time");
    assert!(retry_at > waiting.updated_on, "the retry waits a backoff");
    h.service.cancel(&alice(), job.id).await.unwrap();
    tokio::time::sleep(30 * SECOND).await;
    let done = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(
        (done.status, done.attempt, done.retry_at),
        (QueryStatus::CancelComplete, 2, None)
    );
    assert_eq!(h.executor.started().len(), 1, "never ran again");
}

/// The first instance crashes while running a job; the job is retried:
/// at once by a restart of the same instance (start-up recovery), or by
/// another instance once the lease has expired (the cleaner).
async fn a_dead_instances_job_is_retried(same_instance: bool) {
    let dao = Arc::new(MemoryDao::new());
    let config = Config {
        pool_size: 1,
        cleaner_interval: Duration::from_secs(60),
        ..retrying(2)
    };
    let build = |config: Config| {
        AsyncQueryService::builder()
            .config(config)
            .dao(dao.clone())
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .unwrap()
    };
    let first = build(config.clone());
    let job = first.submit(&alice(), detached("stall 1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(first); // no shutdown: a crash
    let second = build(Config {
        instance_id: if same_instance {
            config.instance_id
        } else {
            uuid::Uuid::new_v4()
        },
        ..config
    });
    let limit = if same_instance {
        30 * SECOND
    } else {
        150 * SECOND
    };
    let done = second.wait(&alice(), job.id, limit).await.unwrap();
    assert_eq!(
        (done.status, done.attempt),
        (QueryStatus::Complete, 2),
        "{done:?}"
    );
    assert_eq!(body(&done), r#"{"attempt":2}"#);
}

#[tokio::test(start_paused = true)]
async fn a_job_interrupted_by_a_restart_is_retried_at_once() {
    a_dead_instances_job_is_retried(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_instance_died_is_retried_elsewhere_after_its_lease() {
    a_dead_instances_job_is_retried(false).await;
}

/// Many jobs failing transiently while others finish and get cancelled:
/// every job's event history stays a legal walk, ends once, and agrees
/// with its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_cancels_and_completions_together_keep_every_history_legal() {
    let h = harness(Config {
        pool_size: 4,
        max_queued: 1_000,
        event_capacity: 10_000,
        retry: RetryPolicy::attempts(3)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(4)),
        ..config()
    });
    let mut events = h.service.subscribe(&admin());
    let mut ids = Vec::new();
    for i in 0..150 {
        let query = ["flaky 1", "flaky 5", "sleep 1"][i % 3];
        ids.push(submit(&h.service, detached(query)).await.id);
    }
    for id in ids.iter().step_by(4) {
        h.service.cancel(&alice(), *id).await.unwrap();
    }
    let mut finals = HashMap::new();
    for id in &ids {
        let done = h.service.wait(&alice(), *id, 30 * SECOND).await.unwrap();
        assert!(done.status.is_terminal(), "{id} is {}", done.status);
        finals.insert(*id, done);
    }
    let mut current: HashMap<uuid::Uuid, QueryStatus> = HashMap::new();
    let mut ended = 0;
    while ended < ids.len() {
        let event = tokio::time::timeout(10 * SECOND, events.recv())
            .await
            .expect("an event")
            .expect("not lagged");
        if event.progress.is_some() {
            continue;
        }
        let was = current.insert(event.id, event.to);
        assert_eq!(was, event.from, "history out of order for {}", event.id);
        if let Some(from) = event.from {
            assert!(
                from.can_transition_to(event.to),
                "illegal {from} -> {}",
                event.to
            );
        }
        if event.to.is_terminal() {
            ended += 1;
            assert_eq!(finals[&event.id].status, event.to, "{}", event.id);
        }
    }
    let retried = finals.values().filter(|j| j.attempt > 1).count();
    println!("{retried} of {} jobs were retried", ids.len());
    assert!(retried > 0);
}

/// The JSON:API document shows the attempt, and the retry time while a
/// job waits for one.
#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn the_http_document_shows_attempts() {
    let h = harness(Config {
        retry: RetryPolicy::attempts(3).with_backoff(10 * SECOND, 20 * SECOND),
        ..config()
    });
    let job = submit(&h.service, detached("flaky 5")).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let client = HttpClient::serve(h.service.clone()).await;
    let (status, document) = client
        .get(&format!("/asyncQuery/{}", job.id), "alice")
        .await;
    assert!(status.is_success(), "{status} {document}");
    let attributes = &document["data"]["attributes"];
    assert_eq!(attributes["status"], "QUEUED");
    assert_eq!(attributes["attempt"], 2);
    assert!(attributes["retryAt"].is_string(), "{attributes}");
}

/// A retry starts when it falls due, not at the dispatcher's next poll:
/// the claim of attempt 2 is stamped within a few milliseconds of the
/// `retry_at` attempt 1 left (poll interval: 1 s).
#[tokio::test(start_paused = true)]
async fn a_retry_starts_when_due_not_at_the_next_poll() {
    let h = harness(Config {
        poll_interval: SECOND,
        retry: RetryPolicy::attempts(2).with_backoff(Duration::from_millis(300), SECOND),
        ..config()
    });
    let job = submit(&h.service, detached("flaky 1")).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let waiting = h.service.get(&alice(), job.id).await.unwrap();
    let due = waiting.retry_at.expect("attempt 2 waits for its retry");
    loop {
        let now = h.service.get(&alice(), job.id).await.unwrap();
        if now.attempt == 2 && now.status != QueryStatus::Queued {
            let late = now.updated_on - due;
            assert!(
                late >= chrono::TimeDelta::zero() && late < chrono::TimeDelta::milliseconds(20),
                "attempt 2 started {late} after it was due"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A run whose job was retried meanwhile (its lease lapsed and another
/// instance's cleaner queued attempt 2) does not end that attempt: its
/// write conflicts, the job stays queued, and attempt 2 runs and finishes.
#[tokio::test(start_paused = true)]
async fn a_run_whose_job_was_retried_meanwhile_leaves_the_next_attempt_alone() {
    let h = harness(retrying(2));
    let job = submit(&h.service, detached("sleep 1000")).await;
    assert_eq!(job.status, QueryStatus::Processing);
    // What another instance's cleaner does to a job whose lease expired.
    let now = chrono::Utc::now();
    let retry = async_query::dao::StatusChange::retry(now, now + chrono::TimeDelta::seconds(5));
    let requeued = h.dao.update_status(job.id, retry).await.unwrap();
    assert!(requeued.is_applied());
    tokio::time::sleep(2 * SECOND).await; // the first run has finished
    let after_first = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(
        (after_first.status, after_first.attempt),
        (QueryStatus::Queued, 2),
        "the old run's COMPLETE did not land on attempt 2"
    );
    let done = h.service.wait(&alice(), job.id, 30 * SECOND).await.unwrap();
    assert_eq!((done.status, done.attempt), (QueryStatus::Complete, 2));
    assert_eq!(h.executor.started().len(), 2, "attempt 2 ran");
}

/// Retry policies that cannot work are refused when the service is built.
#[tokio::test]
async fn bad_retry_policies_are_refused_by_build() {
    let hour = Duration::from_secs(3_600);
    let cases = [
        ("retry.max_attempts", RetryPolicy::attempts(0)),
        (
            "retry.backoff",
            RetryPolicy::attempts(2).with_backoff(hour, SECOND),
        ),
        (
            "retry.max_backoff",
            RetryPolicy::attempts(2).with_backoff(SECOND, 2 * hour),
        ),
    ];
    for (name, retry) in cases {
        let built = AsyncQueryService::builder()
            .config(Config {
                retry,
                max_run_time: hour,
                ..config()
            })
            .executor(Arc::new(ScriptedExecutor::new()))
            .build();
        match built {
            Err(async_query::Error::Config { reason }) => {
                assert!(reason.starts_with(name), "{name}: {reason}")
            }
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
}
