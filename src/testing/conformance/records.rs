//! Records and helpers the DAO checks share.

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::dao::{AsyncApiDao, CasOutcome, ExpiredRecord, StatusChange};
use crate::model::{AsyncQuery, JobKind, Lease, Principal, QueryResult, QueryStatus, ResultBody};

/// A `QUEUED` query record created at `now` with a fresh id, for tests of
/// back-ends.
pub fn sample_job(now: DateTime<Utc>) -> AsyncQuery {
    record(now, QueryStatus::Queued)
}

pub(super) fn record(now: DateTime<Utc>, status: QueryStatus) -> AsyncQuery {
    AsyncQuery {
        id: Uuid::new_v4(),
        kind: JobKind::Query,
        query: "select 1".into(),
        query_type: "SQL".into(),
        principal: Principal::new("conformance").with_role("tester"),
        status,
        async_after: std::time::Duration::from_secs(10),
        max_run_time: std::time::Duration::from_secs(3600),
        created_on: now,
        updated_on: now,
        result: None,
        lease: None,
        idempotency_key: None,
        progress: None,
        attempt: 1,
        retry_at: None,
    }
}

/// Moves a fresh `Queued` record along `path` with compare-and-set.
pub(super) async fn walk(
    dao: &dyn AsyncApiDao,
    now: DateTime<Utc>,
    path: &[QueryStatus],
) -> AsyncQuery {
    let job = record(now, QueryStatus::Queued);
    dao.create(&job).await.expect("create failed");
    let mut current = job;
    for pair in path.windows(2) {
        let change = StatusChange::new(pair[0], pair[1], now);
        current = match dao.update_status(current.id, change).await {
            Ok(CasOutcome::Applied(job)) => job,
            other => panic!(
                "legal change {} -> {} not applied: {other:?}",
                pair[0], pair[1]
            ),
        };
    }
    current
}

/// A path of legal changes from `Queued` to `status`.
pub(super) fn path_to(status: QueryStatus) -> Vec<QueryStatus> {
    use QueryStatus::*;
    match status {
        Queued => vec![Queued],
        Processing | Cancelled | TimedOut => vec![Queued, status],
        Complete | Failure => vec![Queued, Processing, status],
        CancelComplete => vec![Queued, Cancelled, CancelComplete],
    }
}

/// The suite's clock: SQL back-ends keep microseconds, and the suite
/// compares timestamps exactly.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A lease of a new instance, 30 s from `now`.
pub(super) fn fresh_lease(now: DateTime<Utc>) -> Lease {
    Lease {
        owner: Uuid::new_v4(),
        expires_at: now + chrono::TimeDelta::seconds(30),
    }
}

/// A fresh record moved to `Processing` under `lease`.
pub(super) async fn running(
    dao: &dyn AsyncApiDao,
    now: DateTime<Utc>,
    lease: &Lease,
) -> AsyncQuery {
    let job = record(now, QueryStatus::Queued);
    dao.create(&job).await.expect("create failed");
    let start = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now)
        .with_lease(lease.clone());
    match dao.update_status(job.id, start).await {
        Ok(CasOutcome::Applied(job)) => job,
        other => panic!("Queued -> Processing with a lease must apply, got {other:?}"),
    }
}

/// A fresh record moved to `Processing` under `lease`, then to
/// `Cancelled` (which keeps the lease).
pub(super) async fn cancelled_running(
    dao: &dyn AsyncApiDao,
    now: DateTime<Utc>,
    lease: &Lease,
) -> AsyncQuery {
    let job = running(dao, now, lease).await;
    let cancel = StatusChange::new(QueryStatus::Processing, QueryStatus::Cancelled, now);
    match dao.update_status(job.id, cancel).await {
        Ok(CasOutcome::Applied(job)) => job,
        other => panic!("Processing -> Cancelled must apply, got {other:?}"),
    }
}

/// Fails unless the store holds no queued jobs (claims are checked for
/// order, so others would be claimed first).
pub(super) async fn assert_nothing_queued(dao: &dyn AsyncApiDao) {
    let leftovers = dao
        .list(&crate::dao::ListFilter::statuses([QueryStatus::Queued]))
        .await
        .expect("list failed");
    assert!(
        leftovers.is_empty(),
        "run the conformance suite on a store without other queued jobs ({} found)",
        leftovers.len()
    );
}

/// Deletes the records a check created (best effort: `delete`'s own rules
/// are checked by `dao_delete` alone, so a broken `delete` fails only that
/// area).
pub(super) async fn clean_up(dao: &dyn AsyncApiDao, created: &[Uuid]) {
    let _ = dao.delete(created).await;
}

/// A record moved to `Complete` at `at`, with `body` as its result.
pub(super) async fn completed(
    dao: &dyn AsyncApiDao,
    at: DateTime<Utc>,
    body: ResultBody,
) -> AsyncQuery {
    let running = walk(dao, at, &path_to(QueryStatus::Processing)).await;
    let result = QueryResult {
        record_count: Some(1),
        content_length: Some(1),
        completed_on: at,
        body,
        message: None,
        truncated: false,
    };
    let done =
        StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, at).with_result(result);
    match dao.update_status(running.id, done).await {
        Ok(CasOutcome::Applied(job)) => job,
        other => panic!("Processing -> Complete must apply, got {other:?}"),
    }
}

/// What a recording reaper was handed.
pub(super) type Handed = std::sync::Arc<std::sync::Mutex<Vec<ExpiredRecord>>>;

/// A reaper that records every record it is handed and lets go of those
/// `allow` accepts.
pub(super) fn recording_reaper(
    allow: impl Fn(Uuid) -> bool + Send + 'static,
) -> (
    Handed,
    impl FnMut(Vec<ExpiredRecord>) -> futures::future::BoxFuture<'static, Vec<Uuid>> + Send,
) {
    use futures::FutureExt;
    let handed = Handed::default();
    let recorder = std::sync::Arc::clone(&handed);
    let reap = move |records: Vec<ExpiredRecord>| {
        let allowed: Vec<Uuid> = records
            .iter()
            .map(|r| r.id)
            .filter(|id| allow(*id))
            .collect();
        recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(records);
        futures::future::ready(allowed).boxed()
    };
    (handed, reap)
}

/// The records a recording reaper was handed.
pub(super) fn handed_out(handed: &Handed) -> Vec<ExpiredRecord> {
    handed.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
