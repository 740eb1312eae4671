//! Fair claims across principals.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::records::{assert_nothing_queued, clean_up, fresh_lease, now, record};
use crate::dao::{AsyncApiDao, Claim, StatusChange};
use crate::model::{AsyncQuery, Principal, QueryStatus};

/// A queued job of `principal` created `i` ms after `now`, its id noted in
/// `created`.
fn queued_job(now: DateTime<Utc>, principal: &str, i: i64, created: &mut Vec<Uuid>) -> AsyncQuery {
    let job = AsyncQuery {
        principal: Principal::new(principal),
        ..record(now + TimeDelta::milliseconds(i), QueryStatus::Queued)
    };
    created.push(job.id);
    job
}

fn ids_of(jobs: Vec<AsyncQuery>) -> Vec<Uuid> {
    jobs.into_iter().map(|j| j.id).collect()
}

/// `claim` and `update_and_claim` are fair across principals, and
/// `count_queued` counts one principal's queued jobs. Claims are fair: a job's turn
/// is its principal's `Processing` jobs plus its place in that principal's
/// queue, lowest first, the oldest among equals. So one principal's long
/// queue never holds back another principal's job.
///
/// Needs a store without other queued jobs.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_fair_claims(dao: &dyn AsyncApiDao) {
    let now = now();
    let tag = Uuid::new_v4().simple().to_string();
    let [alice, bob, carol] = ["a", "b", "c"].map(|p| format!("fair-{p}-{tag}"));
    assert_nothing_queued(dao).await;
    let mut created = Vec::new();
    let mut queue = |principal: &str, i: i64| queued_job(now, principal, i, &mut created);
    // Alice queues four, then Bob one, then Carol one.
    let jobs = [
        queue(&alice, 0),
        queue(&alice, 1),
        queue(&alice, 2),
        queue(&alice, 3),
        queue(&bob, 4),
        queue(&carol, 5),
    ];
    for job in &jobs {
        dao.create(job).await.expect("create failed");
    }
    let ids = ids_of(jobs.to_vec());
    let counts = [(&alice, 10), (&alice, 2), (&bob, 10), (&tag, 10)];
    let mut counted = Vec::new();
    for (principal, up_to) in counts {
        let n = dao
            .count_queued(principal, up_to)
            .await
            .expect("count_queued failed");
        counted.push(n);
    }
    assert_eq!(
        counted,
        [4, 2, 1, 0],
        "count_queued counts a principal's queued jobs, at most up to its bound"
    );
    let lease = fresh_lease(now);
    let claim = |limit| {
        let claim = Claim::new(lease.clone(), limit, now);
        async move { dao.claim(&claim).await }
    };

    let first = ids_of(claim(1).await.expect("claim failed"));
    assert_eq!(
        first,
        [ids[0]],
        "with nobody running, the oldest job goes first"
    );
    let next = ids_of(claim(2).await.expect("claim failed"));
    assert_eq!(
        next,
        [ids[4], ids[5]],
        "principals with nothing running go before one with a job running, oldest first"
    );

    // Alice's running job ends, and the same call claims for the slot.
    let done = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, now);
    let (outcomes, claimed) = dao
        .update_and_claim(&[(ids[0], done)], &Claim::new(lease.clone(), 2, now))
        .await
        .expect("update_and_claim failed");
    assert!(outcomes[0].is_applied(), "the change applies: {outcomes:?}");
    assert_eq!(
        ids_of(claimed),
        [ids[1], ids[2]],
        "with only alice's jobs queued, they go in order"
    );
    let last = ids_of(claim(5).await.expect("claim failed"));
    assert_eq!(last, [ids[3]], "then the rest");
    clean_up(dao, &created).await;
}

/// Claims keep each principal within
/// [`Claim::max_running_per_principal`]: a job whose principal has that
/// many jobs `Processing` (claimed by anyone, or by this very claim) stays
/// queued while other principals' jobs are taken, and is claimed once one
/// of its principal's jobs ends; concurrent claimers together never pass
/// the limit either.
///
/// Needs a store without other queued jobs.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_running_limit(dao: &dyn AsyncApiDao) {
    let now = now();
    let tag = Uuid::new_v4().simple().to_string();
    let [alice, bob] = ["a", "b"].map(|p| format!("limit-{p}-{tag}"));
    assert_nothing_queued(dao).await;
    let mut created = Vec::new();
    let mut queue = |principal: &str, i: i64| queued_job(now, principal, i, &mut created);
    // Alice queues six, then Bob two.
    let mut jobs = Vec::new();
    for i in 0..8 {
        jobs.push(queue(if i < 6 { &alice } else { &bob }, i));
    }
    for job in &jobs {
        dao.create(job).await.expect("create failed");
    }
    let ids = ids_of(jobs);
    let lease = fresh_lease(now);
    let limited = |limit| Claim::new(lease.clone(), limit, now).with_max_running_per_principal(2);

    let mut first = ids_of(dao.claim(&limited(10)).await.expect("claim failed"));
    // In any order.
    first.sort_by_key(|id| ids.iter().position(|i| i == id));
    assert_eq!(
        first,
        [ids[0], ids[1], ids[6], ids[7]],
        "a claim takes at most the limit of each principal's jobs, oldest first"
    );
    let none = dao.claim(&limited(10)).await.expect("claim failed");
    assert!(
        none.is_empty(),
        "a principal at its running limit gets nothing more: {none:?}"
    );
    // One of Alice's jobs ends: the same call claims one more of hers.
    let done = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, now);
    let (outcomes, claimed) = dao
        .update_and_claim(&[(ids[0], done)], &limited(10))
        .await
        .expect("update_and_claim failed");
    assert!(outcomes[0].is_applied(), "the change applies: {outcomes:?}");
    assert_eq!(
        ids_of(claimed),
        [ids[2]],
        "a job that ends frees one place under its principal's limit"
    );
    // Two claimers at once, after two more of Alice's jobs end: together
    // they take two, not four.
    for id in [ids[1], ids[2]] {
        let done = StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, now);
        assert!(
            dao.update_status(id, done)
                .await
                .expect("update_status failed")
                .is_applied()
        );
    }
    let other = Claim::new(fresh_lease(now), 10, now).with_max_running_per_principal(2);
    let mine = limited(10);
    let (a, b) = tokio::join!(dao.claim(&mine), dao.claim(&other));
    let mut both = ids_of(a.expect("claim failed"));
    both.extend(ids_of(b.expect("claim failed")));
    both.sort();
    let mut expected = vec![ids[3], ids[4]];
    expected.sort();
    assert_eq!(
        both, expected,
        "concurrent claimers together keep a principal within its limit"
    );
    // Without a limit, the rest goes.
    let rest = ids_of(
        dao.claim(&Claim::new(lease.clone(), 10, now))
            .await
            .expect("claim failed"),
    );
    assert_eq!(rest, [ids[5]], "a claim without a limit takes the rest");
    clean_up(dao, &created).await;
}
