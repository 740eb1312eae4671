//! The `update_progress` contract.

use chrono::TimeDelta;
use uuid::Uuid;

use super::events::read_until;
use super::records::{cancelled_running, clean_up, fresh_lease, now, record, running};
use crate::dao::{AsyncApiDao, EventStream, StatusChange};
use crate::model::{AsyncQuery, QueryStatus};
use crate::progress::Progress;

async fn read(dao: &dyn AsyncApiDao, id: Uuid) -> AsyncQuery {
    dao.get(id)
        .await
        .expect("get failed")
        .expect("the record exists")
}

/// `update_progress`: a store keeps the latest progress of a job that is
/// `Processing` under the reporting owner's lease, without touching its
/// status or `updated_on`; refuses reports for other owners and other
/// statuses; keeps the last progress once the job ends; and, if it
/// [keeps events](AsyncApiDao::keeps_events), records a progress event
/// from and to `Processing`. A store that keeps no progress (the
/// default, which answers `false`) passes if it never claims to.
///
/// # Panics
///
/// On a broken rule, naming it.
pub async fn dao_progress(dao: &dyn AsyncApiDao) {
    let now = now();
    let lease = fresh_lease(now);
    let job = running(dao, now, &lease).await;
    let queued = record(now, QueryStatus::Queued);
    dao.create(&queued).await.expect("create failed");
    let cancelled = cancelled_running(dao, now, &lease).await;
    let mut created = vec![job.id, queued.id, cancelled.id];
    let later = now + TimeDelta::seconds(1);
    let first = Progress::records(10).of(100).with_message("ünïcode ✓ rows");

    let stored = dao
        .update_progress(job.id, lease.owner, &first, later)
        .await
        .expect("update_progress failed");
    if !stored {
        assert_eq!(
            read(dao, job.id).await.progress,
            None,
            "a store that answers false keeps no progress"
        );
        clean_up(dao, &created).await;
        return;
    }
    let after = read(dao, job.id).await;
    assert_eq!(
        after.progress.as_ref(),
        Some(&first),
        "progress round-trips"
    );
    assert_eq!(
        (after.status, after.updated_on),
        (QueryStatus::Processing, job.updated_on),
        "progress changes neither the status nor updated_on"
    );

    let stranger = Uuid::new_v4();
    let theirs = Progress::records(99);
    let refused = [
        (
            job.id,
            stranger,
            "a report from an instance that holds no lease is refused",
        ),
        (queued.id, lease.owner, "a queued job takes no progress"),
        (
            Uuid::new_v4(),
            lease.owner,
            "an unknown job takes no progress (and is not an error)",
        ),
        (
            cancelled.id,
            lease.owner,
            "a cancelled job (still under its lease) takes no progress",
        ),
    ];
    for (id, owner, rule) in refused {
        let stored = dao
            .update_progress(id, owner, &theirs, later)
            .await
            .expect("update_progress failed");
        assert!(!stored, "{rule}");
    }
    for id in [queued.id, cancelled.id] {
        assert_eq!(read(dao, id).await.progress, None);
    }

    let second = Progress::records(20).of(100);
    assert!(
        dao.update_progress(job.id, lease.owner, &second, later)
            .await
            .expect("update_progress failed"),
        "a later report is stored"
    );
    assert_eq!(read(dao, job.id).await.progress, Some(second.clone()));

    let done = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, later);
    dao.update_status(job.id, done)
        .await
        .expect("update failed");
    assert!(
        !dao.update_progress(job.id, lease.owner, &theirs, later)
            .await
            .expect("update_progress failed"),
        "a finished job takes no progress"
    );
    assert_eq!(
        read(dao, job.id).await.progress,
        Some(second),
        "a finished job keeps its last progress"
    );

    if dao.keeps_events() {
        // Events are read per owner: this check's own principal.
        let owner = format!("progress-{}", Uuid::new_v4().simple());
        let mine = AsyncQuery {
            principal: crate::model::Principal::new(owner.clone()),
            ..record(now, QueryStatus::Queued)
        };
        dao.create(&mine).await.expect("create failed");
        created.push(mine.id);
        let start = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now)
            .with_lease(lease.clone());
        dao.update_status(mine.id, start)
            .await
            .expect("update failed");
        dao.update_progress(mine.id, lease.owner, &first, later)
            .await
            .expect("update_progress failed");
        let page = read_until(
            dao,
            EventStream::Owner(&owner),
            None,
            10,
            "the progress event must be readable",
            |p| p.events.iter().any(|e| e.event.progress.is_some()),
        )
        .await;
        let event = page
            .events
            .iter()
            .map(|e| &e.event)
            .find(|e| e.progress.is_some())
            .expect("read_until found it");
        assert_eq!(
            (
                event.id,
                event.from,
                event.to,
                event.at,
                event.progress.as_ref()
            ),
            (
                mine.id,
                Some(QueryStatus::Processing),
                QueryStatus::Processing,
                later,
                Some(&first)
            ),
            "a progress event goes from and to PROCESSING, at the report's time"
        );
        assert!(
            page.events
                .iter()
                .filter(|e| e.event.progress.is_none())
                .all(|e| e.event.from != Some(e.event.to)),
            "status events carry no progress"
        );
    }
    clean_up(dao, &created).await;
}
