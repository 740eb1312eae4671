//! Idempotent submits: a repeated key returns the first job and never
//! runs the query twice, per principal, within the window; also when two
//! instances race (on one `MemoryDao`, and on PostgreSQL, where the
//! database's unique index decides); and over HTTP's `Idempotency-Key`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{
    AsyncApiDao, AsyncQueryService, Config, Error, MemoryDao, QueryStatus, SubmitRequest,
};
use common::*;

fn service_on(
    dao: Arc<dyn AsyncApiDao>,
    config: Config,
) -> (AsyncQueryService, Arc<ScriptedExecutor>) {
    let executor = Arc::new(ScriptedExecutor::new());
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(dao)
        .executor(executor.clone())
        .build()
        .expect("service builds");
    (service, executor)
}

fn keyed(query: &str, key: &str) -> SubmitRequest {
    SubmitRequest::query(query)
        .with_async_after(Duration::ZERO)
        .with_idempotency_key(key)
}

#[tokio::test(start_paused = true)]
async fn a_repeated_key_returns_the_first_job_and_runs_it_once() {
    let Harness {
        service, executor, ..
    } = harness(config());
    let first = submit(&service, keyed("sleep 1000", "report-1")).await;
    assert_eq!(first.idempotency_key.as_deref(), Some("report-1"));
    let repeat = submit(&service, keyed("sleep 1000", "report-1")).await;
    assert_eq!(repeat.id, first.id, "the repeat gets the first job");
    assert!(!repeat.status.is_terminal());
    // A repeat with an async-after waits for the job as a new one would.
    let waited = submit(
        &service,
        keyed("sleep 1000", "report-1").with_async_after(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(
        (waited.id, waited.status),
        (first.id, QueryStatus::Complete)
    );
    let after = submit(&service, keyed("sleep 1000", "report-1")).await;
    assert_eq!((after.id, after.status), (first.id, QueryStatus::Complete));
    assert_eq!(executor.started(), vec!["sleep 1000"], "the query ran once");

    // Another key, or none, is another job.
    let other = submit(&service, keyed("sleep 1000", "report-2")).await;
    let plain = submit(
        &service,
        SubmitRequest::query("sleep 1000").with_async_after(Duration::ZERO),
    )
    .await;
    assert_ne!(other.id, first.id);
    assert_ne!(plain.id, first.id);
}

#[tokio::test(start_paused = true)]
async fn keys_are_per_principal_and_bound_to_their_request() {
    let Harness { service, .. } = harness(config());
    let mine = submit(&service, keyed("q", "k")).await;
    let bobs = service.submit(&bob(), keyed("q", "k")).await.unwrap();
    assert_ne!(bobs.id, mine.id, "bob's key is his own");
    assert!(
        matches!(
            service.get(&bob(), mine.id).await,
            Err(Error::NotFound { .. })
        ),
        "and shows him nothing of alice's"
    );

    for different in [
        keyed("other query", "k"),
        keyed("q", "k").with_query_type("GRAPHQL_V1_0"),
        SubmitRequest::export("q", async_query::ExportFormat::CSV)
            .with_async_after(Duration::ZERO)
            .with_idempotency_key("k"),
    ] {
        match service.submit(&alice(), different).await {
            Err(e @ Error::IdempotencyKeyReused { .. }) => {
                assert!(e.to_string().contains(&mine.id.to_string()), "{e}");
            }
            other => panic!("a key reused for another request: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_the_window_a_key_starts_a_new_job() {
    let Harness {
        service,
        executor,
        dao,
    } = harness(Config {
        idempotency_window: Duration::from_secs(3600),
        ..config()
    });
    let first = submit(&service, keyed("q", "daily")).await;
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert_eq!(submit(&service, keyed("q", "daily")).await.id, first.id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = submit(&service, keyed("q", "daily")).await;
    assert_ne!(second.id, first.id, "past the window: a new job");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(executor.started().len(), 2);
    let old = dao.get(first.id).await.unwrap().unwrap();
    assert_eq!(old.idempotency_key, None, "the key moved to the new job");
    assert_eq!(old.status, QueryStatus::Complete, "the old record stays");
    assert_eq!(submit(&service, keyed("q", "daily")).await.id, second.id);
}

#[tokio::test]
async fn malformed_keys_and_keyed_batches_are_refused() {
    let Harness { service, dao, .. } = harness(config());
    for key in ["", " spaced", "tab\tkey", "ünï", &"k".repeat(256)] {
        match service.submit(&alice(), keyed("q", key)).await {
            Err(Error::InvalidRequest { reason }) => {
                assert!(reason.contains("idempotency key"), "{reason}")
            }
            other => panic!("key {key:?}: {other:?}"),
        }
    }
    submit(&service, keyed("q", &"k".repeat(255))).await;
    let batch = service
        .submit_many(&alice(), vec![SubmitRequest::query("q"), keyed("q", "b")])
        .await;
    match batch {
        Err(Error::InvalidRequest { reason }) => assert!(reason.contains("request 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(dao.list(&Default::default()).await.unwrap().len(), 1);
}

/// Two instances over one store submit the same keys at the same moment:
/// one job per key, run once, and both callers get it.
async fn race(dao_a: Arc<dyn AsyncApiDao>, dao_b: Arc<dyn AsyncApiDao>, rounds: usize) {
    let config = || Config {
        max_queued: 1_000,
        // Without store signals (the shared `MemoryDao`), waits for a job
        // the other instance runs poll the store.
        poll_interval: Duration::from_millis(10),
        ..config()
    };
    let (a, run_a) = service_on(dao_a.clone(), config());
    let (b, run_b) = service_on(dao_b, config());
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    for round in 0..rounds {
        let key = format!("{prefix}-{round}");
        let alice = alice();
        let (on_a, on_b) = tokio::join!(
            a.submit(&alice, keyed("sleep 5", &key)),
            b.submit(&alice, keyed("sleep 5", &key)),
        );
        let (on_a, on_b) = (on_a.expect("submit on A"), on_b.expect("submit on B"));
        assert_eq!(
            on_a.id, on_b.id,
            "round {round}: both instances answer with one job"
        );
        let found = dao_a
            .find_by_idempotency_key("alice", &key)
            .await
            .unwrap()
            .map(|job| job.id);
        assert_eq!(found, Some(on_a.id));
        ids.push(on_a.id);
    }
    for id in ids {
        let done = a.wait(&alice(), id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
    for service in [&a, &b] {
        service.shutdown(Duration::from_secs(10)).await.unwrap();
    }
    let runs = run_a.started().len() + run_b.started().len();
    assert_eq!(runs, rounds, "each key's query ran exactly once");
    let jobs = dao_a.list(&Default::default()).await.unwrap();
    let keyed = jobs
        .iter()
        .filter(|job| {
            job.idempotency_key
                .as_deref()
                .is_some_and(|k| k.starts_with(&prefix))
        })
        .count();
    assert_eq!(keyed, rounds, "one record per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_on_memory_store_one_job_per_key() {
    let dao = Arc::new(MemoryDao::new());
    race(dao.clone(), dao, 50).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_on_postgres_store_one_job_per_key() {
    let Some(db) = pg::fresh().await else {
        return;
    };
    let other = async_query::dao::PostgresDao::connect(&db.url)
        .await
        .expect("a second pool");
    race(Arc::new(db.dao.clone()), Arc::new(other), 50).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_keeps_keys_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let open = || async {
        let dao = async_query::dao::SqliteDao::connect(&url).await.unwrap();
        dao.migrate().await.unwrap();
        Arc::new(dao)
    };
    let (before, ran) = service_on(open().await, config());
    let nightly = keyed("q", "nightly").with_async_after(Duration::from_secs(5));
    let first = before.submit(&alice(), nightly).await.unwrap();
    assert_eq!(first.status, QueryStatus::Complete);
    before.shutdown(Duration::from_secs(5)).await.unwrap();
    let (after, ran_after) = service_on(open().await, config());
    let repeat = after.submit(&alice(), keyed("q", "nightly")).await.unwrap();
    assert_eq!(
        (repeat.id, repeat.status),
        (first.id, QueryStatus::Complete)
    );
    assert_eq!(ran.started().len() + ran_after.started().len(), 1);
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_returns_the_first_job() {
    use reqwest::StatusCode;
    use serde_json::json;

    let Harness {
        service, executor, ..
    } = harness(config());
    let http = HttpClient::serve(service).await;
    let key = |key| [("Idempotency-Key", key)];
    let (status, first) = http.submit(json!({}), &key("h-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["data"]["attributes"]["idempotencyKey"], json!("h-1"));
    let (status, repeat) = http.submit(json!({}), &key("h-1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(repeat["data"]["id"], first["data"]["id"]);
    assert_eq!(executor.started().len(), 1);

    let (status, reused) = http
        .submit(json!({ "query": "another query" }), &key("h-1"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reused}");
    assert_eq!(reused["errors"][0]["code"], json!("idempotency_key_reused"));
    // The key is the header's; the attribute only shows it.
    let (status, attribute) = http.submit(json!({ "idempotencyKey": "h-1" }), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{attribute}");
    let (status, malformed) = http.submit(json!({}), &key("has space")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed}");
}

/// A job store that implements only what `AsyncApiDao` requires, and so
/// keeps no idempotency keys: keyed submits are refused with a message
/// saying why, nothing is stored, and nothing runs (a store that cannot
/// enforce a key must not run a job twice).
#[tokio::test(start_paused = true)]
async fn a_store_without_keys_refuses_keyed_submits() {
    let dao = Arc::new(RequiredOnly {
        inner: MemoryDao::new(),
        renews_every_lease: false,
    });
    let (service, executor) = service_on(dao.clone(), config());
    match service.submit(&alice(), keyed("q", "k")).await {
        Err(Error::Config { reason }) => assert!(reason.contains("idempotency keys"), "{reason}"),
        other => panic!("a keyed submit on a store without keys: {other:?}"),
    }
    assert!(dao.list(&Default::default()).await.unwrap().is_empty());
    assert!(executor.started().is_empty());
    // Unkeyed submits work as ever.
    submit(&service, SubmitRequest::query("q")).await;
    assert_eq!(executor.started().len(), 1);
}
