//! Creating, reading and deleting records.

use chrono::TimeDelta;
use futures::FutureExt;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, ExpiredRecord};
use crate::error::Error;
use crate::model::{AsyncQuery, QueryStatus, ResultBody};

use super::records::*;

/// `create`, `create_many` (all or nothing, in order, also when large) and
/// `get`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_create_and_get(dao: &dyn AsyncApiDao) {
    let now = now();
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

    clean_up(dao, &created).await;
}

/// `delete`: reports how many records existed; deleted records are gone.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_delete(dao: &dyn AsyncApiDao) {
    let now = now();
    let jobs = [
        record(now, QueryStatus::Queued),
        walk(dao, now, &path_to(QueryStatus::Complete)).await,
        walk(dao, now, &path_to(QueryStatus::Processing)).await,
    ];
    dao.create(&jobs[0]).await.expect("create failed");
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let deleted = dao
        .delete(&[ids[0], ids[1], Uuid::new_v4()])
        .await
        .expect("delete failed");
    assert_eq!(deleted, 2, "delete must report how many records existed");
    for id in &ids[..2] {
        assert!(
            dao.get(*id).await.expect("get failed").is_none(),
            "deleted records must be gone"
        );
    }
    assert!(
        dao.get(ids[2]).await.expect("get failed").is_some(),
        "delete must keep the records it was not given"
    );
    assert_eq!(dao.delete(&ids[..2]).await.expect("delete failed"), 0);
    assert_eq!(dao.delete(&[]).await.expect("delete failed"), 0);
    clean_up(dao, &ids[2..]).await;
}

/// `delete_expired`: hands out only terminal records updated before the
/// cut-off, oldest first, at most `limit`, with their stored result's name
/// (none for inline bodies and failures); deletes exactly the ids the
/// reaper returns, and reports what it found and deleted.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_delete_expired(dao: &dyn AsyncApiDao) {
    let now = now();
    let old = now - TimeDelta::hours(2);
    let cut_off = now - TimeDelta::hours(1);
    let stored = format!("expired-{}.csv", Uuid::new_v4().simple());
    let kept_stored = format!("kept-{}.csv", Uuid::new_v4().simple());
    let with_export = completed(dao, old, ResultBody::Stored(stored.clone())).await;
    let inline = completed(dao, old, ResultBody::Inline("[1]".into())).await;
    let failed = walk(dao, old, &path_to(QueryStatus::Failure)).await;
    let refused = completed(dao, old, ResultBody::Stored(kept_stored.clone())).await;
    let running = walk(dao, old, &path_to(QueryStatus::Processing)).await;
    let recent = completed(dao, now, ResultBody::Stored("recent.csv".into())).await;
    let ours = [with_export.id, inline.id, failed.id, refused.id];
    let all = [&ours[..], &[running.id, recent.id]].concat();

    // The limit holds.
    let mut seen = Vec::new();
    let mut keep_all = |expired: Vec<ExpiredRecord>| {
        seen.push(expired.len());
        futures::future::ready(Vec::new()).boxed()
    };
    let purged = dao
        .delete_expired(cut_off, 1, &mut keep_all)
        .await
        .expect("delete_expired failed");
    assert!(
        purged.found <= 1,
        "delete_expired must hand out at most `limit` records"
    );
    assert_eq!(
        seen,
        vec![purged.found],
        "the reaper gets what was found, in one call"
    );
    assert_eq!(purged.deleted, 0, "records the reaper keeps must stay");

    let refused_id = refused.id;
    let (handed, mut reap) = recording_reaper(move |id| ours.contains(&id) && id != refused_id);
    let purged = dao
        .delete_expired(cut_off, 1_000, &mut reap)
        .await
        .expect("delete_expired failed");
    let handed = handed_out(&handed);
    let find = |id: Uuid| handed.iter().find(|r| r.id == id);
    for (job, name) in [
        (&with_export, Some(stored.as_str())),
        (&inline, None),
        (&failed, None),
        (&refused, Some(kept_stored.as_str())),
    ] {
        let record = find(job.id)
            .unwrap_or_else(|| panic!("an expired {} record must be handed out", job.status));
        assert_eq!(
            record.stored.as_deref(),
            name,
            "the stored name must be the result's, and none for other bodies"
        );
    }
    assert!(find(running.id).is_none(), "a running job is not expired");
    assert!(
        find(recent.id).is_none(),
        "a record updated after the cut-off is not expired"
    );
    assert_eq!(purged.found, handed.len());
    assert_eq!(
        purged.deleted, 3,
        "exactly the ids the reaper returns are deleted"
    );
    for id in &ours[..3] {
        assert!(
            dao.get(*id).await.expect("get failed").is_none(),
            "reaped records must be gone"
        );
    }
    for id in [refused.id, running.id, recent.id] {
        assert!(
            dao.get(id).await.expect("get failed").is_some(),
            "other records must stay"
        );
    }
    clean_up(dao, &all).await;
}
