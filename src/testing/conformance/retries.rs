//! Retries: `PROCESSING → QUEUED` for the next attempt, and claims that
//! wait for a retry's time.

use chrono::TimeDelta;
use uuid::Uuid;

use super::records::{assert_nothing_queued, clean_up, fresh_lease, now, record, running};
use crate::dao::{AsyncApiDao, CasOutcome, Claim, StatusChange};
use crate::model::{AsyncQuery, QueryStatus};

fn applied(outcome: CasOutcome, what: &str) -> AsyncQuery {
    match outcome {
        CasOutcome::Applied(job) => job,
        other => panic!("{what} must apply, got {other:?}"),
    }
}

fn ids(jobs: &[AsyncQuery]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

/// A retry ([`StatusChange::retry`]) moves a running job back to `Queued`
/// with its `attempt` raised by one, its lease cleared and its `retry_at`
/// set; claims (`claim` and `update_and_claim`) pass over it until their
/// time reaches `retry_at`, then take it in its old place in its
/// principal's queue and clear `retry_at`; any other change clears
/// `retry_at` too. `attempt` and `retry_at` are stored as given by
/// `create`.
///
/// Needs a store without other queued jobs.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_retries(dao: &dyn AsyncApiDao) {
    let now = now();
    assert_nothing_queued(dao).await;
    let mut created = Vec::new();

    let stored = AsyncQuery {
        attempt: 3,
        retry_at: Some(now + TimeDelta::hours(1)),
        ..record(now, QueryStatus::Queued)
    };
    dao.create(&stored).await.expect("create failed");
    created.push(stored.id);
    let read = dao.get(stored.id).await.expect("get failed");
    assert_eq!(
        read.as_ref(),
        Some(&stored),
        "create stores attempt and retry_at"
    );
    dao.delete(&[stored.id]).await.expect("delete failed");

    // An older job (created first) and a newer one, both running.
    let lease = fresh_lease(now);
    let older = running(dao, now, &lease).await;
    let newer = running(dao, now + TimeDelta::milliseconds(1), &lease).await;
    created.extend([older.id, newer.id]);
    assert_eq!(older.attempt, 1, "a new record is on attempt 1");

    let due = now + TimeDelta::seconds(10);
    let retried = applied(
        dao.update_status(older.id, StatusChange::retry(now, due))
            .await
            .expect("update_status failed"),
        "Processing -> Queued (a retry)",
    );
    assert_eq!(
        (
            retried.status,
            retried.attempt,
            retried.lease.as_ref(),
            retried.retry_at
        ),
        (QueryStatus::Queued, 2, None, Some(due)),
        "a retry queues the next attempt, clears the lease and sets retry_at"
    );
    let read = dao.get(older.id).await.expect("get failed");
    assert_eq!(read.as_ref(), Some(&retried), "the retry is stored");

    // The newer job retries in a batch whose claim comes before its time.
    let sooner = now + TimeDelta::seconds(5);
    let claim_at = |at| Claim::new(fresh_lease(at), 10, at);
    let (outcomes, claimed) = dao
        .update_and_claim(
            &[(newer.id, StatusChange::retry(now, sooner))],
            &claim_at(now),
        )
        .await
        .expect("update_and_claim failed");
    let [outcome] = &outcomes[..] else {
        panic!("one outcome per change, got {outcomes:?}");
    };
    let newer_retried = applied(outcome.clone(), "a retry in a batch");
    assert_eq!(
        (newer_retried.attempt, newer_retried.retry_at),
        (2, Some(sooner)),
        "a retry in a batch is applied like a lone one"
    );
    assert!(
        claimed.is_empty(),
        "a claim before the jobs' retry_at takes neither: {:?}",
        ids(&claimed)
    );
    let early = dao
        .claim(&claim_at(sooner - TimeDelta::milliseconds(1)))
        .await;
    assert!(
        early.expect("claim failed").is_empty(),
        "a claim just before retry_at takes nothing"
    );

    // At `sooner` only the newer job is due; at `due` the older one too,
    // and it goes first (its place in the queue is kept).
    let at_sooner = dao.claim(&claim_at(sooner)).await.expect("claim failed");
    assert_eq!(
        ids(&at_sooner),
        [newer.id],
        "a claim at retry_at takes the job"
    );
    let [taken] = &at_sooner[..] else {
        unreachable!()
    };
    assert_eq!(
        (taken.status, taken.attempt, taken.retry_at),
        (QueryStatus::Processing, 2, None),
        "a claim of a retry runs attempt 2 and clears retry_at"
    );
    let back = applied(
        dao.update_status(newer.id, StatusChange::retry(sooner, due))
            .await
            .expect("update_status failed"),
        "a second retry",
    );
    assert_eq!(back.attempt, 3, "each retry raises the attempt");
    let claim = Claim::new(fresh_lease(due), 1, due);
    let first = dao.claim(&claim).await.expect("claim failed");
    assert_eq!(
        ids(&first),
        [older.id],
        "of two due retries, the older job goes first"
    );

    // A queued retry can be cancelled; the change clears retry_at.
    let cancel = StatusChange::new(QueryStatus::Queued, QueryStatus::Cancelled, due);
    let cancelled = applied(
        dao.update_status(newer.id, cancel)
            .await
            .expect("update_status failed"),
        "Queued -> Cancelled of a job waiting for a retry",
    );
    assert_eq!(
        (cancelled.attempt, cancelled.retry_at),
        (3, None),
        "a cancel keeps the attempt and clears retry_at"
    );
    clean_up(dao, &created).await;
}
