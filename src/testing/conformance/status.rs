//! Status changes: compare-and-set, alone and in batches.

use chrono::TimeDelta;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, CasOutcome, Claim, StatusChange};
use crate::error::Error;
use crate::model::{QueryResult, QueryStatus, ResultBody};

use super::records::*;

/// `update_status`: every legal change of the lifecycle applies and every
/// illegal one fails with `InvalidTransition`, from every status; a stale
/// `from` is a `Conflict`; an unknown id is `NotFound`; leases are set,
/// kept and cleared, and results stored, as the contract says.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_compare_and_set(dao: &dyn AsyncApiDao) {
    let now = now();
    let mut created = Vec::new();

    // every legal and illegal compare-and-set, from every status
    for from in QueryStatus::ALL {
        for to in QueryStatus::ALL {
            let job = walk(dao, now, &path_to(from)).await;
            created.push(job.id);
            let later = now + TimeDelta::seconds(1);
            let change = StatusChange::new(from, to, later);
            let outcome = dao.update_status(job.id, change).await;
            if from.can_transition_to(to) {
                match outcome {
                    Ok(CasOutcome::Applied(updated)) => {
                        assert_eq!(updated.status, to, "{from} -> {to}: wrong status");
                        assert_eq!(
                            updated.updated_on, later,
                            "{from} -> {to}: updated_on not set"
                        );
                        assert_eq!(dao.get(job.id).await.expect("get failed"), Some(updated));
                    }
                    other => panic!("legal {from} -> {to} must apply, got {other:?}"),
                }
            } else {
                match outcome {
                    Err(Error::InvalidTransition { from: f, to: t }) => {
                        assert_eq!((f, t), (from, to));
                    }
                    other => panic!(
                        "illegal {from} -> {to} must fail with InvalidTransition, got {other:?}"
                    ),
                }
                let unchanged = dao
                    .get(job.id)
                    .await
                    .expect("get failed")
                    .expect("record vanished");
                assert_eq!(
                    unchanged.status, from,
                    "an illegal change must not be stored"
                );
            }
        }
    }

    // stale `from` loses without changing anything
    let job = walk(dao, now, &path_to(QueryStatus::Processing)).await;
    created.push(job.id);
    let stale = StatusChange::new(QueryStatus::Queued, QueryStatus::Cancelled, now);
    match dao.update_status(job.id, stale).await {
        Ok(CasOutcome::Conflict(current)) => assert_eq!(current.status, QueryStatus::Processing),
        other => panic!("a stale compare-and-set must be a Conflict, got {other:?}"),
    }
    match dao
        .update_status(
            Uuid::new_v4(),
            StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now),
        )
        .await
    {
        Err(Error::NotFound { .. }) => {}
        other => panic!("updating an unknown id must fail with NotFound, got {other:?}"),
    }

    // results and leases
    let lease = fresh_lease(now);
    let job = record(now, QueryStatus::Queued);
    dao.create(&job).await.expect("create failed");
    created.push(job.id);
    let running = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now)
        .with_lease(lease.clone());
    let Ok(CasOutcome::Applied(running)) = dao.update_status(job.id, running).await else {
        panic!("Queued -> Processing with a lease must apply");
    };
    assert_eq!(
        running.lease.as_ref(),
        Some(&lease),
        "moving to Processing must set the lease"
    );
    let cancelled = StatusChange::new(QueryStatus::Processing, QueryStatus::Cancelled, now);
    let Ok(CasOutcome::Applied(cancelled)) = dao.update_status(job.id, cancelled).await else {
        panic!("Processing -> Cancelled must apply");
    };
    assert_eq!(
        cancelled.lease.as_ref(),
        Some(&lease),
        "moving to Cancelled must keep the lease"
    );
    let result = QueryResult {
        record_count: Some(3),
        content_length: Some(7),
        completed_on: now,
        body: ResultBody::Inline("[1,2,3]".into()),
        message: Some("done \"quoted\" ✓".into()),
        truncated: true,
    };
    let done = StatusChange::new(QueryStatus::Cancelled, QueryStatus::CancelComplete, now)
        .with_result(result.clone());
    let Ok(CasOutcome::Applied(done)) = dao.update_status(job.id, done).await else {
        panic!("Cancelled -> CancelComplete must apply");
    };
    assert_eq!(
        done.lease, None,
        "moving to a terminal status must clear the lease"
    );
    assert_eq!(
        done.result.as_ref(),
        Some(&result),
        "the result must be stored as given"
    );
    assert_eq!(dao.get(job.id).await.expect("get failed"), Some(done));

    clean_up(dao, &created).await;
}

/// `update_status_many`: each change is its own compare-and-set, in order,
/// with the outcome `update_status` would give; an unknown id fails the
/// batch; one job named twice gets both changes in order.
/// `update_and_claim`: the same outcomes, and a claim of the oldest queued
/// jobs that the batch does not name.
///
/// Needs a store without other queued jobs.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_batches(dao: &dyn AsyncApiDao) {
    let now = now();
    let mut created = Vec::new();

    // update_status_many: each change is its own compare-and-set.
    let (a, b) = (
        walk(dao, now, &[QueryStatus::Queued, QueryStatus::Processing]).await,
        walk(
            dao,
            now,
            &[
                QueryStatus::Queued,
                QueryStatus::Processing,
                QueryStatus::Cancelled,
            ],
        )
        .await,
    );
    created.extend([a.id, b.id]);
    let later = now + TimeDelta::seconds(2);
    let outcomes = dao
        .update_status_many(&[
            (
                a.id,
                StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later),
            ),
            (
                b.id,
                StatusChange::new(QueryStatus::Processing, QueryStatus::Failure, later),
            ),
        ])
        .await
        .expect("update_status_many failed");
    match outcomes.as_slice() {
        [CasOutcome::Applied(done), CasOutcome::Conflict(current)] => {
            assert_eq!((done.id, done.status), (a.id, QueryStatus::Complete));
            assert_eq!((current.id, current.status), (b.id, QueryStatus::Cancelled));
        }
        other => {
            panic!("update_status_many must apply the first and report the conflict, got {other:?}")
        }
    }
    assert_eq!(
        dao.get(a.id).await.expect("get failed").map(|j| j.status),
        Some(QueryStatus::Complete)
    );

    // A batch the size the service writes (mixed outcomes, results and
    // leases): every outcome is what update_status would give, in order,
    // and is what `get` reads afterwards.
    let lease = fresh_lease(now);
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..70 {
        let (path, change, outcome) = match i % 3 {
            0 => (
                vec![QueryStatus::Queued, QueryStatus::Processing],
                StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later)
                    .with_result(QueryResult::message(later, format!("done {i}"))),
                QueryStatus::Complete,
            ),
            1 => (
                vec![QueryStatus::Queued],
                StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, later)
                    .with_lease(lease.clone()),
                QueryStatus::Processing,
            ),
            _ => (
                vec![QueryStatus::Queued, QueryStatus::Cancelled],
                StatusChange::new(QueryStatus::Processing, QueryStatus::Failure, later),
                QueryStatus::Cancelled,
            ),
        };
        let job = walk(dao, now, &path).await;
        created.push(job.id);
        batch.push((job.id, change));
        expected.push((job.id, outcome, i % 3 != 2));
    }
    let outcomes = dao
        .update_status_many(&batch)
        .await
        .expect("update_status_many of 70 failed");
    assert_eq!(outcomes.len(), batch.len(), "one outcome per change");
    for (outcome, (id, status, applies)) in outcomes.iter().zip(&expected) {
        let (record, applied) = match outcome {
            CasOutcome::Applied(record) => (record, true),
            CasOutcome::Conflict(record) => (record, false),
        };
        assert_eq!(
            (record.id, record.status, applied),
            (*id, *status, *applies),
            "update_status_many: outcome out of order or wrong"
        );
        assert_eq!(
            dao.get(*id).await.expect("get failed").as_ref(),
            Some(record)
        );
        match record.status {
            QueryStatus::Complete => {
                assert!(record.lease.is_none(), "a terminal record keeps no lease");
                assert!(
                    record
                        .result
                        .as_ref()
                        .and_then(|r| r.message.as_deref())
                        .is_some_and(|m| m.starts_with("done")),
                    "the batched result was not stored: {:?}",
                    record.result
                );
            }
            QueryStatus::Processing => assert_eq!(record.lease.as_ref(), Some(&lease)),
            _ => {}
        }
    }
    // A batch naming a job that does not exist fails with NotFound.
    let ghost = Uuid::new_v4();
    let result = dao
        .update_status_many(&[
            (
                ghost,
                StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, later),
            ),
            (
                a.id,
                StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later),
            ),
        ])
        .await;
    assert!(
        matches!(result, Err(Error::NotFound { id }) if id == ghost),
        "update_status_many with an unknown id must fail NotFound, got {result:?}"
    );

    // One job twice in a batch: its changes apply in order.
    let twice = walk(dao, now, &[QueryStatus::Queued]).await;
    created.push(twice.id);
    let outcomes = dao
        .update_status_many(&[
            (
                twice.id,
                StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, later)
                    .with_lease(lease.clone()),
            ),
            (
                twice.id,
                StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later),
            ),
        ])
        .await
        .expect("update_status_many with a repeated id failed");
    match outcomes.as_slice() {
        [CasOutcome::Applied(claimed), CasOutcome::Applied(done)] => {
            assert_eq!(claimed.status, QueryStatus::Processing);
            assert_eq!(done.status, QueryStatus::Complete);
        }
        other => panic!("both changes of one job must apply in order, got {other:?}"),
    }

    // update_and_claim: the changes as above, plus the oldest queued jobs
    // the batch does not name, under the lease.
    let running = walk(dao, now, &[QueryStatus::Queued, QueryStatus::Processing]).await;
    let mut queued = Vec::new();
    for i in 0..4 {
        let job = record(now + TimeDelta::milliseconds(i), QueryStatus::Queued);
        dao.create(&job).await.expect("create failed");
        queued.push(job.id);
    }
    created.push(running.id);
    created.extend(&queued);
    let claimer = fresh_lease(now);
    let batch = [
        (
            running.id,
            StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later)
                .with_result(QueryResult::message(later, "done")),
        ),
        // The oldest queued job is cancelled in the same call: never claimed.
        (
            queued[0],
            StatusChange::new(QueryStatus::Queued, QueryStatus::Cancelled, later),
        ),
    ];
    let (outcomes, claimed) = dao
        .update_and_claim(&batch, &Claim::new(claimer.clone(), 2, later))
        .await
        .expect("update_and_claim failed");
    assert!(
        matches!(outcomes.as_slice(), [CasOutcome::Applied(a), CasOutcome::Applied(b)]
            if a.status == QueryStatus::Complete && b.status == QueryStatus::Cancelled),
        "update_and_claim must apply its changes as update_status_many does, got {outcomes:?}"
    );
    let claimed_ids: Vec<Uuid> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(
        claimed_ids,
        queued[1..3],
        "update_and_claim must claim the oldest queued jobs the batch does not name, in order"
    );
    for job in &claimed {
        assert_eq!(
            (job.status, job.lease.as_ref()),
            (QueryStatus::Processing, Some(&claimer)),
            "claimed jobs must be Processing under the lease"
        );
    }
    let stored = dao.get(queued[1]).await.expect("get failed");
    assert_eq!(stored.as_ref(), claimed.first(), "the claim must be stored");
    let (outcomes, none) = dao
        .update_and_claim(&[], &Claim::new(claimer.clone(), 0, later))
        .await
        .expect("update_and_claim failed");
    assert!(
        outcomes.is_empty() && none.is_empty(),
        "a limit of 0 claims nothing"
    );
    let (_, last) = dao
        .update_and_claim(&[], &Claim::new(claimer.clone(), 5, later))
        .await
        .expect("update_and_claim failed");
    let last: Vec<Uuid> = last.iter().map(|j| j.id).collect();
    assert_eq!(last, queued[3..], "only queued jobs are claimed");

    clean_up(dao, &created).await;
}
