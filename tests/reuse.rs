//! Result reuse: an identical earlier `COMPLETE` job answers a submit
//! without running, per principal, within the window, with its output
//! kept; `force` runs anyway. On the paused clock, in memory and on
//! SQLite (the default `find_reusable` over `history`), and over HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{
    AsyncQueryService, Config, Error, ExportFormat, MemoryStorage, QueryStatus, Reuse,
    SubmitRequest,
};
use common::*;

const HOUR: Duration = Duration::from_secs(3600);

fn reusing() -> Config {
    Config {
        result_reuse: Some(HOUR),
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn an_identical_submit_is_answered_from_the_earlier_result() {
    let Harness {
        service, executor, ..
    } = harness(reusing());
    let first = submit(&service, SubmitRequest::query("sleep 10")).await;
    assert_eq!(first.status, QueryStatus::Complete);
    let again = submit(&service, SubmitRequest::query("sleep 10")).await;
    assert_eq!(again, first, "the earlier job, as it is");
    assert_eq!(executor.started().len(), 1, "nothing ran");

    let forced = submit(
        &service,
        SubmitRequest::query("sleep 10").with_reuse(Reuse::Force),
    )
    .await;
    assert_ne!(forced.id, first.id);
    assert_eq!(executor.started().len(), 2, "force runs it");
    let newest = submit(&service, SubmitRequest::query("sleep 10")).await;
    assert_eq!(newest.id, forced.id, "the newest result answers");

    // Anything that differs runs.
    let bobs = service
        .submit(&bob(), SubmitRequest::query("sleep 10"))
        .await
        .unwrap();
    assert_ne!(
        bobs.id, first.id,
        "results are never shared between principals"
    );
    let typed = submit(
        &service,
        SubmitRequest::query("sleep 10").with_query_type("GRAPHQL_V1_0"),
    )
    .await;
    assert_ne!(typed.id, first.id);
    let other = submit(&service, SubmitRequest::query("sleep 11")).await;
    assert_ne!(other.id, first.id);
    assert_eq!(executor.started().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn only_complete_results_within_the_window_are_reused() {
    let Harness {
        service, executor, ..
    } = harness(reusing());
    let failed = submit(&service, SubmitRequest::query("fail no")).await;
    assert_eq!(failed.status, QueryStatus::Failure);
    let retried = submit(&service, SubmitRequest::query("fail no")).await;
    assert_ne!(retried.id, failed.id, "a failure is never reused");

    let first = submit(&service, SubmitRequest::query("q")).await;
    tokio::time::sleep(HOUR - Duration::from_secs(1)).await;
    assert_eq!(
        submit(&service, SubmitRequest::query("q")).await.id,
        first.id
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = submit(&service, SubmitRequest::query("q")).await;
    assert_ne!(late.id, first.id, "past the window it runs");
    // A request may ask for a longer window than the configured one.
    let long = SubmitRequest::query("q").with_reuse(Reuse::Within(3 * HOUR));
    assert_eq!(submit(&service, long).await.id, late.id);
    assert_eq!(executor.started().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn reuse_is_opt_in() {
    let Harness {
        service, executor, ..
    } = harness(config());
    let first = submit(&service, SubmitRequest::query("q")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = submit(&service, SubmitRequest::query("q")).await;
    assert_ne!(again.id, first.id, "off unless configured or asked for");
    let asked = SubmitRequest::query("q").with_reuse(Reuse::Within(HOUR));
    assert_eq!(submit(&service, asked).await.id, again.id);
    let zero = SubmitRequest::query("q").with_reuse(Reuse::Within(Duration::ZERO));
    assert_ne!(
        submit(&service, zero).await.id,
        again.id,
        "a zero window runs"
    );
    assert_eq!(executor.started().len(), 3);
    let batch = service
        .submit_many(
            &alice(),
            vec![SubmitRequest::query("q").with_reuse(Reuse::Within(HOUR))],
        )
        .await;
    assert!(
        matches!(batch, Err(Error::InvalidRequest { .. })),
        "{batch:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_export_is_reused_while_its_file_is_kept() {
    let storage = MemoryStorage::new();
    let executor = Arc::new(ScriptedExecutor::new());
    let service = AsyncQueryService::builder()
        .config(Config {
            result_lifetime: Some(Duration::from_secs(600)),
            cleaner_interval: Duration::from_secs(60),
            ..reusing()
        })
        .storage(Arc::new(storage.clone()))
        .executor(executor.clone())
        .build()
        .unwrap();
    let csv = || SubmitRequest::export("rows 3", ExportFormat::CSV);
    let first = submit(&service, csv()).await;
    let again = submit(&service, csv()).await;
    assert_eq!(again.id, first.id);
    let ndjson = submit(
        &service,
        SubmitRequest::export("rows 3", ExportFormat::NDJSON),
    )
    .await;
    assert_ne!(ndjson.id, first.id, "another format is another result");
    let (records, bytes) = read_download(&service, first.id).await;
    assert_eq!(records, Some(3));
    assert!(bytes.starts_with("id,name,note\n"), "{bytes}");
    // Past its result lifetime the file is gone and the export runs again.
    tokio::time::sleep(Duration::from_secs(700)).await;
    let expired = service.get(&alice(), first.id).await.unwrap();
    let body = expired.result.map(|r| r.body);
    assert_eq!(body, Some(async_query::ResultBody::Expired));
    let rerun = submit(&service, csv()).await;
    assert_ne!(rerun.id, first.id);
    assert_eq!(executor.started().len(), 3);
}

/// The export's record count and text.
async fn read_download(service: &AsyncQueryService, id: uuid::Uuid) -> (Option<u64>, String) {
    use futures::TryStreamExt;
    let download = service.download(&alice(), id, None).await.unwrap();
    let chunks: Vec<bytes::Bytes> = download.stream.body.try_collect().await.unwrap();
    (
        download.record_count,
        String::from_utf8(chunks.concat()).unwrap(),
    )
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_finds_reusable_results_through_its_history_index() {
    use async_query::AsyncApiDao;
    let dao = sqlite_in_memory().await;
    let dao = Arc::new(dao);
    let executor = Arc::new(ScriptedExecutor::new());
    let service = AsyncQueryService::builder()
        .config(Config {
            max_queued: 1_000,
            ..reusing()
        })
        .dao(dao.clone())
        .executor(executor.clone())
        .build()
        .unwrap();
    // More than one page (100) of other COMPLETE jobs after the one reused.
    let first = submit(&service, SubmitRequest::query("wanted")).await;
    let others: Vec<SubmitRequest> = (0..150)
        .map(|i| SubmitRequest::query(format!("other {i}")))
        .collect();
    let queued = service.submit_many(&alice(), others).await.unwrap();
    for job in &queued {
        service
            .wait(&alice(), job.id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let again = submit(&service, SubmitRequest::query("wanted")).await;
    assert_eq!(again.id, first.id);
    let found = dao.find_reusable(&again, first.created_on).await.unwrap();
    assert_eq!(found.map(|j| j.id), Some(first.id));
    assert_eq!(executor.started().len(), 151);
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_asks_for_reuse_and_force() {
    use reqwest::StatusCode;
    use serde_json::json;

    let Harness {
        service, executor, ..
    } = harness(config());
    let http = HttpClient::serve(service).await;
    let (status, first) = http.submit(json!({}), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (_, reused) = http
        .submit(json!({ "reuseWithinSeconds": 3600 }), &[])
        .await;
    assert_eq!(reused["data"]["id"], first["data"]["id"]);
    let (_, forced) = http.submit(json!({ "force": true }), &[]).await;
    assert_ne!(forced["data"]["id"], first["data"]["id"]);
    assert_eq!(executor.started().len(), 2);
    for bad in [
        json!({ "force": "yes" }),
        json!({ "reuseWithinSeconds": -1 }),
        json!({ "reuseWithinSeconds": 1.5 }),
        json!({ "force": true, "reuseWithinSeconds": 60 }),
    ] {
        let (status, answer) = http.submit(bad.clone(), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
}

/// A store that fails while a reusable result is looked up: the submit
/// fails with the store's error, stores nothing and runs nothing; once
/// the store answers again, reuse works.
#[tokio::test(start_paused = true)]
async fn a_failing_lookup_fails_the_submit_and_stores_nothing() {
    use async_query::testing::FaultyDao;
    use async_query::{AsyncApiDao, MemoryDao};
    let memory = Arc::new(MemoryDao::new());
    let (dao, faults) = FaultyDao::new(memory.clone());
    let executor = Arc::new(ScriptedExecutor::new());
    let service = AsyncQueryService::builder()
        .config(reusing())
        .dao(Arc::new(dao))
        .executor(executor.clone())
        .build()
        .unwrap();
    let first = submit(&service, SubmitRequest::query("q")).await;
    faults.only(&["find_reusable"]);
    faults.fail_always(true);
    let failed = service.submit(&alice(), SubmitRequest::query("q")).await;
    assert!(matches!(failed, Err(Error::Dao { .. })), "{failed:?}");
    assert_eq!(memory.list(&Default::default()).await.unwrap().len(), 1);
    assert_eq!(executor.started().len(), 1);
    faults.fail_always(false);
    assert_eq!(
        submit(&service, SubmitRequest::query("q")).await.id,
        first.id
    );
}
