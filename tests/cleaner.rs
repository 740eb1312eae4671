//! The cleaner: retention, expired leases, run-time limits, stale
//! cancellations and recovery after a crash. All on Tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::model::Lease;
use async_query::testing::ScriptedExecutor;
use async_query::{
    AsyncApiDao, AsyncQuery, AsyncQueryService, Config, ExportFormat, FileSystemStorage, JobKind,
    MemoryDao, MemoryStorage, QueryStatus, SubmitRequest,
};
use chrono::{TimeDelta, Utc};
use common::*;

const MINUTE: Duration = Duration::from_secs(60);

fn cleaner_config() -> Config {
    Config {
        cleaner_interval: MINUTE,
        retention: Duration::from_secs(3600),
        max_run_time: Duration::from_secs(3600),
        ..config()
    }
}

/// A record as another instance would have left it.
fn foreign(status: QueryStatus, owner: Option<Lease>, age: TimeDelta) -> AsyncQuery {
    let at = Utc::now() - age;
    AsyncQuery {
        id: uuid::Uuid::new_v4(),
        kind: JobKind::Query,
        query: "remote".into(),
        query_type: "".into(),
        principal: alice(),
        status,
        async_after: Duration::ZERO,
        max_run_time: Duration::from_secs(3600),
        created_on: at,
        updated_on: at,
        result: None,
        lease: owner,
        idempotency_key: None,
        progress: None,
        attempt: 1,
        retry_at: None,
    }
}

fn lease_for(d: TimeDelta) -> Option<Lease> {
    Some(Lease {
        owner: uuid::Uuid::new_v4(),
        expires_at: Utc::now() + d,
    })
}

/// A service on `config` with in-memory storage that the test can look
/// into, and a finished export and query of `alice`'s.
async fn an_export_and_a_query(
    config: Config,
) -> (AsyncQueryService, MemoryStorage, AsyncQuery, AsyncQuery) {
    let storage = MemoryStorage::new();
    let service = AsyncQueryService::builder()
        .config(config)
        .storage(Arc::new(storage.clone()))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    let export = submit(
        &service,
        SubmitRequest::export("rows 10", ExportFormat::CSV),
    )
    .await;
    let query = submit(&service, SubmitRequest::query("q")).await;
    assert_eq!(storage.names().len(), 1);
    (service, storage, export, query)
}

#[tokio::test(start_paused = true)]
async fn retention_deletes_records_and_their_results_together() {
    let (service, storage, export, query) = an_export_and_a_query(cleaner_config()).await;

    tokio::time::sleep(Duration::from_secs(3600 - 120)).await;
    assert!(
        service.get(&alice(), export.id).await.is_ok(),
        "kept within retention"
    );
    assert!(service.download(&alice(), export.id, None).await.is_ok());

    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    for id in [export.id, query.id] {
        assert!(matches!(
            service.get(&alice(), id).await,
            Err(async_query::Error::NotFound { .. })
        ));
    }
    assert!(storage.names().is_empty(), "results go with their records");
}

#[tokio::test(start_paused = true)]
async fn results_expire_before_their_records() {
    let (service, storage, export, query) = an_export_and_a_query(Config {
        result_lifetime: Some(Duration::from_secs(600)),
        ..cleaner_config()
    })
    .await;
    let failed = submit(&service, SubmitRequest::query("fail no")).await;
    assert_eq!(
        query.result.as_ref().and_then(|r| r.inline_body()),
        Some("q")
    );

    // Within the lifetime: all there.
    tokio::time::sleep(Duration::from_secs(600 - 90)).await;
    assert!(service.download(&alice(), export.id, None).await.is_ok());

    // Past it (and a sweep): results gone, records kept, and saying why.
    tokio::time::sleep(Duration::from_secs(3 * 60)).await;
    assert!(storage.names().is_empty(), "the export is deleted");
    for before in [&export, &query] {
        let after = service.get(&alice(), before.id).await.unwrap();
        assert_eq!(after.status, QueryStatus::Complete);
        assert_eq!(after.updated_on, before.updated_on, "times stay");
        let result = after.result.unwrap();
        assert_eq!(result.body, async_query::ResultBody::Expired);
        let message = result.message.unwrap_or_default();
        assert!(message.starts_with("result expired"), "{message}");
        assert!(message.contains("10m"), "{message}");
        assert_eq!(
            result.record_count,
            before.result.as_ref().unwrap().record_count,
            "how much it was stays"
        );
    }
    assert!(matches!(
        service.download(&alice(), export.id, None).await,
        Err(async_query::Error::ResultExpired { id }) if id == export.id
    ));
    // A job that ended without output is not touched.
    assert_eq!(service.get(&alice(), failed.id).await.unwrap(), failed);

    // Retention still deletes the records at their time.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    for id in [export.id, query.id, failed.id] {
        assert!(matches!(
            service.get(&alice(), id).await,
            Err(async_query::Error::NotFound { .. })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn jobs_of_a_stopped_instance_are_timed_out_after_their_lease() {
    let h = harness(cleaner_config());
    let processing = foreign(
        QueryStatus::Processing,
        lease_for(TimeDelta::seconds(30)),
        TimeDelta::zero(),
    );
    let cancelled = foreign(
        QueryStatus::Cancelled,
        lease_for(TimeDelta::seconds(30)),
        TimeDelta::zero(),
    );
    let alive = foreign(
        QueryStatus::Processing,
        lease_for(TimeDelta::hours(1)),
        TimeDelta::zero(),
    );
    for job in [&processing, &cancelled, &alive] {
        h.dao.create(job).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(90)).await; // lease + one sweep
    let p = h.service.get(&alice(), processing.id).await.unwrap();
    assert_eq!(p.status, QueryStatus::TimedOut);
    assert!(
        p.result
            .unwrap()
            .message
            .unwrap()
            .contains("its lease expired: instance")
    );
    assert_eq!(p.lease, None);
    let c = h.service.get(&alice(), cancelled.id).await.unwrap();
    assert_eq!(c.status, QueryStatus::CancelComplete);
    assert_eq!(
        h.service.get(&alice(), alive.id).await.unwrap().status,
        QueryStatus::Processing,
        "a live lease is respected"
    );
}

#[tokio::test(start_paused = true)]
async fn own_long_jobs_keep_their_lease_and_finish() {
    let h = harness(Config {
        lease: Duration::from_secs(30),
        ..cleaner_config()
    });
    let job = submit(
        &h.service,
        SubmitRequest::query("sleep 600000").with_async_after(Duration::ZERO),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    let running = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(
        running.status,
        QueryStatus::Processing,
        "heartbeats keep the lease alive"
    );
    assert!(running.lease.unwrap().expires_at > running.created_on + TimeDelta::seconds(300));
    let done = h
        .service
        .wait(&alice(), job.id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(done.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_job_elsewhere_is_timed_out_at_the_run_time_limit() {
    let h = harness(cleaner_config());
    // Its owner still renews the lease, but it has run for two hours.
    let stuck = foreign(
        QueryStatus::Processing,
        lease_for(TimeDelta::days(1)),
        TimeDelta::hours(2),
    );
    h.dao.create(&stuck).await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let job = h.service.get(&alice(), stuck.id).await.unwrap();
    assert_eq!(job.status, QueryStatus::TimedOut);
    assert!(
        job.result
            .unwrap()
            .message
            .unwrap()
            .contains("maximum run time")
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_nobody_finished_is_completed() {
    let h = harness(Config {
        cancellation_check_interval: Duration::from_secs(300),
        ..cleaner_config()
    });
    // Cancelled while queued by an instance that died before finishing it.
    let job = foreign(QueryStatus::Cancelled, None, TimeDelta::zero());
    h.dao.create(&job).await.unwrap();
    tokio::time::sleep(Duration::from_secs(240)).await;
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::Cancelled,
        "not before the interval"
    );
    tokio::time::sleep(Duration::from_secs(150)).await;
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::CancelComplete
    );
}

#[tokio::test(start_paused = true)]
async fn the_cleaner_can_be_disabled() {
    let h = harness(Config {
        cleaner_enabled: false,
        ..cleaner_config()
    });
    let job = foreign(
        QueryStatus::Processing,
        lease_for(TimeDelta::seconds(1)),
        TimeDelta::zero(),
    );
    h.dao.create(&job).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::Processing
    );
}

async fn crash_and_restart(same_instance: bool) {
    let dir = tempfile::tempdir().unwrap();
    let dao = Arc::new(MemoryDao::new());
    let storage = Arc::new(FileSystemStorage::new(dir.path()).await.unwrap());
    let config = Config {
        pool_size: 1,
        ..cleaner_config()
    };
    let build = |config: Config| {
        AsyncQueryService::builder()
            .config(config)
            .dao(dao.clone())
            .storage(storage.clone())
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .unwrap()
    };
    let first = build(config.clone());
    let zero = Duration::ZERO;
    let running = first
        .submit(
            &alice(),
            SubmitRequest::export("rows 1000000 every 1", ExportFormat::CSV).with_async_after(zero),
        )
        .await
        .unwrap();
    let queued = first
        .submit(
            &alice(),
            SubmitRequest::query("after the crash").with_async_after(zero),
        )
        .await
        .unwrap();
    assert_eq!(queued.status, QueryStatus::Queued);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "the export is being written"
    );
    drop(first); // no shutdown: a crash
    tokio::time::sleep(Duration::from_millis(10)).await;

    let second = build(if same_instance {
        config.clone()
    } else {
        Config {
            instance_id: uuid::Uuid::new_v4(),
            ..config.clone()
        }
    });
    let done = second
        .wait(&alice(), queued.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        done.status,
        QueryStatus::Complete,
        "jobs left queued run on the new instance"
    );
    let limit = if same_instance {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(120)
    };
    let ended = second.wait(&alice(), running.id, limit).await.unwrap();
    assert_eq!(
        ended.status,
        QueryStatus::TimedOut,
        "the interrupted job is not left PROCESSING"
    );
    let message = ended.result.unwrap().message.unwrap();
    if same_instance {
        assert!(message.contains("restarted"), "{message}");
    } else {
        assert!(message.contains("lease expired"), "{message}");
    }
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        files.is_empty(),
        "the interrupted export left {} files",
        files.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_recovers_its_own_jobs_at_once() {
    crash_and_restart(true).await;
}

#[tokio::test(start_paused = true)]
async fn another_instance_times_out_a_crashed_ones_jobs_after_the_lease() {
    crash_and_restart(false).await;
}

#[tokio::test(start_paused = true)]
async fn partial_exports_of_a_killed_process_are_removed_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FileSystemStorage::new(dir.path()).await.unwrap());
    let _service = AsyncQueryService::builder()
        .config(cleaner_config())
        .storage(storage.clone())
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    // What a process killed mid-export leaves: a hidden temporary file.
    let stale = dir.path().join(".tmp-0b9a5c2e-dead");
    let fresh = dir.path().join(".tmp-0b9a5c2e-live");
    let published = dir.path().join("0b9a5c2e");
    for path in [&stale, &fresh, &published] {
        std::fs::write(path, b"partial").unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&published)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(90)).await; // one sweep
    assert!(
        !stale.exists(),
        "a partial file older than any live writer is removed"
    );
    assert!(
        fresh.exists(),
        "a partial file a live writer may still own is kept"
    );
    assert!(published.exists(), "published objects are not partials");
}

/// A service dropped before its background tasks first ran must not run
/// start-up recovery afterwards: a new run of the same instance id may be
/// running those jobs already (found by the lifecycle property test).
#[tokio::test(start_paused = true)]
async fn a_dropped_service_does_not_recover_the_jobs_of_its_successor() {
    let dao = Arc::new(MemoryDao::new());
    let config = cleaner_config();
    let start = || {
        AsyncQueryService::builder()
            .config(config.clone())
            .dao(dao.clone())
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .unwrap()
    };
    let crashed = start();
    let successor = start();
    drop(crashed);
    let job = submit(
        &successor,
        SubmitRequest::query("sleep 5000").with_async_after(Duration::ZERO),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Processing);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = dao.get(job.id).await.unwrap().unwrap();
    assert_eq!(
        running.status,
        QueryStatus::Processing,
        "{:?}",
        running.result
    );
    let done = successor.wait(&alice(), job.id, MINUTE).await.unwrap();
    assert_eq!(done.status, QueryStatus::Complete);
}
