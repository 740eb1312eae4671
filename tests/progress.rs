//! Progress: an executor reports as often as it likes; the service writes
//! the latest report at most once per `Config::progress_interval`, keeps it
//! on the record, sends it as events from and to `PROCESSING`, and shows it
//! over HTTP. On memory (paused clock), SQLite and PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::{FaultyDao, ScriptedExecutor};
use async_query::{
    AsyncApiDao, AsyncQueryService, Config, JobEvent, MemoryDao, QueryStatus, SubmitRequest,
};
use common::*;

fn service(dao: Arc<dyn AsyncApiDao>, progress_interval: Duration) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(Config {
            progress_interval,
            ..config()
        })
        .dao(dao)
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .expect("service builds")
}

/// A memory store that counts `update_progress` calls.
fn counted() -> (Arc<dyn AsyncApiDao>, Arc<async_query::testing::Faults>) {
    let (dao, faults) = FaultyDao::new(Arc::new(MemoryDao::new()));
    faults.only(&["update_progress"]);
    (Arc::new(dao), faults)
}

/// Every event of job `id` until its terminal one.
async fn events_until_end(events: &mut async_query::Subscription, id: uuid::Uuid) -> Vec<JobEvent> {
    let mut seen = Vec::new();
    loop {
        let event = events.recv().await.expect("subscription open");
        if event.id != id {
            continue;
        }
        let end = event.to.is_terminal();
        seen.push(event);
        if end {
            return seen;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_chatty_executor_is_written_once_per_interval_and_seen_by_subscribers() {
    let (dao, faults) = counted();
    let service = service(Arc::clone(&dao), SECOND);
    let mut events = service.subscribe(&alice());
    // 200 reports over 10 s: at most one write per second.
    let request = SubmitRequest::query("progress 200 every 50").with_async_after(Duration::ZERO);
    let job = submit(&service, request).await;
    assert_eq!(job.status, QueryStatus::Processing);

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let midway = service.get(&alice(), job.id).await.expect("get");
    let progress = midway.progress.expect("progress written by 2.5 s");
    assert_eq!(progress.total, Some(200));
    // Written at about 2 s (records 40), never ahead of the executor.
    assert!(
        (30..=50).contains(&progress.records),
        "{progress:?} at 2.5 s"
    );
    assert_eq!(progress.message, Some(format!("step {}", progress.records)));
    assert_eq!(
        midway.updated_on, job.updated_on,
        "progress is not a status change"
    );

    let seen = events_until_end(&mut events, job.id).await;
    let done = service.get(&alice(), job.id).await.expect("get");
    assert_eq!(done.status, QueryStatus::Complete);
    let writes = faults.calls();
    assert!(
        (9..=11).contains(&writes),
        "200 reports over 10 s at a 1 s interval: {writes} writes"
    );
    let last = done.progress.expect("a finished job keeps its progress");
    assert!(last.records >= 180, "{last:?}");

    let (progress_events, status_events): (Vec<&JobEvent>, Vec<&JobEvent>) =
        seen.iter().partition(|e| e.progress.is_some());
    assert_eq!(progress_events.len() as u64, writes, "one event per write");
    assert!(
        progress_events.iter().all(|e| {
            e.from == Some(QueryStatus::Processing) && e.to == QueryStatus::Processing
        })
    );
    let records: Vec<u64> = progress_events
        .iter()
        .filter_map(|e| e.progress.as_ref().map(|p| p.records))
        .collect();
    assert!(records.windows(2).all(|w| w[0] < w[1]), "{records:?}");
    assert_eq!(records.last(), Some(&last.records));
    // The ending comes last: no progress after it.
    assert_eq!(
        seen.last().map(|e| (e.to, e.progress.is_none())),
        Some((QueryStatus::Complete, true))
    );
    assert!(status_events.iter().all(|e| e.from != Some(e.to)));
}

#[tokio::test(start_paused = true)]
async fn a_submit_that_returns_a_running_job_shows_its_progress() {
    let (dao, _) = counted();
    let service = service(dao, Duration::from_millis(500));
    let request =
        SubmitRequest::query("progress 100 every 100").with_async_after(Duration::from_secs(3));
    let job = submit(&service, request).await;
    assert_eq!(job.status, QueryStatus::Processing);
    let progress = job
        .progress
        .expect("progress written within the async-after");
    assert!((20..=30).contains(&progress.records), "{progress:?}");
    // `wait` that times out shows it too.
    let waited = service
        .wait(&alice(), job.id, Duration::from_secs(2))
        .await
        .expect("wait");
    assert!(waited.progress.expect("progress").records > progress.records);
}

/// A job that is cancelled or times out keeps the progress written before,
/// and no progress event follows its end.
#[tokio::test(start_paused = true)]
async fn a_cancelled_or_timed_out_job_keeps_its_progress_and_reports_no_more() {
    let (dao, faults) = counted();
    let service = service(dao, SECOND);
    let mut events = service.subscribe(&alice());
    let chatty = || SubmitRequest::query("progress 100 every 100").with_async_after(Duration::ZERO);
    let cancelled = submit(&service, chatty()).await;
    let timed_out = submit(
        &service,
        chatty().with_max_run_time(Duration::from_millis(1_500)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let outcome = service
        .cancel(&alice(), cancelled.id)
        .await
        .expect("cancel");
    assert_eq!(outcome.into_record().status, QueryStatus::CancelComplete);
    let writes = faults.calls();

    for (id, end) in [
        (timed_out.id, QueryStatus::TimedOut),
        (cancelled.id, QueryStatus::CancelComplete),
    ] {
        let seen = events_until_end(&mut events, id).await;
        assert_eq!(seen.last().map(|e| e.to), Some(end));
        let last_event = seen.iter().rev().find_map(|e| e.progress.clone());
        let record = service.get(&alice(), id).await.expect("get");
        assert_eq!(record.status, end);
        let kept = record
            .progress
            .expect("progress written before the end is kept");
        assert!(kept.records >= 10, "{kept:?}");
        assert_eq!(
            last_event,
            Some(kept),
            "the last event is the kept progress"
        );
    }
    // Nothing runs any more: no more writes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(faults.calls(), writes);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_fails_progress_writes_still_finishes_the_job() {
    let (dao, faults) = counted();
    faults.fail_always(true);
    let service = service(dao, Duration::from_millis(100));
    let job = submit(
        &service,
        SubmitRequest::query("progress 20 every 50").with_async_after(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete);
    assert_eq!(job.result.and_then(|r| r.record_count), Some(20));
    assert_eq!(job.progress, None);
    assert!(faults.calls() >= 5, "writes were tried: {}", faults.calls());
}

#[tokio::test(start_paused = true)]
async fn exports_report_their_rows() {
    let (dao, faults) = counted();
    let service = service(dao, SECOND);
    let request = SubmitRequest::export("rows 100 every 50", async_query::ExportFormat::CSV)
        .with_async_after(Duration::ZERO);
    let job = submit(&service, request).await;
    let done = service
        .wait(&alice(), job.id, Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(done.status, QueryStatus::Complete);
    let progress = done.progress.expect("an export reports progress");
    assert_eq!(progress.total, Some(100));
    assert!(progress.records >= 80, "{progress:?}");
    assert!((4..=6).contains(&faults.calls()), "{}", faults.calls());
}

/// Real time: a job of 10 steps of 30 ms at a 20 ms interval.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn progress_on(dao: Arc<dyn AsyncApiDao>) -> (AsyncQueryService, async_query::AsyncQuery) {
    let service = service(dao, Duration::from_millis(20));
    let job = submit(
        &service,
        SubmitRequest::query("progress 10 every 30").with_async_after(Duration::ZERO),
    )
    .await;
    let done = service
        .wait(&alice(), job.id, Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(done.status, QueryStatus::Complete);
    (service, done)
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_progress_on_the_record() {
    let dao = sqlite_in_memory().await;
    let (service, done) = progress_on(Arc::new(dao)).await;
    let progress = done.progress.expect("progress kept");
    assert_eq!(progress.total, Some(10));
    assert!(progress.records >= 5, "{progress:?}");
    let read = service.get(&alice(), done.id).await.expect("get");
    assert_eq!(read.progress, Some(progress));
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_progress_events_every_instance_reads() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let other = service(Arc::clone(&dao), SECOND);
    let mut on_other = other.subscribe(&alice());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (service, done) = progress_on(Arc::clone(&dao)).await;
    let progress = done.progress.clone().expect("progress kept");
    assert_eq!(progress.total, Some(10));

    // The store's stream holds the progress events, between the claim and
    // the ending, readable from any instance.
    let page = other
        .events_after(&alice(), None, 100)
        .await
        .expect("events");
    let mine: Vec<&JobEvent> = page
        .events
        .iter()
        .map(|e| &e.event)
        .filter(|e| e.id == done.id)
        .collect();
    let last_progress = mine
        .iter()
        .rev()
        .find_map(|e| e.progress.clone())
        .expect("a progress event");
    assert_eq!(last_progress, progress);
    assert_eq!(mine.last().map(|e| e.to), Some(QueryStatus::Complete));
    assert!(
        mine.iter().filter(|e| e.progress.is_some()).all(|e| {
            e.from == Some(QueryStatus::Processing) && e.to == QueryStatus::Processing
        })
    );
    // A subscriber on another instance got them live.
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        events_until_end(&mut on_other, done.id),
    )
    .await
    .expect("events within 10 s");
    assert!(seen.iter().any(|e| e.progress.is_some()), "{seen:?}");
    drop((service, other));
    db.drop_db().await;
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_shows_progress_on_the_job_and_in_events() {
    let (dao, _) = counted();
    let service = service(dao, Duration::from_millis(20));
    service.enable_event_log(100);
    let client = HttpClient::serve(service.clone()).await;
    let (status, document) = client
        .submit(
            serde_json::json!({ "query": "progress 10 every 30", "asyncAfterSeconds": 10 }),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{document}");
    let progress = &document["data"]["attributes"]["progress"];
    assert_eq!(progress["total"], 10, "{document}");
    assert!(
        progress["records"].as_u64().is_some_and(|r| r >= 5),
        "{document}"
    );
    let (status, events) = client.get("/asyncEvents", "alice").await;
    assert_eq!(status, 200, "{events}");
    let progress_events: Vec<&serde_json::Value> = events["data"]
        .as_array()
        .expect("an array")
        .iter()
        .filter(|e| !e["attributes"]["progress"].is_null())
        .collect();
    assert!(!progress_events.is_empty(), "{events}");
    for event in progress_events {
        assert_eq!(event["attributes"]["status"], "PROCESSING");
        assert_eq!(event["attributes"]["previousStatus"], "PROCESSING");
    }
    // `progress` is read-only in a submission.
    let (status, document) = client
        .submit(serde_json::json!({ "progress": { "records": 1 } }), &[])
        .await;
    assert_eq!(status, 403, "{document}");
}
