//! A failing DAO or storage gives typed errors, ends jobs FAILURE where the
//! work cannot be saved, and never panics or leaves a job stuck.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::{Faults, FaultyDao, FaultyStorage, ScriptedExecutor};
use async_query::{
    AsyncQueryService, Config, Error, ExportFormat, MemoryDao, MemoryStorage, QueryStatus,
    SubmitRequest,
};
use common::*;

struct Faulty {
    service: AsyncQueryService,
    dao_faults: Arc<Faults>,
    storage_faults: Arc<Faults>,
    storage: MemoryStorage,
    executor: Arc<ScriptedExecutor>,
}

fn faulty(config: Config) -> Faulty {
    let (dao, dao_faults) = FaultyDao::new(Arc::new(MemoryDao::new()));
    let storage = MemoryStorage::new();
    let (faulty_storage, storage_faults) = FaultyStorage::new(Arc::new(storage.clone()));
    let executor = Arc::new(ScriptedExecutor::new());
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(Arc::new(dao))
        .storage(Arc::new(faulty_storage))
        .executor(executor.clone())
        .build()
        .unwrap();
    Faulty {
        service,
        dao_faults,
        storage_faults,
        storage,
        executor,
    }
}

/// [`faulty`] whose next DAO call of `operation` fails (only that one).
fn failing_once(config: Config, operation: &'static str) -> Faulty {
    let f = faulty(config);
    f.dao_faults.only(&[operation]);
    f.dao_faults.fail_nth(1);
    f
}

/// One worker slot.
fn one_slot() -> Config {
    Config {
        pool_size: 1,
        ..config()
    }
}

fn is_injected_dao_error(e: &Error) -> bool {
    matches!(e, Error::Dao { .. })
        && std::error::Error::source(e).is_some_and(|s| s.to_string().starts_with("injected fault"))
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_a_typed_error_and_leaks_nothing() {
    let f = failing_once(
        Config {
            max_queued: 1,
            ..one_slot()
        },
        "create",
    );
    let id = uuid::Uuid::new_v4();
    let err = f
        .service
        .submit(&alice(), SubmitRequest::query("x").with_id(id))
        .await
        .unwrap_err();
    assert!(is_injected_dao_error(&err), "{err:?}");
    // Neither the slot nor the id was kept: the same id and both the slot and
    // the single queue place work afterwards.
    let zero = Duration::ZERO;
    let job = submit(
        &f.service,
        SubmitRequest::query("block")
            .with_id(id)
            .with_async_after(zero),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Processing);
    let queued = submit(&f.service, SubmitRequest::query("y").with_async_after(zero)).await;
    assert_eq!(queued.status, QueryStatus::Queued);
}

#[tokio::test(start_paused = true)]
async fn a_result_that_cannot_be_saved_ends_failure() {
    // The COMPLETE write (with the claim for the freed slot) fails, and so
    // does writing it again alone: the result cannot be saved.
    let f = faulty(config());
    f.dao_faults.only(&["update_and_claim", "update_status"]);
    f.dao_faults.fail_nth(1);
    f.dao_faults.fail_nth(2);
    let job = submit(&f.service, SubmitRequest::query("fine")).await;
    assert_eq!(job.status, QueryStatus::Failure);
    let message = job.result.unwrap().message.unwrap();
    assert!(
        message.starts_with("the result could not be saved"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_result_whose_write_fails_once_is_written_again() {
    let f = failing_once(config(), "update_and_claim"); // the COMPLETE write
    let job = submit(&f.service, SubmitRequest::query("fine")).await;
    assert_eq!(job.status, QueryStatus::Complete, "{job:?}");
    assert_eq!(job.result.unwrap().inline_body(), Some("fine"));
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_gives_typed_errors_and_no_stuck_job() {
    let f = faulty(Config {
        lease: Duration::from_secs(30),
        cleaner_interval: Duration::from_secs(60),
        ..config()
    });
    let job = submit(
        &f.service,
        SubmitRequest::query("sleep 1000").with_async_after(Duration::ZERO),
    )
    .await;
    f.dao_faults.fail_for(Duration::from_secs(120));
    // Callers get typed errors during the outage.
    let err = f.service.get(&alice(), job.id).await.unwrap_err();
    assert!(is_injected_dao_error(&err), "{err:?}");
    let err = f
        .service
        .submit(&alice(), SubmitRequest::query("x"))
        .await
        .unwrap_err();
    assert!(is_injected_dao_error(&err), "{err:?}");
    // The job finished during the outage and could not be saved; once the
    // database is back, the cleaner ends it (its lease was not renewed).
    tokio::time::sleep(Duration::from_secs(300)).await;
    let record = f.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(record.status, QueryStatus::TimedOut);
    // And the service works again.
    let next = submit(&f.service, SubmitRequest::query("again")).await;
    assert_eq!(next.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn storage_failing_half_way_ends_failure_with_nothing_stored() {
    let f = faulty(config());
    f.storage_faults.only(&["write"]);
    f.storage_faults.fail_nth(3); // the third 64 KiB chunk
    let job = submit(
        &f.service,
        SubmitRequest::export("rows 100000", ExportFormat::NDJSON),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Failure);
    let message = job.result.unwrap().message.unwrap();
    assert!(
        message.starts_with("could not store the export"),
        "{message}"
    );
    assert!(
        f.storage.names().is_empty(),
        "partial export visible: {:?}",
        f.storage.names()
    );
    assert!(matches!(
        f.service.download(&alice(), job.id, None).await,
        Err(Error::NoResult { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_publish_ends_failure_and_a_failed_download_is_typed() {
    let f = faulty(config());
    f.storage_faults.only(&["publish"]);
    f.storage_faults.fail_nth(1);
    let job = submit(
        &f.service,
        SubmitRequest::export("rows 10", ExportFormat::CSV),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Failure);
    assert!(f.storage.names().is_empty());

    f.storage_faults.only(&["open"]);
    let ok = submit(
        &f.service,
        SubmitRequest::export("rows 10", ExportFormat::CSV),
    )
    .await;
    assert_eq!(ok.status, QueryStatus::Complete);
    f.storage_faults.fail_nth(1);
    assert!(matches!(
        f.service.download(&alice(), ok.id, None).await,
        Err(Error::Storage { .. })
    ));
    assert!(
        f.service.download(&alice(), ok.id, None).await.is_ok(),
        "the next try works"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_database_delays_but_does_not_break_the_lifecycle() {
    let f = faulty(config());
    f.dao_faults.delay(Duration::from_millis(200));
    let start = tokio::time::Instant::now();
    let job = submit(&f.service, SubmitRequest::query("sleep 100")).await;
    assert_eq!(job.status, QueryStatus::Complete);
    // the store's clock, read before the first write (200 ms) + create
    // (200 ms) + run (100 ms) + the COMPLETE write (200 ms)
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    // Later submits do not read it again.
    let start = tokio::time::Instant::now();
    let job = submit(&f.service, SubmitRequest::query("sleep 100")).await;
    assert_eq!(job.status, QueryStatus::Complete);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert!(f.dao_faults.calls() >= 2);
}

/// A service on `config` (a cleaner every minute) with a finished export
/// whose storage refuses deletes for 900 s, 850 s later (past a 600 s
/// retention or result lifetime, before the storage recovers).
async fn an_export_storage_will_not_delete(config: Config) -> (Faulty, async_query::AsyncQuery) {
    let f = faulty(Config {
        cleaner_interval: Duration::from_secs(60),
        ..config
    });
    let job = submit(
        &f.service,
        SubmitRequest::export("rows 5", ExportFormat::CSV),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete);
    f.storage_faults.only(&["delete"]);
    f.storage_faults.fail_for(Duration::from_secs(900));
    tokio::time::sleep(Duration::from_secs(850)).await;
    (f, job)
}

#[tokio::test(start_paused = true)]
async fn a_failing_cleaner_retries_and_catches_up() {
    // The storage refuses deletes for a while: the record is kept so that it
    // never points at a deleted result.
    let (f, job) = an_export_storage_will_not_delete(Config {
        retention: Duration::from_secs(600),
        ..config()
    })
    .await;
    assert!(f.service.get(&alice(), job.id).await.is_ok());
    assert_eq!(f.storage.names().len(), 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(matches!(
        f.service.get(&alice(), job.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(f.storage.names().is_empty());
}

/// A result the storage will not delete stays downloadable, its record
/// untouched, until a later sweep can delete it.
#[tokio::test(start_paused = true)]
async fn a_result_the_storage_cannot_delete_outlives_its_lifetime_intact() {
    let (f, job) = an_export_storage_will_not_delete(Config {
        result_lifetime: Some(Duration::from_secs(600)),
        ..config()
    })
    .await;
    assert_eq!(f.service.get(&alice(), job.id).await.unwrap(), job);
    assert!(f.service.download(&alice(), job.id, None).await.is_ok());
    tokio::time::sleep(Duration::from_secs(120)).await;
    let expired = f.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(
        expired.result.map(|r| r.body),
        Some(async_query::ResultBody::Expired)
    );
    assert!(f.storage.names().is_empty());
    assert!(matches!(
        f.service.download(&alice(), job.id, None).await,
        Err(Error::ResultExpired { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_a_typed_error_and_leaks_nothing() {
    let f = failing_once(
        Config {
            max_queued: 3,
            ..one_slot()
        },
        "create_many",
    );
    let requests = || (0..3).map(|_| SubmitRequest::query("sleep 1")).collect();
    let err = f
        .service
        .submit_many(&alice(), requests())
        .await
        .unwrap_err();
    assert!(is_injected_dao_error(&err), "{err:?}");
    // Nothing is left in the queue count: the same batch fits and runs.
    let jobs = f.service.submit_many(&alice(), requests()).await.unwrap();
    for job in jobs {
        let done = f.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
}

/// Exports submitted as one batch on a service that claims ahead and writes
/// records in batches (`claim_batch` 4).
async fn batched_exports(f: &Faulty, n: usize) -> Vec<async_query::AsyncQuery> {
    let requests = (0..n)
        .map(|_| SubmitRequest::export("rows 10", ExportFormat::CSV))
        .collect();
    f.service.submit_many(&alice(), requests).await.unwrap()
}

fn batching() -> Config {
    Config {
        claim_batch: 4,
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_batched_write_is_retried_job_by_job() {
    let f = faulty(batching());
    f.dao_faults.only(&["update_and_claim"]);
    f.dao_faults.fail_always(true);
    let jobs = batched_exports(&f, 4).await;
    for job in &jobs {
        let done = f.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
        f.service.download(&alice(), job.id, None).await.unwrap();
    }
    assert!(f.dao_faults.calls() >= 1, "the batch was tried");
    assert_eq!(f.storage.names().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_batched_write_whose_reply_was_lost_keeps_its_results() {
    let f = faulty(batching());
    f.dao_faults.only(&["update_and_claim"]);
    f.dao_faults.lose_replies(true);
    f.dao_faults.fail_always(true);
    let jobs = batched_exports(&f, 4).await;
    for job in &jobs {
        // Waiters see the result (the retry recognises its own write)...
        let done = f.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
        // ...and the export the record points at is still there.
        f.service.download(&alice(), job.id, None).await.unwrap();
    }
    assert_eq!(f.storage.names().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_its_record_waits_to_be_written_ends_cancel_complete() {
    let f = faulty(batching());
    f.dao_faults.only(&["update_and_claim"]);
    f.dao_faults.delay(SECOND);
    let jobs = batched_exports(&f, 1).await;
    // The export has run; its COMPLETE waits in the (slow) batched write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let record = f.service.get(&alice(), jobs[0].id).await.unwrap();
    assert_eq!(record.status, QueryStatus::Processing);
    let cancelled = f
        .service
        .cancel(&alice(), jobs[0].id)
        .await
        .unwrap()
        .into_record();
    assert_eq!(cancelled.status, QueryStatus::CancelComplete);
    assert!(
        f.storage.names().is_empty(),
        "the discarded export was deleted: {:?}",
        f.storage.names()
    );
}

/// A worker's claim is committed, but its reply is slow; a cancel commits
/// PROCESSING -> CANCELLED and is mirrored first. The job must still be
/// stopped (never started), and subscribers must see its changes in order.
#[tokio::test(start_paused = true)]
async fn a_cancel_that_overtakes_a_claims_reply_stops_the_job_and_events_stay_in_order() {
    let f = faulty(one_slot());
    f.dao_faults.only(&["claim"]);
    f.dao_faults.delay_replies(SECOND);
    let mut events = f.service.subscribe(&admin());
    let jobs = f
        .service
        .submit_many(&alice(), vec![SubmitRequest::query("sleep 60000")])
        .await
        .unwrap();
    let id = jobs[0].id;
    // The dispatcher has claimed the job; the reply is on its way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let record = f.service.cancel(&alice(), id).await.unwrap().into_record();
    assert_eq!(record.status, QueryStatus::CancelComplete);
    assert!(
        started.elapsed() < 2 * SECOND,
        "the cancel waited for the job to run: {:?}",
        started.elapsed()
    );
    assert!(f.executor.started().is_empty(), "a cancelled job started");

    let mut seen = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await {
        assert_eq!(event.id, id);
        seen.push((event.from, event.to));
    }
    use QueryStatus::*;
    assert_eq!(
        seen,
        [
            (None, Queued),
            (Some(Queued), Processing),
            (Some(Processing), Cancelled),
            (Some(Cancelled), CancelComplete),
        ]
    );
}

/// As above, but the claim's reply is lost (the claim was committed, the
/// worker never learns of it). The cancelled job, claimed by nobody who
/// will run it, must still end CANCEL_COMPLETE: this instance lets it go
/// and its lease runs out.
#[tokio::test(start_paused = true)]
async fn a_cancel_of_a_job_whose_claim_reply_was_lost_still_completes() {
    let f = failing_once(one_slot(), "claim");
    f.dao_faults.lose_replies(true);
    let jobs = f
        .service
        .submit_many(&alice(), vec![SubmitRequest::query("sleep 60000")])
        .await
        .unwrap();
    let id = jobs[0].id;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.dao_faults.calls() >= 1, "the claim was made");
    f.service.cancel(&alice(), id).await.unwrap();
    let lease = f.service.config().lease;
    let limit = 3 * lease + f.service.config().cleaner_interval;
    let done = f.service.wait(&alice(), id, limit).await.unwrap();
    assert_eq!(done.status, QueryStatus::CancelComplete);
    // Completed by the cleaner after the lease ran out (the claim was
    // committed), not as a job cancelled while still queued.
    let message = done.result.and_then(|r| r.message).unwrap_or_default();
    assert!(
        message.starts_with("cancelled; ") && message.contains("lease"),
        "{message}"
    );
    assert!(f.executor.started().is_empty(), "a cancelled job started");
}

/// The write that makes an export COMPLETE commits, but its reply is lost.
/// The record points at the export, so the export must stay: the worker
/// learns the record's real state before it deletes anything.
#[tokio::test(start_paused = true)]
async fn an_export_whose_complete_reply_was_lost_keeps_its_result() {
    let f = failing_once(config(), "update_and_claim"); // the COMPLETE write
    f.dao_faults.lose_replies(true);
    let job = submit(
        &f.service,
        SubmitRequest::export("rows 10", ExportFormat::CSV),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete, "{job:?}");
    assert_eq!(f.storage.names().len(), 1, "the export was deleted");
    let download = f.service.download(&alice(), job.id, None).await.unwrap();
    assert_eq!(download.record_count, Some(10));
    let record = f.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(record.status, QueryStatus::Complete);
}

/// The store is down for a moment (shorter than a lease) as an export
/// finishes. The worker keeps trying until the store answers, then records
/// what it learns: nothing was saved, so FAILURE and no export left; or
/// (second case) the COMPLETE write had landed before its reply was lost,
/// so COMPLETE with the export kept.
#[tokio::test(start_paused = true)]
async fn an_outage_as_an_export_finishes_loses_nothing() {
    for lose_replies in [false, true] {
        let f = faulty(config());
        f.dao_faults.lose_replies(lose_replies);
        let job = submit(
            &f.service,
            SubmitRequest::export("rows 10 every 100", ExportFormat::CSV)
                .with_async_after(Duration::ZERO),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.dao_faults.fail_for(3 * SECOND);
        tokio::time::sleep(5 * SECOND).await;
        let done = f.service.wait(&alice(), job.id, SECOND).await.unwrap();
        if lose_replies {
            assert_eq!(done.status, QueryStatus::Complete, "{done:?}");
            let download = f.service.download(&alice(), job.id, None).await.unwrap();
            assert_eq!(download.record_count, Some(10));
        } else {
            assert_eq!(done.status, QueryStatus::Failure, "{done:?}");
            let message = done.result.and_then(|r| r.message).unwrap_or_default();
            assert!(
                message.starts_with("the result could not be saved"),
                "{message}"
            );
            assert!(f.storage.names().is_empty(), "{:?}", f.storage.names());
        }
    }
}

/// A host's DAO that panics once, in the write that completes a job.
struct PanicsOnComplete {
    inner: MemoryDao,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl async_query::AsyncApiDao for PanicsOnComplete {
    async fn create(&self, job: &async_query::AsyncQuery) -> async_query::Result<()> {
        self.inner.create(job).await
    }
    async fn get(&self, id: uuid::Uuid) -> async_query::Result<Option<async_query::AsyncQuery>> {
        self.inner.get(id).await
    }
    async fn update_status(
        &self,
        id: uuid::Uuid,
        change: async_query::dao::StatusChange,
    ) -> async_query::Result<async_query::dao::CasOutcome> {
        if change.to == QueryStatus::Complete
            && !self
                .panicked
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a bug in the host's DAO");
        }
        self.inner.update_status(id, change).await
    }
    async fn claim(
        &self,
        claim: &async_query::dao::Claim,
    ) -> async_query::Result<Vec<async_query::AsyncQuery>> {
        self.inner.claim(claim).await
    }
    async fn renew_leases(
        &self,
        owner: uuid::Uuid,
        ids: &[uuid::Uuid],
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> async_query::Result<Vec<(uuid::Uuid, QueryStatus)>> {
        self.inner.renew_leases(owner, ids, expires_at).await
    }
    async fn list(
        &self,
        filter: &async_query::dao::ListFilter,
    ) -> async_query::Result<Vec<async_query::AsyncQuery>> {
        self.inner.list(filter).await
    }
    async fn delete(&self, ids: &[uuid::Uuid]) -> async_query::Result<u64> {
        self.inner.delete(ids).await
    }
}

/// A worker that dies (here: the DAO panics under it) releases its job:
/// the heartbeat stops renewing the lease, and the cleaner ends the job
/// after it instead of leaving it PROCESSING for ever. The slot is freed.
#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_releases_its_job() {
    let dao = Arc::new(PanicsOnComplete {
        inner: MemoryDao::new(),
        panicked: Default::default(),
    });
    let service = AsyncQueryService::builder()
        .config(Config {
            lease: Duration::from_secs(6),
            cleaner_interval: Duration::from_secs(5),
            ..one_slot()
        })
        .dao(dao.clone())
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    let job = submit(
        &service,
        SubmitRequest::query("sleep 10").with_async_after(Duration::ZERO),
    )
    .await;
    let ended = service.wait(&alice(), job.id, 30 * SECOND).await.unwrap();
    assert_eq!(ended.status, QueryStatus::TimedOut, "{ended:?}");
    let message = ended.result.and_then(|r| r.message).unwrap_or_default();
    assert!(message.contains("lease expired"), "{message}");
    let next = submit(&service, SubmitRequest::query("again")).await;
    assert_eq!(next.status, QueryStatus::Complete, "the slot was freed");
}

/// The service sets its clock by the store's before its first write: with
/// a store an hour ahead, records are written an hour ahead. A reading
/// slower than a twentieth of the lease, or a store whose clock fails,
/// leaves the system clock. (Real time: under a paused Tokio clock the
/// service never sets its clock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_clock_follows_the_store_clock_unless_the_reading_is_vague_or_fails() {
    let hour = chrono::TimeDelta::hours(1);
    let near = |at: chrono::DateTime<chrono::Utc>, want: chrono::DateTime<chrono::Utc>| {
        (at - want).abs() < chrono::TimeDelta::seconds(5)
    };
    let created_on = |slow: bool, failing: bool| async move {
        // Faults set before the service starts: it reads the store's clock
        // at once.
        let (dao, faults) = FaultyDao::new(Arc::new(MemoryDao::new()));
        faults.store_clock(Some(hour));
        faults.only(&["now"]);
        if slow {
            // 100 ms per reading, above a twentieth of the 1 s lease.
            faults.delay(Duration::from_millis(100));
        }
        faults.fail_always(failing);
        let service = AsyncQueryService::builder()
            .config(Config {
                lease: Duration::from_secs(1),
                ..config()
            })
            .dao(Arc::new(dao))
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .unwrap();
        submit(&service, SubmitRequest::query("q")).await.created_on
    };
    let now = chrono::Utc::now();
    assert!(
        near(created_on(false, false).await, now + hour),
        "set by the store"
    );
    assert!(
        near(created_on(true, false).await, now),
        "a vague reading is dropped"
    );
    assert!(
        near(created_on(false, true).await, now),
        "a failing store clock is ignored"
    );
}

/// The in-memory job store's record limit refuses a submit with a typed
/// error naming the limit, stores nothing, and takes jobs again once
/// records go.
#[tokio::test(start_paused = true)]
async fn a_full_memory_store_refuses_submits_until_records_go() {
    use async_query::AsyncApiDao;
    let dao = Arc::new(MemoryDao::new().with_max_records(3));
    let service = AsyncQueryService::builder()
        .config(Config {
            max_queued: 100,
            ..Config::default()
        })
        .dao(dao.clone())
        .executor(Arc::new(async_query::testing::ScriptedExecutor::new()))
        .build()
        .unwrap();
    let alice = async_query::Principal::new("alice");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = service
            .submit(&alice, SubmitRequest::query("sleep 1"))
            .await
            .unwrap();
        ids.push(job.id);
    }
    let full = service
        .submit(&alice, SubmitRequest::query("sleep 1"))
        .await;
    match &full {
        Err(e @ Error::Dao { .. }) => assert!(e.to_string().contains("full"), "{e}"),
        other => panic!("{other:?}"),
    }
    let batch = service
        .submit_many(&alice, vec![SubmitRequest::query("sleep 1")])
        .await;
    assert!(matches!(batch, Err(Error::Dao { .. })), "{batch:?}");
    assert_eq!(dao.list(&Default::default()).await.unwrap().len(), 3);
    dao.delete(&ids[..1]).await.unwrap();
    let again = service
        .submit(&alice, SubmitRequest::query("sleep 1"))
        .await
        .unwrap();
    assert_eq!(again.status, QueryStatus::Complete);
}

/// The in-memory job store's cap on inline result bytes ends a job whose
/// result does not fit as `FAILURE`, with a message naming the limit,
/// keeps the results it holds, and takes results again once records go.
#[tokio::test(start_paused = true)]
async fn a_memory_store_full_of_results_fails_the_job_that_does_not_fit() {
    use async_query::AsyncApiDao;
    let dao = Arc::new(MemoryDao::new().with_max_result_bytes(100));
    let service = AsyncQueryService::builder()
        .config(Config::default())
        .dao(dao.clone())
        .executor(Arc::new(async_query::testing::ScriptedExecutor::new()))
        .build()
        .unwrap();
    let alice = async_query::Principal::new("alice");
    // The scripted executor answers an unknown query with its own text.
    let first = service
        .submit(&alice, SubmitRequest::query("a".repeat(60)))
        .await
        .unwrap();
    assert_eq!(first.status, QueryStatus::Complete);
    assert_eq!(dao.result_bytes(), 60);
    let second = service
        .submit(&alice, SubmitRequest::query("b".repeat(60)))
        .await
        .unwrap();
    assert_eq!(second.status, QueryStatus::Failure);
    let message = second.result.as_ref().and_then(|r| r.message.clone());
    let message = message.unwrap_or_default();
    assert!(message.contains("could not be saved"), "{message}");
    assert_eq!(dao.result_bytes(), 60, "the stored result is kept");
    let kept = dao.get(first.id).await.unwrap().unwrap();
    assert_eq!(kept.result.unwrap().inline_body(), Some(&*"a".repeat(60)));
    dao.delete(&[first.id]).await.unwrap();
    assert_eq!(dao.result_bytes(), 0);
    let third = service
        .submit(&alice, SubmitRequest::query("c".repeat(60)))
        .await
        .unwrap();
    assert_eq!(third.status, QueryStatus::Complete);
    assert_eq!(dao.result_bytes(), 60);
}
