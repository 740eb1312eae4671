//! Result reuse: which `COMPLETE` record answers an identical submit.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::records::{clean_up, now, record};
use crate::dao::{AsyncApiDao, CasOutcome, StatusChange};
use crate::model::{
    AsyncQuery, ExportFormat, JobKind, Principal, QueryResult, QueryStatus, ResultBody,
};

/// A record of `principal` running `query`, created at `at` and moved to
/// `status` (with `body` when `COMPLETE`).
async fn made(
    dao: &dyn AsyncApiDao,
    (principal, query, kind): (&str, &str, JobKind),
    at: DateTime<Utc>,
    status: QueryStatus,
    body: ResultBody,
) -> AsyncQuery {
    let job = AsyncQuery {
        principal: Principal::new(principal),
        query: query.into(),
        kind,
        ..record(at, QueryStatus::Queued)
    };
    dao.create(&job).await.expect("create failed");
    let start = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, at);
    let mut current = match dao.update_status(job.id, start).await {
        Ok(CasOutcome::Applied(job)) => job,
        other => panic!("Queued -> Processing must apply, got {other:?}"),
    };
    let result = QueryResult {
        body,
        ..QueryResult::message(at, "done")
    };
    let end = StatusChange::new(QueryStatus::Processing, status, at).with_result(result);
    if let Ok(CasOutcome::Applied(job)) = dao.update_status(job.id, end).await {
        current = job;
    }
    assert_eq!(current.status, status, "the record must reach {status}");
    current
}

/// The result-reuse contract ([`AsyncApiDao::find_reusable`]).
///
/// # Panics
///
/// On a broken rule, naming it.
pub async fn dao_reuse(dao: &dyn AsyncApiDao) {
    let t = now();
    let me = format!("reuse-{}", Uuid::new_v4().simple());
    let q = format!("select {}", Uuid::new_v4().simple());
    let csv = JobKind::TableExport {
        format: ExportFormat::CSV,
    };
    let inline = || ResultBody::Inline("[1]".into());
    let at = |seconds: i64| t - TimeDelta::seconds(seconds);
    let mine = (me.as_str(), q.as_str(), JobKind::Query);
    let old = made(dao, mine.clone(), at(50), QueryStatus::Complete, inline()).await;
    let newest = made(dao, mine.clone(), at(30), QueryStatus::Complete, inline()).await;
    // Newer, but none may answer: failed, expired, another principal,
    // another query; the last is an export.
    let stored = ResultBody::Stored("x.csv".into());
    let complete = QueryStatus::Complete;
    let specs = [
        (mine.clone(), at(20), QueryStatus::Failure, ResultBody::None),
        (mine.clone(), at(15), complete, ResultBody::Expired),
        (
            ("someone-else", q.as_str(), JobKind::Query),
            at(10),
            complete,
            inline(),
        ),
        (
            (me.as_str(), "select other", JobKind::Query),
            at(10),
            complete,
            inline(),
        ),
        (
            (me.as_str(), q.as_str(), csv.clone()),
            at(5),
            complete,
            stored,
        ),
    ];
    let mut others = Vec::new();
    for (owner, created, status, body) in specs {
        others.push(made(dao, owner, created, status, body).await);
    }
    // The id of the record that answers `like` in `kind`, from `from` on.
    let found = |kind: JobKind, from: DateTime<Utc>| {
        let like = AsyncQuery {
            principal: Principal::new(me.as_str()),
            query: q.as_str().into(),
            kind,
            ..record(t, QueryStatus::Queued)
        };
        async move {
            dao.find_reusable(&like, from)
                .await
                .expect("find_reusable failed")
                .map(|job| job.id)
        }
    };
    let query = JobKind::Query;
    assert_eq!(
        found(query.clone(), at(60)).await,
        Some(newest.id),
        "the newest identical COMPLETE record answers"
    );
    assert_eq!(
        found(query.clone(), at(30)).await,
        Some(newest.id),
        "created exactly at the window's start counts"
    );
    assert_eq!(
        found(query.clone(), at(29)).await,
        None,
        "records created before the window do not answer"
    );
    assert_eq!(
        found(csv, at(60)).await,
        Some(others[4].id),
        "a stored export answers its own format"
    );
    let json = JobKind::TableExport {
        format: ExportFormat::JSON,
    };
    assert_eq!(
        found(json, at(60)).await,
        None,
        "another format does not answer"
    );

    let mut created = vec![old.id, newest.id];
    created.extend(others.iter().map(|j| j.id));
    clean_up(dao, &created).await;
}
