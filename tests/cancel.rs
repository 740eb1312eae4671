//! Cancellation: running, queued, finished, and races with completion.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_query::{CancelOutcome, QueryStatus, SubmitRequest};
use common::*;

fn detached(query: &str) -> SubmitRequest {
    SubmitRequest::query(query).with_async_after(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn cancel_running_stops_it_at_once() {
    let h = harness(config());
    let job = h.service.submit(&alice(), detached("block")).await.unwrap();
    assert_eq!(job.status, QueryStatus::Processing);
    tokio::time::sleep(SECOND).await;
    let start = tokio::time::Instant::now();
    let outcome = h.service.cancel(&alice(), job.id).await.unwrap();
    let CancelOutcome::Cancelled(record) = outcome else {
        panic!("expected Cancelled, got {outcome:?}");
    };
    assert_eq!(record.status, QueryStatus::CancelComplete);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the token stops the job without waiting"
    );
    assert_eq!(
        record.result.unwrap().message.as_deref(),
        Some("cancelled on request")
    );
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::CancelComplete
    );
    // The slot is free again.
    let next = submit(&h.service, SubmitRequest::query("ok")).await;
    assert_eq!(next.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn cancel_queued_never_starts_it() {
    let h = harness(async_query::Config {
        pool_size: 1,
        ..config()
    });
    let running = submit(&h.service, detached("sleep 1000")).await;
    let queued = submit(&h.service, detached("never run me")).await;
    assert_eq!(queued.status, QueryStatus::Queued);
    let record = h
        .service
        .cancel(&alice(), queued.id)
        .await
        .unwrap()
        .into_record();
    assert_eq!(record.status, QueryStatus::CancelComplete);
    assert_eq!(
        record.result.unwrap().message.as_deref(),
        Some("cancelled before it started")
    );
    h.service
        .wait(&alice(), running.id, Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.executor.started(), vec!["sleep 1000".to_string()]);
    // Its queue place was given back: the queue bound counts only waiting jobs.
    let again = submit(&h.service, SubmitRequest::query("ok")).await;
    assert_eq!(again.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn cancel_after_completion_is_a_no_op_that_says_so() {
    let h = harness(config());
    let job = submit(&h.service, SubmitRequest::query("done")).await;
    assert_eq!(job.status, QueryStatus::Complete);
    match h.service.cancel(&alice(), job.id).await.unwrap() {
        CancelOutcome::AlreadyFinished(record) => assert_eq!(record, job),
        other => panic!("expected AlreadyFinished, got {other:?}"),
    }
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap(),
        job,
        "nothing changed"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_twice_is_harmless() {
    let h = harness(config());
    let job = h.service.submit(&alice(), detached("block")).await.unwrap();
    let first = h.service.cancel(&alice(), job.id).await.unwrap();
    assert!(matches!(first, CancelOutcome::Cancelled(_)));
    let second = h.service.cancel(&alice(), job.id).await.unwrap();
    assert!(
        matches!(second, CancelOutcome::AlreadyFinished(ref r) if r.status == QueryStatus::CancelComplete)
    );
}

#[tokio::test(start_paused = true)]
async fn submit_waiting_on_a_cancelled_job_returns_it_cancelled() {
    let h = harness(config());
    let id = uuid::Uuid::new_v4();
    let service = h.service.clone();
    let submitter = tokio::spawn(async move {
        service
            .submit(
                &alice(),
                SubmitRequest::query("block")
                    .with_id(id)
                    .with_async_after(Duration::from_secs(10)),
            )
            .await
    });
    tokio::time::sleep(SECOND).await;
    h.service.cancel(&alice(), id).await.unwrap();
    let record = submitter.await.unwrap().unwrap();
    assert_eq!(record.status, QueryStatus::CancelComplete);
}

/// Many jobs finishing at the same instant as their cancellation: every job
/// ends in exactly one terminal state and every observed change is legal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancel_vs_completion_never_produces_an_illegal_transition() {
    let h = harness(async_query::Config {
        pool_size: 8,
        max_queued: 10_000,
        event_capacity: 10_000,
        ..config()
    });
    let mut events = h.service.subscribe(&admin());
    let mut ids = Vec::new();
    for i in 0..400 {
        // sleep 0..=2 ms: completion lands right around the cancel
        let job = submit(&h.service, detached(&format!("sleep {}", i % 3))).await;
        ids.push(job.id);
    }
    let cancels = ids.iter().map(|id| {
        let service = h.service.clone();
        let id = *id;
        tokio::spawn(async move { service.cancel(&alice(), id).await })
    });
    for cancel in futures::future::join_all(cancels).await {
        cancel.unwrap().unwrap();
    }
    let mut finals = HashMap::new();
    for id in &ids {
        let record = h
            .service
            .wait(&alice(), *id, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            matches!(
                record.status,
                QueryStatus::Complete | QueryStatus::CancelComplete
            ),
            "{id} ended {}",
            record.status
        );
        finals.insert(*id, record.status);
    }
    // Replay the event history per job: legal steps, one terminal state.
    let mut current: HashMap<uuid::Uuid, QueryStatus> = HashMap::new();
    let mut terminal_events = 0;
    while terminal_events < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        match event.from {
            None => assert!(
                current.insert(event.id, event.to).is_none(),
                "created twice"
            ),
            Some(from) => {
                let was = current
                    .insert(event.id, event.to)
                    .expect("change before creation");
                assert_eq!(was, from, "event history out of order for {}", event.id);
                assert!(
                    from.can_transition_to(event.to),
                    "illegal {from} -> {}",
                    event.to
                );
            }
        }
        if event.to.is_terminal() {
            terminal_events += 1;
            assert_eq!(finals[&event.id], event.to);
        }
    }
    let cancelled = finals
        .values()
        .filter(|s| **s == QueryStatus::CancelComplete)
        .count();
    println!(
        "{cancelled} of {} jobs cancelled, the rest completed first",
        ids.len()
    );
}

/// `WaitTimeout::Cancel`: a job still running at the end of its wait is
/// cancelled (also when the caller stopped waiting); one that finishes in
/// time is not; without a wait, or in `submit_many`, it is refused.
#[tokio::test(start_paused = true)]
async fn on_wait_timeout_cancel_cancels_what_is_still_running() {
    use async_query::{AsyncApiDao, Error, WaitTimeout};
    let h = harness(config());
    let cancel_after = |query: &str, wait: Duration| {
        SubmitRequest::query(query)
            .with_async_after(wait)
            .with_on_wait_timeout(WaitTimeout::Cancel)
    };
    let start = tokio::time::Instant::now();
    let job = h
        .service
        .submit(&alice(), cancel_after("block", 2 * SECOND))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        2 * SECOND,
        "it waited the whole async-after"
    );
    assert_eq!(job.status, QueryStatus::CancelComplete);
    let stored = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(stored.status, QueryStatus::CancelComplete);

    let quick = h
        .service
        .submit(&alice(), cancel_after("sleep 500", 2 * SECOND))
        .await
        .unwrap();
    assert_eq!(quick.status, QueryStatus::Complete, "finished in time");

    // The caller goes away after one second; the job is cancelled at two.
    let abandoned = tokio::time::timeout(
        SECOND,
        h.service
            .submit(&alice(), cancel_after("block", 2 * SECOND)),
    )
    .await;
    assert!(abandoned.is_err(), "the caller stopped waiting");
    let running = h
        .service
        .list(&alice(), &async_query::history::HistoryQuery::new())
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(running.status, QueryStatus::Processing);
    tokio::time::sleep(2 * SECOND).await;
    let later = h.service.get(&alice(), running.id).await.unwrap();
    assert_eq!(later.status, QueryStatus::CancelComplete);

    let before = h.dao.list(&Default::default()).await.unwrap().len();
    let no_wait = h
        .service
        .submit(&alice(), cancel_after("block", Duration::ZERO))
        .await;
    assert!(
        matches!(no_wait, Err(Error::InvalidRequest { .. })),
        "{no_wait:?}"
    );
    let batch = h
        .service
        .submit_many(&alice(), vec![cancel_after("block", SECOND)])
        .await;
    assert!(
        matches!(batch, Err(Error::InvalidRequest { .. })),
        "{batch:?}"
    );
    let after = h.dao.list(&Default::default()).await.unwrap().len();
    assert_eq!(before, after, "nothing stored for a refused request");

    // A wait the configuration caps to nothing is no wait either.
    let capped = harness(async_query::Config {
        max_async_after: Duration::ZERO,
        ..config()
    });
    let refused = capped
        .service
        .submit(&alice(), cancel_after("block", 5 * SECOND))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidRequest { .. })),
        "{refused:?}"
    );
}
