//! Claims, leases, listing for the cleaner, and pushed changes.

use chrono::TimeDelta;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, Claim, ListFilter, StatusChange};
use crate::model::QueryStatus;

use super::records::*;

/// `claim`: the oldest queued jobs first, up to the limit, only queued
/// ones, with the lease set; concurrent claimers never share a job.
///
/// Needs a store without other queued jobs.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_claims(dao: &dyn AsyncApiDao) {
    let now = now();
    let mut created = Vec::new();
    let lease = fresh_lease(now);

    // claims: oldest first, limit, only queued, leases set
    assert_nothing_queued(dao).await;
    let mut queued = Vec::new();
    for i in 0..6 {
        let job = record(now + TimeDelta::milliseconds(i), QueryStatus::Queued);
        dao.create(&job).await.expect("create failed");
        created.push(job.id);
        queued.push(job.id);
    }
    let first = dao
        .claim(&Claim::new(lease.clone(), 2, now))
        .await
        .expect("claim failed");
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
    let other = fresh_lease(now);
    let (mine, theirs) = (
        Claim::new(lease.clone(), 3, now),
        Claim::new(other.clone(), 3, now),
    );
    let (a, b) = tokio::join!(dao.claim(&mine), dao.claim(&theirs));
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
        dao.claim(&Claim::new(lease.clone(), 5, now))
            .await
            .expect("claim failed")
            .is_empty(),
        "nothing left to claim"
    );

    clean_up(dao, &created).await;
}

/// `renew_leases`: extends only the owner's leases, and reports the status
/// of every id that exists.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_leases(dao: &dyn AsyncApiDao) {
    let now = now();
    let lease = fresh_lease(now);
    let owner = lease.owner;
    let first = [
        running(dao, now, &lease).await,
        running(dao, now, &lease).await,
    ];
    let created: Vec<Uuid> = first.iter().map(|j| j.id).collect();

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

    // A cancelled job's lease is renewed too (its owner is still stopping
    // it); a queued job has none to renew, but its status is reported.
    let cancel = StatusChange::new(QueryStatus::Processing, QueryStatus::Cancelled, now);
    assert!(
        dao.update_status(first[1].id, cancel)
            .await
            .expect("cancel failed")
            .is_applied(),
        "Processing -> Cancelled must apply"
    );
    let queued = record(now, QueryStatus::Queued);
    dao.create(&queued).await.expect("create failed");
    let cancelled = cancelled_running(dao, now, &lease).await;
    let much_later = now + TimeDelta::seconds(120);
    let mut statuses = dao
        .renew_leases(owner, &[cancelled.id, queued.id], much_later)
        .await
        .expect("renew failed");
    statuses.sort();
    let mut expected = vec![
        (cancelled.id, QueryStatus::Cancelled),
        (queued.id, QueryStatus::Queued),
    ];
    expected.sort();
    assert_eq!(
        statuses, expected,
        "renew must report every existing id's status"
    );
    let renewed = dao
        .get(cancelled.id)
        .await
        .expect("get failed")
        .expect("record vanished");
    assert_eq!(
        renewed.lease.map(|l| l.expires_at),
        Some(much_later),
        "the lease of a cancelled job its owner still stops must be extended"
    );
    let still_queued = dao
        .get(queued.id)
        .await
        .expect("get failed")
        .expect("record vanished");
    assert_eq!(
        still_queued.lease, None,
        "renewing must not give a queued job a lease"
    );
    let mut created = created;
    created.extend([queued.id, cancelled.id]);
    clean_up(dao, &created).await;
}

/// `list`: every filter condition, the limit, oldest first.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_list(dao: &dyn AsyncApiDao) {
    let now = now();
    let lease = fresh_lease(now);
    let owner = lease.owner;
    // Two running under `owner`'s lease, one of them renewed; one under
    // another owner's; one finished.
    let first = [
        running(dao, now, &lease).await,
        running(dao, now, &lease).await,
    ];
    let mine = first[0].id;
    let renewed = dao
        .renew_leases(owner, &[mine], now + TimeDelta::seconds(90))
        .await
        .expect("renew failed");
    assert_eq!(renewed.len(), 1);
    let other = fresh_lease(now);
    let theirs = running(dao, now, &other).await;
    let done = walk(dao, now, &path_to(QueryStatus::Complete)).await;
    let created = vec![first[0].id, first[1].id, theirs.id, done.id];

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

    assert!(
        !expired_ids.contains(&theirs.id),
        "the owner filter must leave other instances' jobs out"
    );
    let processing = dao
        .list(&ListFilter::statuses([QueryStatus::Processing]))
        .await
        .expect("list failed");
    let ours: Vec<Uuid> = processing
        .iter()
        .map(|j| j.id)
        .filter(|id| created.contains(id))
        .collect();
    assert_eq!(
        ours,
        created[..3],
        "list must return the matching records, oldest first"
    );
    let complete = dao
        .list(&ListFilter::statuses([QueryStatus::Complete]))
        .await
        .expect("list failed");
    assert!(
        complete.iter().any(|j| j.id == done.id)
            && complete.iter().all(|j| j.status == QueryStatus::Complete),
        "the status filter must hold"
    );
    clean_up(dao, &created).await;
}

/// `now`: a back-end with a clock of its own reports times that never go
/// back and are within a day of this machine's (a wrong unit shows as
/// decades). One without (`None`) passes.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_clock(dao: &dyn AsyncApiDao) {
    let Some(first) = dao.now().await.expect("now failed") else {
        return;
    };
    let second = dao
        .now()
        .await
        .expect("now failed")
        .expect("now must keep reporting a clock once it has reported one");
    assert!(
        second >= first,
        "now must never go back: {first}, then {second}"
    );
    let off = (first - chrono::Utc::now()).abs();
    assert!(
        off < chrono::TimeDelta::days(1),
        "now must be the time, in UTC: it is {off} away from this machine's clock"
    );
}

/// `watch`: a back-end that pushes changes (returns `Some`) pushes a new
/// job and its end (claims need not be pushed). One that does not
/// (`None`) passes.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_watch(dao: &dyn AsyncApiDao) {
    use futures::StreamExt;
    let Some(mut signals) = dao.watch().await.expect("watch failed") else {
        return;
    };
    let now = now();
    let job = record(now, QueryStatus::Queued);
    let mut expect = async |status: QueryStatus| {
        let wanted = async {
            while let Some(signal) = signals.next().await {
                if let Ok(signal) = signal
                    && signal.id == job.id
                    && signal.status == status
                {
                    return true;
                }
            }
            false
        };
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), wanted).await;
        assert!(
            seen.unwrap_or(false),
            "watch must push {status} for a job within 10 s"
        );
    };
    dao.create(&job).await.expect("create failed");
    expect(QueryStatus::Queued).await;
    let start = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, now);
    dao.update_status(job.id, start)
        .await
        .expect("update failed");
    let done = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, now);
    dao.update_status(job.id, done)
        .await
        .expect("update failed");
    expect(QueryStatus::Complete).await;
    clean_up(dao, &[job.id]).await;
}
