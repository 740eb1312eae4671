//! Status-change events kept in PostgreSQL (needs
//! `ASYNC_QUERY_TEST_POSTGRES_URL`): every instance reads the same
//! streams, subscribers see changes made by other instances, a transaction
//! that commits late is never skipped by a follower, and each principal's
//! stream is trimmed to its bound with `missed` set for old cursors.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::dao::{EventStream, StatusChange};
use async_query::testing::{FaultyDao, ScriptedExecutor, sample_job};
use async_query::{
    AsyncApiDao, AsyncQueryService, Config, Error, JobEvent, QueryStatus, SubmitRequest,
};
use common::*;
use sqlx::Connection;

fn instance(dao: &Arc<dyn AsyncApiDao>, pool_size: usize) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(Config {
            instance_id: uuid::Uuid::new_v4(),
            pool_size,
            poll_interval: Duration::from_millis(200),
            ..Config::default()
        })
        .dao(Arc::clone(dao))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .expect("build an instance")
}

/// The next event of `id`, skipping others, within 10 s.
async fn next_of(events: &mut async_query::Subscription, id: uuid::Uuid) -> JobEvent {
    let wanted = async {
        loop {
            let event = events.recv().await.expect("subscription ended");
            if event.id == id {
                return event;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wanted)
        .await
        .expect("no event within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_reads_the_same_events_and_subscribers_see_remote_jobs() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone());
    let worker = instance(&dao, 2);
    let front = instance(&dao, 0);
    // B subscribes; the job runs on A.
    let mut on_front = front.subscribe(&alice());
    let mut bobs_view = front.subscribe(&bob());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = SubmitRequest::query("sleep 50").with_async_after(Duration::ZERO);
    let job = worker.submit(&alice(), request).await.unwrap();
    let mut seen = Vec::new();
    while seen.last().map(|(_, to)| *to) != Some(QueryStatus::Complete) {
        let event = next_of(&mut on_front, job.id).await;
        assert_eq!(&*event.owner, "alice");
        seen.push((event.from, event.to));
    }
    // A free slot starts a job as it is created.
    assert_eq!(
        seen,
        [
            (None, QueryStatus::Processing),
            (Some(QueryStatus::Processing), QueryStatus::Complete)
        ]
    );
    // Bob's subscription saw nothing of alice's job.
    let bob_job = front
        .submit(&bob(), SubmitRequest::query("sleep 0"))
        .await
        .unwrap();
    let first = next_of(&mut bobs_view, bob_job.id).await;
    assert_eq!(&*first.owner, "bob");
    let done = front
        .wait(&bob(), bob_job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, QueryStatus::Complete);

    // events_after answers the same on both instances, with cursors in
    // each principal's own stream: alice's 2 events are 1 and 2 whatever
    // bob did.
    for principal in [alice(), bob(), admin()] {
        let want = match &*principal.name {
            "root" => 5,
            "bob" => 3,
            _ => 2,
        };
        let full = |p: &async_query::EventPage| p.events.len() >= want;
        let a = read(&worker, &principal, full).await;
        let b = read(&front, &principal, full).await;
        assert_eq!(a.events, b.events, "{}", principal.name);
    }
    let alices = read(&front, &alice(), |p| p.events.len() >= 2).await;
    assert_eq!(
        alices.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(alices.events.iter().all(|e| e.event.id == job.id));
    // Bob's job was queued by the front and claimed by the worker.
    let everything = read(&front, &admin(), |p| p.events.len() >= 5).await;
    assert_eq!(everything.events.len(), 5, "{everything:?}");
    worker.shutdown(Duration::from_secs(5)).await.unwrap();
    front.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

/// Reads `principal`'s stream from the start until `done` holds.
async fn read(
    service: &AsyncQueryService,
    principal: &async_query::Principal,
    done: impl Fn(&async_query::EventPage) -> bool,
) -> async_query::EventPage {
    for _ in 0..500 {
        let page = service.events_after(principal, None, 100).await.unwrap();
        if done(&page) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{}'s events never arrived", principal.name);
}

/// A transaction that changes a job, then waits before committing while
/// others commit and a follower reads past them: its event is not skipped,
/// it is numbered after what the follower already read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_commits_late_is_not_skipped() {
    let Some(db) = pg::fresh().await else { return };
    let dao = db.dao.clone();
    let now = chrono::Utc::now();
    let late = sample_job(now);
    dao.create(&late).await.unwrap();
    let mut after = 0;
    // Read until the creation is numbered.
    while after == 0 {
        after = dao.events(EventStream::All, None, 0).await.unwrap().newest;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = slow.begin().await.unwrap();
    // A status change recorded as the DAO records it, in a transaction
    // that stays open.
    sqlx::query(
        "WITH changed AS (UPDATE async_query SET status = 'PROCESSING' WHERE id = $1 \
         RETURNING id, kind, principal_name, status, updated_on) \
         INSERT INTO async_query_event (owner, job_id, kind, from_status, to_status, at) \
         SELECT principal_name, id, kind, 'QUEUED', status, updated_on FROM changed",
    )
    .bind(late.id)
    .execute(&mut *tx)
    .await
    .unwrap();
    // Meanwhile others commit; the follower can read none of them while
    // the slow transaction is open (they might precede it) ...
    let mut quick = Vec::new();
    for _ in 0..3 {
        let job = sample_job(now);
        dao.create(&job).await.unwrap();
        quick.push(job.id);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let blocked = dao
        .events(EventStream::All, Some(after), 100)
        .await
        .unwrap();
    assert!(blocked.events.is_empty(), "{blocked:?}");
    // ... and once it commits, all four are read, none skipped.
    tx.commit().await.unwrap();
    let mut read = Vec::new();
    for _ in 0..500 {
        let page = dao
            .events(EventStream::All, Some(after), 100)
            .await
            .unwrap();
        after = page.last_id;
        read.extend(page.events.into_iter().map(|e| e.event.id));
        if read.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    read.sort();
    let mut expected = quick.clone();
    expected.push(late.id);
    expected.sort();
    assert_eq!(read, expected);
    db.drop_db().await;
}

/// Each principal keeps its newest events up to the bound; a cursor older
/// than what is kept reports `missed`, in its own stream and in the stream
/// of every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_trimmed_per_principal_and_old_cursors_missed_events() {
    let Some(db) = pg::fresh().await else { return };
    let dao = db.dao.clone().keep_events(2);
    let now = chrono::Utc::now();
    let mut alices = Vec::new();
    for _ in 0..3 {
        let job = sample_job(now);
        dao.create(&job).await.unwrap();
        let start = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now);
        dao.update_status(job.id, start).await.unwrap();
        alices.push(job.id);
    }
    let mut bobs = sample_job(now);
    bobs.principal.name = "bob".into();
    dao.create(&bobs).await.unwrap();
    let owner = sample_job(now).principal.name;
    // The cleaner's upkeep: 7 events numbered, then trimmed.
    let mut tidied = 0;
    for _ in 0..500 {
        tidied += dao.tidy_events().await.unwrap();
        if tidied >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tidied, 7);
    let stream = EventStream::Owner(&owner);
    let kept = dao.events(stream, None, 100).await.unwrap();
    assert_eq!(
        kept.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [5, 6]
    );
    assert!(!kept.missed);
    assert!(dao.events(stream, Some(3), 100).await.unwrap().missed);
    assert!(!dao.events(stream, Some(4), 100).await.unwrap().missed);
    // Bob's single event is within his bound.
    let bob = dao
        .events(EventStream::Owner("bob"), None, 10)
        .await
        .unwrap();
    assert_eq!(bob.events.len(), 1);
    // The stream of every change has lost 4 of alice's events.
    let all = dao.events(EventStream::All, Some(0), 100).await.unwrap();
    assert!(all.missed);
    assert_eq!(all.events.len(), 3);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM async_query_event")
        .fetch_one(dao.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3);
    db.drop_db().await;
}

/// The cleaner trims through the service: with 2 events kept per
/// principal, alice's 6 changes leave her newest 2, and a cursor from the
/// start has missed the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_trims_each_principals_stream() {
    let Some(db) = pg::fresh().await else { return };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(db.dao.clone().keep_events(2));
    let service = AsyncQueryService::builder()
        .config(Config {
            cleaner_interval: Duration::from_millis(100),
            ..Config::default()
        })
        .dao(dao)
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    for _ in 0..3 {
        let job = service
            .submit(&alice(), SubmitRequest::query("sleep 0"))
            .await
            .unwrap();
        assert_eq!(job.status, QueryStatus::Complete);
    }
    let page = read(&service, &alice(), |p| {
        p.events.first().is_some_and(|e| e.seq == 5)
    })
    .await;
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [5, 6]
    );
    let from_start = service.events_after(&alice(), Some(0), 10).await.unwrap();
    assert!(from_start.missed);
    service.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}

/// While the store fails, `events_after` reports it (`Error::Dao`) and a
/// subscription waits; once the store is back, the subscription receives
/// the changes made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_failing_store() {
    let Some(db) = pg::fresh().await else { return };
    let (faulty, faults) = FaultyDao::new(Arc::new(db.dao.clone()));
    let service = AsyncQueryService::builder()
        .config(Config {
            poll_interval: Duration::from_millis(50),
            ..Config::default()
        })
        .dao(Arc::new(faulty))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    let mut events = service.subscribe(&alice());
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults.only(&["events"]);
    faults.fail_always(true);
    let failed = service.events_after(&alice(), None, 10).await;
    assert!(matches!(failed, Err(Error::Dao { .. })), "{failed:?}");
    let job = service
        .submit(&alice(), SubmitRequest::query("sleep 0"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.fail_always(false);
    let done = next_of(&mut events, job.id).await;
    assert_eq!(done.id, job.id);
    service.shutdown(Duration::from_secs(5)).await.unwrap();
    db.drop_db().await;
}
