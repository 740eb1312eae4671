//! Fair shares: one principal's long queue does not hold back another
//! principal's job. Claims are fair across principals on every back-end
//! (the conformance area `dao_fair_claims` checks the rule; these tests
//! check what a user sees).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{AsyncApiDao, AsyncQueryService, Config, MemoryDao, QueryStatus, SubmitRequest};
use common::*;

/// A service of its own instance id on `dao`, running on `executor`.
fn build(
    dao: Arc<dyn AsyncApiDao>,
    executor: &Arc<ScriptedExecutor>,
    config: Config,
) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(Config {
            instance_id: uuid::Uuid::new_v4(),
            ..config
        })
        .dao(dao)
        .executor(Arc::clone(executor) as Arc<dyn async_query::QueryExecutor>)
        .build()
        .expect("service builds")
}

fn service(dao: Arc<dyn AsyncApiDao>, executor: Arc<ScriptedExecutor>) -> AsyncQueryService {
    let config = Config {
        pool_size: 2,
        max_queued: 5_000,
        ..Config::default()
    };
    build(dao, &executor, config)
}

/// Alice queues `count` jobs of `ms` each, then Bob submits one of
/// `ms - 1` while every slot is busy. Bob's job must be done within
/// `within` and have started at place `at_most` or earlier.
async fn bob_is_not_held_back(
    executor: Arc<ScriptedExecutor>,
    service: &AsyncQueryService,
    (count, ms): (usize, u64),
    within: Duration,
    at_most: usize,
) {
    let flood = (0..count).map(|_| SubmitRequest::query(format!("sleep {ms}")));
    service
        .submit_many(&alice(), flood.collect())
        .await
        .expect("alice's jobs are queued");
    let bobs_query = format!("sleep {}", ms - 1);
    let bobs = SubmitRequest::query(bobs_query.as_str()).with_async_after(Duration::ZERO);
    let job = service.submit(&bob(), bobs).await.expect("bob submits");
    assert_eq!(job.status, QueryStatus::Queued, "every slot is busy");
    let done = service.wait(&bob(), job.id, within).await.expect("wait");
    assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
    let started = executor.started();
    let bobs_turn = started.iter().position(|q| *q == bobs_query);
    assert!(
        bobs_turn.is_some_and(|turn| turn <= at_most),
        "bob's job started {bobs_turn:?}th of {:?}",
        &started[..started.len().min(6)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_thousand_queued_jobs_do_not_hold_back_another_principals_one() {
    let executor = Arc::new(ScriptedExecutor::new());
    let service = service(Arc::new(MemoryDao::new()), Arc::clone(&executor));
    // Within one job's run time (1 s) a slot frees and takes Bob's job
    // first, which then runs its 0.999 s; at most Alice's two first jobs
    // (the slots' first claims) go before it.
    let within = Duration::from_secs(2);
    bob_is_not_held_back(executor, &service, (1_000, 1_000), within, 2).await;
}

/// Real time on a SQL store: 200 jobs of 100 ms from Alice, then Bob's.
/// Two of Alice's jobs were running (or claimed) when Bob submitted; the
/// next freed slot takes Bob's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn fair_on(dao: Arc<dyn AsyncApiDao>) {
    let executor = Arc::new(ScriptedExecutor::new());
    let service = service(dao, Arc::clone(&executor));
    let within = Duration::from_secs(30);
    bob_is_not_held_back(executor, &service, (200, 100), within, 3).await;
    service
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shuts down");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_are_fair() {
    fair_on(Arc::new(sqlite_in_memory().await)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_are_fair() {
    let Some(db) = pg::fresh().await else { return };
    fair_on(Arc::new(db.dao.clone())).await;
    db.drop_db().await;
}

fn limited(dao: Arc<dyn AsyncApiDao>, pool_size: usize) -> AsyncQueryService {
    let config = Config {
        pool_size,
        max_queued_per_principal: Some(3),
        ..Config::default()
    };
    build(dao, &Arc::new(ScriptedExecutor::new()), config)
}

fn queued(query: &str) -> SubmitRequest {
    SubmitRequest::query(query).with_async_after(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn a_principal_past_its_queue_limit_is_refused_and_nothing_is_stored() {
    let dao = Arc::new(MemoryDao::new());
    let service = limited(dao.clone(), 1);
    let running = service
        .submit(&alice(), queued("block"))
        .await
        .expect("runs");
    assert_eq!(running.status, QueryStatus::Processing);
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let job = service
            .submit(&alice(), queued("sleep 10"))
            .await
            .expect("queued");
        assert_eq!(job.status, QueryStatus::Queued);
        waiting.push(job.id);
    }
    let refused = service.submit(&alice(), queued("sleep 10")).await;
    match refused {
        Err(async_query::Error::PrincipalQueueFull { max, retry_after }) => {
            assert_eq!(max, 3);
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("a fourth queued job must be refused, got {other:?}"),
    }
    assert_eq!(dao.count_queued("alice", 100).await.expect("count"), 3);
    // Other principals are not limited by alice's queue.
    let bobs = service
        .submit(&bob(), queued("sleep 10"))
        .await
        .expect("bob");
    assert_eq!(bobs.status, QueryStatus::Queued);
    // A batch that does not fit is refused whole.
    service
        .cancel(&alice(), waiting[0])
        .await
        .expect("cancel a queued job");
    let batch = vec![queued("sleep 10"), queued("sleep 10")];
    assert!(matches!(
        service.submit_many(&alice(), batch).await,
        Err(async_query::Error::PrincipalQueueFull { .. })
    ));
    assert_eq!(dao.count_queued("alice", 100).await.expect("count"), 2);
    // One fits again.
    service
        .submit(&alice(), queued("sleep 10"))
        .await
        .expect("fits");
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_429_with_retry_after() {
    let service = limited(Arc::new(MemoryDao::new()), 0);
    let client = HttpClient::serve(service).await;
    for _ in 0..3 {
        let (status, document) = client
            .submit(serde_json::json!({ "asyncAfterSeconds": 0 }), &[])
            .await;
        assert_eq!(status, 201, "{document}");
    }
    let response = client
        .submit_response(serde_json::json!({ "asyncAfterSeconds": 0 }), &[])
        .await;
    assert_eq!(response.status(), 429);
    let retry_after = response.headers().get("retry-after").cloned();
    assert_eq!(
        retry_after.as_ref().and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (_, body) = parsed(response).await;
    assert_eq!(body["errors"][0]["code"], "principal_queue_full", "{body}");
}

/// Two submit-only instances on one database share each principal's limit.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_share_the_queue_limit() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let (a, b) = (limited(Arc::clone(&dao), 0), limited(Arc::clone(&dao), 0));
    for service in [&a, &b, &a] {
        let job = service
            .submit(&alice(), queued("sleep 10"))
            .await
            .expect("queued");
        assert_eq!(job.status, QueryStatus::Queued);
    }
    assert!(matches!(
        b.submit(&alice(), queued("sleep 10")).await,
        Err(async_query::Error::PrincipalQueueFull { max: 3, .. })
    ));
    assert_eq!(dao.count_queued("alice", 10).await.expect("count"), 3);
    b.submit(&bob(), queued("sleep 10"))
        .await
        .expect("bob's own limit");
    drop((a, b));
    db.drop_db().await;
}

/// A service of `pool_size` slots that runs at most `max` jobs of one
/// principal at once, sharing `executor` (which counts the jobs running
/// on every service that shares it).
fn running_limited(
    dao: Arc<dyn AsyncApiDao>,
    executor: &Arc<ScriptedExecutor>,
    pool_size: usize,
    max: usize,
) -> AsyncQueryService {
    let config = Config {
        pool_size,
        max_running_per_principal: Some(max),
        ..Config::default()
    };
    build(dao, executor, config)
}

/// Under a limit every job starts through a claim, yet a submit still
/// answers with the finished job when it ends within its async-after, and
/// with the queued one when the limit holds it back past that.
#[tokio::test(start_paused = true)]
async fn under_a_running_limit_a_submit_still_waits_its_async_after() {
    let executor = Arc::new(ScriptedExecutor::new());
    let service = running_limited(Arc::new(MemoryDao::new()), &executor, 2, 1);
    let within = |query: &str| SubmitRequest::query(query).with_async_after(Duration::from_secs(1));
    let quick = service
        .submit(&alice(), within("sleep 10"))
        .await
        .expect("submit");
    assert_eq!(quick.status, QueryStatus::Complete, "{quick:?}");
    let long = service
        .submit(&alice(), queued("sleep 5000"))
        .await
        .expect("submit");
    let held = service
        .submit(&alice(), within("sleep 10"))
        .await
        .expect("submit");
    assert_eq!(
        held.status,
        QueryStatus::Queued,
        "a free slot, but alice's one place is taken: {held:?}"
    );
    let done = service
        .wait(&alice(), held.id, Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
    let first = service.get(&alice(), long.id).await.expect("get");
    assert_eq!(
        first.status,
        QueryStatus::Complete,
        "it ran after the long one"
    );
    assert_eq!(executor.max_running(), 1);
}

/// Three free slots, a limit of one: Alice's three jobs run one after
/// another while Bob's runs beside the first; the third slot stays idle.
#[tokio::test(start_paused = true)]
async fn a_principal_at_its_running_limit_waits_while_others_run() {
    let executor = Arc::new(ScriptedExecutor::new());
    let service = running_limited(Arc::new(MemoryDao::new()), &executor, 3, 1);
    let mut alices = Vec::new();
    for _ in 0..3 {
        let job = service
            .submit(&alice(), queued("sleep 1000"))
            .await
            .expect("alice submits");
        alices.push(job.id);
    }
    let bobs = service
        .submit(&bob(), queued("sleep 1000"))
        .await
        .expect("bob submits");
    let done = service
        .wait(&bob(), bobs.id, Duration::from_millis(1_500))
        .await
        .expect("wait");
    assert_eq!(done.status, QueryStatus::Complete, "bob's job ran at once");
    let mut statuses = Vec::new();
    for &id in &alices {
        statuses.push(service.get(&alice(), id).await.expect("get").status);
    }
    assert_eq!(
        statuses,
        [
            QueryStatus::Complete,
            QueryStatus::Processing,
            QueryStatus::Queued
        ],
        "one of alice's jobs at a time"
    );
    let last = service
        .wait(&alice(), alices[2], Duration::from_secs(3))
        .await
        .expect("wait");
    assert_eq!(last.status, QueryStatus::Complete, "{last:?}");
    assert_eq!(executor.max_running(), 2, "alice's one and bob's one");
    assert!(matches!(
        AsyncQueryService::builder()
            .config(Config {
                max_running_per_principal: Some(0),
                ..Config::default()
            })
            .executor(Arc::new(ScriptedExecutor::new()))
            .build(),
        Err(async_query::Error::Config { .. })
    ));
}

/// Two instances of two slots each on one database, a limit of two: eight
/// jobs of one principal never run more than two at once, yet all finish.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_share_the_running_limit() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let executor = Arc::new(ScriptedExecutor::new());
    let a = running_limited(Arc::clone(&dao), &executor, 2, 2);
    let b = running_limited(Arc::clone(&dao), &executor, 2, 2);
    let batch = (0..8).map(|_| queued("sleep 150")).collect();
    let jobs = a.submit_many(&alice(), batch).await.expect("submit");
    for job in &jobs {
        let done = b
            .wait(&alice(), job.id, Duration::from_secs(30))
            .await
            .expect("wait");
        assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
    }
    assert_eq!(
        executor.max_running(),
        2,
        "four slots, but alice's limit is two"
    );
    let _ = a.shutdown(Duration::from_secs(5)).await;
    let _ = b.shutdown(Duration::from_secs(5)).await;
    db.drop_db().await;
}
