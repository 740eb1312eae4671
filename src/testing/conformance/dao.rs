//! Conformance suites: the contract of [`AsyncApiDao`] and
//! [`ResultStorageEngine`] as executable checks.
//!
//! Each suite panics with a message naming the broken rule, like
//! `object_store`'s integration functions.

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use futures::TryStreamExt;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, CasOutcome, ListFilter, StatusChange};
use crate::error::Error;
use crate::model::{AsyncQuery, JobKind, Lease, Principal, QueryResult, QueryStatus, ResultBody};
use crate::storage::ResultStorageEngine;

/// A `QUEUED` query record created at `now` with a fresh id, for tests of
/// back-ends.
pub fn sample_job(now: DateTime<Utc>) -> AsyncQuery {
    record(now, QueryStatus::Queued)
}

fn record(now: DateTime<Utc>, status: QueryStatus) -> AsyncQuery {
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
    }
}

/// Moves a fresh `Queued` record along `path` with compare-and-set.
async fn walk(dao: &dyn AsyncApiDao, now: DateTime<Utc>, path: &[QueryStatus]) -> AsyncQuery {
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
fn path_to(status: QueryStatus) -> Vec<QueryStatus> {
    use QueryStatus::*;
    match status {
        Queued => vec![Queued],
        Processing | Cancelled | TimedOut => vec![Queued, status],
        Complete | Failure => vec![Queued, Processing, status],
        CancelComplete => vec![Queued, Cancelled, CancelComplete],
    }
}

/// Runs every check of the [`AsyncApiDao`] contract against `dao`.
///
/// Use a store that holds no other queued jobs (claims are checked for
/// ordering); records the suite creates are deleted again except when a
/// check fails.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_conformance(dao: &dyn AsyncApiDao) {
    // SQL back-ends keep microseconds; the suite compares timestamps exactly.
    let now = Utc::now().trunc_subsecs(6);
    let mut created = Vec::new();

    // create / get / duplicate
    let job = record(now, QueryStatus::Queued);
    dao.create(&job).await.expect("create failed");
    created.push(job.id);
    let read = dao.get(job.id).await.expect("get failed");
    assert_eq!(
        read.as_ref(),
        Some(&job),
        "get must return the record as created"
    );
    assert!(
        dao.get(Uuid::new_v4()).await.expect("get failed").is_none(),
        "get of an unknown id must be None"
    );
    match dao.create(&job).await {
        Err(Error::DuplicateId { id }) => assert_eq!(id, job.id),
        other => panic!("creating a duplicate id must fail with DuplicateId, got {other:?}"),
    }

    // create_many: all stored, in order; all or nothing on a duplicate.
    // (Terminal records, so the claim checks below do not see them.)
    let batch: Vec<AsyncQuery> = (0..3).map(|_| record(now, QueryStatus::Complete)).collect();
    dao.create_many(&batch).await.expect("create_many failed");
    for job in &batch {
        created.push(job.id);
        assert_eq!(
            dao.get(job.id).await.expect("get failed").as_ref(),
            Some(job),
            "create_many must store every record as given"
        );
    }
    let fresh = record(now, QueryStatus::Complete);
    for (clash, with) in [(batch[1].clone(), batch[1].id), (fresh.clone(), fresh.id)] {
        let attempt = [fresh.clone(), clash];
        match dao.create_many(&attempt).await {
            Err(Error::DuplicateId { id }) => assert_eq!(id, with),
            other => {
                panic!("create_many with a duplicate id must fail with DuplicateId, got {other:?}")
            }
        }
        assert!(
            dao.get(fresh.id).await.expect("get failed").is_none(),
            "a failed create_many must store nothing"
        );
    }
    dao.create_many(&[])
        .await
        .expect("an empty create_many is fine");
    // Large batches too (SQL back-ends split them into several statements):
    // a duplicate at the end undoes the start.
    let mut large: Vec<AsyncQuery> = (0..1_200)
        .map(|_| record(now, QueryStatus::Complete))
        .collect();
    large.push(batch[0].clone());
    match dao.create_many(&large).await {
        Err(Error::DuplicateId { id }) => assert_eq!(id, batch[0].id),
        other => {
            panic!("create_many with a duplicate id must fail with DuplicateId, got {other:?}")
        }
    }
    assert!(
        dao.get(large[0].id).await.expect("get failed").is_none(),
        "a failed create_many must store nothing, however large"
    );
    large.pop();
    dao.create_many(&large)
        .await
        .expect("a large create_many failed");
    created.extend(large.iter().map(|j| j.id));
    assert_eq!(
        dao.get(large[1_199].id).await.expect("get failed").as_ref(),
        large.last()
    );

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
    let lease = Lease {
        owner: Uuid::new_v4(),
        expires_at: now + TimeDelta::seconds(30),
    };
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
    let owner = Uuid::new_v4();
    let lease = Lease {
        owner,
        expires_at: now + TimeDelta::seconds(30),
    };
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

    // retention delete (the records so far), then claims on a clean queue
    let deleted = dao.delete(&created).await.expect("delete failed");
    assert_eq!(
        deleted,
        created.len() as u64,
        "delete must report how many records existed"
    );
    assert!(
        dao.get(created[0]).await.expect("get failed").is_none(),
        "deleted records must be gone"
    );
    assert_eq!(dao.delete(&created[..1]).await.expect("delete failed"), 0);
    created.clear();

    // claims: oldest first, limit, only queued, leases set
    let leftovers = dao
        .list(&ListFilter::statuses([QueryStatus::Queued]))
        .await
        .expect("list failed");
    assert!(
        leftovers.is_empty(),
        "run the conformance suite on a store without other queued jobs ({} found)",
        leftovers.len()
    );
    let mut queued = Vec::new();
    for i in 0..6 {
        let job = record(now + TimeDelta::milliseconds(i), QueryStatus::Queued);
        dao.create(&job).await.expect("create failed");
        created.push(job.id);
        queued.push(job.id);
    }
    let first = dao.claim(&lease, 2, now).await.expect("claim failed");
    let ids: Vec<Uuid> = first.iter().map(|j| j.id).collect();
    assert_eq!(
        ids,
        queued[..2],
        "claim must take the oldest queued jobs, in order"
    );
    for job in &first {
        assert_eq!(
            job.status,
            QueryStatus::Processing,
            "claimed jobs must be Processing"
        );
        assert_eq!(
            job.lease.as_ref(),
            Some(&lease),
            "claimed jobs must carry the lease"
        );
    }
    // concurrent claimers never share a job
    let other = Lease {
        owner: Uuid::new_v4(),
        ..lease.clone()
    };
    let (a, b) = tokio::join!(dao.claim(&lease, 3, now), dao.claim(&other, 3, now));
    let mut all: Vec<Uuid> = a
        .expect("claim failed")
        .into_iter()
        .chain(b.expect("claim failed"))
        .map(|j| j.id)
        .collect();
    all.sort();
    let mut expected = queued[2..].to_vec();
    expected.sort();
    assert_eq!(
        all, expected,
        "concurrent claims must hand out each queued job exactly once"
    );
    assert!(
        dao.claim(&lease, 5, now)
            .await
            .expect("claim failed")
            .is_empty(),
        "nothing left to claim"
    );

    // lease renewal: only the owner's, and statuses reported
    let mine = first[0].id;
    let later = now + TimeDelta::seconds(90);
    let statuses = dao
        .renew_leases(owner, &[mine, Uuid::new_v4()], later)
        .await
        .expect("renew failed");
    assert_eq!(
        statuses,
        vec![(mine, QueryStatus::Processing)],
        "renew must report existing ids only"
    );
    let renewed = dao
        .get(mine)
        .await
        .expect("get failed")
        .expect("record vanished");
    assert_eq!(
        renewed.lease.map(|l| l.expires_at),
        Some(later),
        "the owner's lease must be extended"
    );
    let stranger = dao
        .renew_leases(Uuid::new_v4(), &[first[1].id], later)
        .await
        .expect("renew failed");
    assert_eq!(stranger, vec![(first[1].id, QueryStatus::Processing)]);
    let untouched = dao
        .get(first[1].id)
        .await
        .expect("get failed")
        .expect("record vanished");
    assert_eq!(
        untouched.lease.map(|l| l.expires_at),
        Some(lease.expires_at),
        "another instance must not extend a lease it does not hold"
    );

    // listing for the cleaner
    let expired = dao
        .list(&ListFilter {
            statuses: vec![QueryStatus::Processing],
            lease_expired_before: Some(now + TimeDelta::seconds(60)),
            owner: Some(owner),
            ..ListFilter::default()
        })
        .await
        .expect("list failed");
    let expired_ids: Vec<Uuid> = expired.iter().map(|j| j.id).collect();
    assert!(
        expired_ids.contains(&first[1].id),
        "an expired lease must be listed"
    );
    assert!(
        !expired_ids.contains(&mine),
        "a renewed lease must not be listed as expired"
    );
    let limited = dao
        .list(&ListFilter {
            statuses: vec![QueryStatus::Processing],
            limit: 1,
            ..ListFilter::default()
        })
        .await
        .expect("list failed");
    assert_eq!(limited.len(), 1, "list must respect its limit");
    let old = dao
        .list(&ListFilter {
            updated_before: Some(now),
            ..ListFilter::default()
        })
        .await
        .expect("list failed");
    assert!(
        old.iter().all(|j| !created.contains(&j.id)),
        "updated_before is strict: records updated at `now` are not older than `now`"
    );

    let deleted = dao.delete(&created).await.expect("delete failed");
    assert_eq!(
        deleted,
        created.len() as u64,
        "delete must report how many records existed"
    );
}

async fn read_all(
    storage: &dyn ResultStorageEngine,
    name: &str,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let stream = storage
        .open(name, range)
        .await
        .expect("open failed")
        .unwrap_or_else(|| panic!("{name} must exist"));
    let chunks: Vec<Bytes> = stream.body.try_collect().await.expect("read failed");
    chunks.concat()
}

/// Runs every check of the [`ResultStorageEngine`] contract against
/// `storage`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_conformance(storage: &dyn ResultStorageEngine) {
    let name = format!("conformance-{}.csv", Uuid::new_v4().simple());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    // nothing visible before publish
    let mut writer = storage.create(&name).await.expect("create failed");
    for chunk in body.chunks(64 * 1024) {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write failed");
    }
    assert!(
        storage
            .open(&name, None)
            .await
            .expect("open failed")
            .is_none(),
        "unpublished data must not be visible"
    );
    assert_eq!(storage.len(&name).await.expect("len failed"), None);
    assert_eq!(
        writer.publish().await.expect("publish failed"),
        body.len() as u64,
        "publish must return the length"
    );

    // whole reads, lengths, ranges
    assert_eq!(
        read_all(storage, &name, None).await,
        body,
        "read must return what was written"
    );
    assert_eq!(
        storage.len(&name).await.expect("len failed"),
        Some(body.len() as u64)
    );
    let len = body.len() as u64;
    for range in [0..1, 1..2, 65_535..65_537, len - 1..len, 10..len + 100] {
        let stream = storage
            .open(&name, Some(range.clone()))
            .await
            .expect("open failed")
            .expect("exists");
        assert_eq!(stream.total_len, len);
        let end = range.end.min(len);
        assert_eq!(
            stream.range,
            range.start..end,
            "the range end must be clamped"
        );
        let got = read_all(storage, &name, Some(range.clone())).await;
        assert_eq!(
            got,
            body[range.start as usize..end as usize],
            "range {range:?} read wrong bytes"
        );
    }
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the bad inputs
    let bad_ranges = [len..len + 1, 5..4];
    for bad in bad_ranges {
        match storage.open(&name, Some(bad.clone())).await {
            Err(Error::RangeNotSatisfiable { .. }) => {}
            other => panic!("range {bad:?} must be RangeNotSatisfiable, got {other:?}"),
        }
    }

    // replacing is atomic: readers see the old object until publish
    let mut writer = storage.create(&name).await.expect("create failed");
    writer
        .write(Bytes::from_static(b"new"))
        .await
        .expect("write failed");
    assert_eq!(
        read_all(storage, &name, None).await,
        body,
        "the old object must stay until publish"
    );
    writer.publish().await.expect("publish failed");
    assert_eq!(read_all(storage, &name, None).await, b"new");

    // abort and drop leave nothing
    let aborted = format!("conformance-{}", Uuid::new_v4().simple());
    let mut writer = storage.create(&aborted).await.expect("create failed");
    writer
        .write(Bytes::from_static(b"partial"))
        .await
        .expect("write failed");
    writer.abort().await.expect("abort failed");
    assert!(
        storage
            .open(&aborted, None)
            .await
            .expect("open failed")
            .is_none(),
        "aborted data must not be visible"
    );
    let mut writer = storage.create(&aborted).await.expect("create failed");
    writer
        .write(Bytes::from_static(b"partial"))
        .await
        .expect("write failed");
    drop(writer);
    assert!(
        storage
            .open(&aborted, None)
            .await
            .expect("open failed")
            .is_none(),
        "dropped writers must not publish"
    );

    // empty objects
    let empty = format!("conformance-{}", Uuid::new_v4().simple());
    storage
        .create(&empty)
        .await
        .expect("create failed")
        .publish()
        .await
        .expect("publish failed");
    assert_eq!(read_all(storage, &empty, None).await, b"");
    assert!(storage.delete(&empty).await.expect("delete failed"));

    // names that could escape are refused everywhere
    for bad in ["../escape", "a/b", ".hidden", ""] {
        assert!(
            matches!(storage.create(bad).await, Err(Error::InvalidName { .. })),
            "create({bad:?})"
        );
        assert!(
            matches!(
                storage.open(bad, None).await,
                Err(Error::InvalidName { .. })
            ),
            "open({bad:?})"
        );
        assert!(
            matches!(storage.delete(bad).await, Err(Error::InvalidName { .. })),
            "delete({bad:?})"
        );
    }

    // delete
    assert!(
        storage.delete(&name).await.expect("delete failed"),
        "delete of an existing object must say true"
    );
    assert!(
        !storage.delete(&name).await.expect("delete failed"),
        "delete of a missing object must say false"
    );
    assert!(
        storage
            .open(&name, None)
            .await
            .expect("open failed")
            .is_none()
    );
}
