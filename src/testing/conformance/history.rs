//! Job history: filters, both orders, positions that page without gaps or
//! repeats (also between records created at the same instant), and
//! principals kept apart.

use chrono::TimeDelta;
use uuid::Uuid;

use super::records::{now, record};
use crate::dao::{AsyncApiDao, HistoryFilter, HistoryOrder, HistoryPosition, KindFilter};
use crate::model::{AsyncQuery, ExportFormat, JobKind, QueryStatus};

fn ids(jobs: &[AsyncQuery]) -> Vec<Uuid> {
    jobs.iter().map(|job| job.id).collect()
}

async fn page(dao: &dyn AsyncApiDao, filter: &HistoryFilter) -> Vec<AsyncQuery> {
    dao.history(filter).await.expect("history failed")
}

/// Every record of `filter`, read `size` at a time from position to
/// position.
async fn paged(dao: &dyn AsyncApiDao, filter: &HistoryFilter, size: usize) -> Vec<Uuid> {
    let mut filter = HistoryFilter {
        limit: size,
        ..filter.clone()
    };
    let mut all = Vec::new();
    for _ in 0..100 {
        let jobs = page(dao, &filter).await;
        assert!(jobs.len() <= size, "a page holds at most `limit` records");
        all.extend(ids(&jobs));
        match jobs.last() {
            Some(last) if jobs.len() == size => filter.after = Some(HistoryPosition::of(last)),
            _ => return all,
        }
    }
    panic!("history pages never end");
}

/// The job-history contract ([`AsyncApiDao::history`]).
///
/// # Panics
///
/// On a broken rule, naming it.
pub async fn dao_history(dao: &dyn AsyncApiDao) {
    let now = now();
    let mine = format!("history-{}", Uuid::new_v4().simple());
    let theirs = format!("history-{}", Uuid::new_v4().simple());
    // Six records of `mine`, one a second apart except two created at the
    // same instant; statuses and kinds mixed. Two of `theirs` in between.
    let specs = [
        (-5, QueryStatus::Complete, false),
        (-4, QueryStatus::Failure, true),
        (-3, QueryStatus::Queued, false),
        (-3, QueryStatus::Complete, true),
        (-2, QueryStatus::Cancelled, false),
        (-1, QueryStatus::Complete, false),
    ];
    let mut created = Vec::new();
    for (seconds, status, export) in specs {
        let mut job = record(now + TimeDelta::seconds(seconds), status);
        job.principal.name = mine.as_str().into();
        if export {
            job.kind = JobKind::TableExport {
                format: ExportFormat::CSV,
            };
        }
        dao.create(&job).await.expect("create failed");
        created.push(job);
    }
    let mut others = Vec::new();
    for seconds in [-4, -2] {
        let mut job = record(now + TimeDelta::seconds(seconds), QueryStatus::Complete);
        job.principal.name = theirs.as_str().into();
        dao.create(&job).await.expect("create failed");
        others.push(job.id);
    }
    let mut oldest_first = created.clone();
    oldest_first.sort_by_key(HistoryPosition::of);
    let oldest_first = ids(&oldest_first);
    let newest_first: Vec<Uuid> = oldest_first.iter().rev().copied().collect();
    let of_mine = HistoryFilter::newest(100).of_principal(mine.clone());

    assert_eq!(
        ids(&page(dao, &of_mine).await),
        newest_first,
        "newest first by creation time, ties broken by id, only the principal's jobs"
    );
    let oldest = HistoryFilter {
        order: HistoryOrder::OldestFirst,
        ..of_mine.clone()
    };
    assert_eq!(
        ids(&page(dao, &oldest).await),
        oldest_first,
        "oldest first is the reverse"
    );
    for size in [1, 2, 4] {
        assert_eq!(
            paged(dao, &of_mine, size).await,
            newest_first,
            "pages of {size} continue after the last position, newest first"
        );
        assert_eq!(
            paged(dao, &oldest, size).await,
            oldest_first,
            "pages of {size} continue after the last position, oldest first"
        );
    }
    let records = page(dao, &of_mine).await;
    assert_eq!(
        records.iter().find(|job| job.id == created[1].id),
        Some(&created[1]),
        "history returns whole records, as stored"
    );

    let only = |filter: HistoryFilter| {
        let expected: Vec<Uuid> = newest_first
            .iter()
            .filter(|id| {
                let job = created.iter().find(|job| job.id == **id);
                job.is_some_and(|job| filter.matches(job))
            })
            .copied()
            .collect();
        (filter, expected)
    };
    let filters = [
        HistoryFilter {
            statuses: vec![QueryStatus::Complete, QueryStatus::Cancelled],
            ..of_mine.clone()
        },
        HistoryFilter {
            kind: Some(KindFilter::TableExport),
            ..of_mine.clone()
        },
        HistoryFilter {
            kind: Some(KindFilter::Query),
            ..of_mine.clone()
        },
        HistoryFilter {
            created_from: Some(now + TimeDelta::seconds(-3)),
            created_before: Some(now + TimeDelta::seconds(-1)),
            ..of_mine.clone()
        },
    ];
    for filter in filters {
        let (filter, expected) = only(filter);
        assert!(!expected.is_empty(), "each filter matches some records");
        assert_eq!(
            ids(&page(dao, &filter).await),
            expected,
            "only records matching every condition: {filter:?}"
        );
        assert_eq!(
            paged(dao, &filter, 1).await,
            expected,
            "filtered pages of 1: {filter:?}"
        );
    }

    // Everyone's history (what an admin reads) holds both principals' jobs,
    // in the same order.
    let everyone = HistoryFilter {
        created_from: Some(now + TimeDelta::seconds(-5)),
        created_before: Some(now),
        ..HistoryFilter::newest(10_000)
    };
    let listed = ids(&page(dao, &everyone).await);
    let ours: Vec<Uuid> = listed
        .iter()
        .filter(|id| newest_first.contains(id))
        .copied()
        .collect();
    assert_eq!(ours, newest_first, "everyone's history keeps the order");
    assert!(
        others.iter().all(|id| listed.contains(id)),
        "everyone's history holds every principal's jobs"
    );
    let of_theirs = page(dao, &HistoryFilter::newest(100).of_principal(theirs)).await;
    assert_eq!(
        ids(&of_theirs),
        vec![others[1], others[0]],
        "a principal's history holds no one else's jobs"
    );

    let all: Vec<Uuid> = created.iter().map(|job| job.id).chain(others).collect();
    dao.delete(&all).await.expect("delete failed");
}
