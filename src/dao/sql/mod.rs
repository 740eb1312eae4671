//! What the SQL back-ends share: the row type, value encodings, the
//! [`SqlBackend`] trait each back-end implements, and the queries
//! (`queries.rs`), written once and instantiated per database by a macro.
//!
//! Encodings: timestamps are `BIGINT` microseconds since the Unix epoch
//! (exact, comparable, the same in both databases); `kind`, `roles` and
//! `result` are JSON text; `status` is Elide's spelling.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::dao::{CasOutcome, Claim, SignalStream, StatusChange};
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, JobKind, Lease, Principal, QueryResult, QueryStatus};
use crate::progress::Progress;

/// How a database runs the fair claim ([`fair_claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Each back-end names its own form; with one of them built, the other is unused.
#[cfg_attr(not(all(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) enum FairForm {
    /// Lateral joins, arrays and row locks (`FOR UPDATE SKIP LOCKED`).
    Postgres,
    /// None of those, and a write locks the whole database.
    Sqlite,
}

/// A query for the ids of up to `limit` queued jobs to claim, fairly
/// across principals, as the text before and after a condition on `h.id`
/// (the jobs to leave out, or nothing).
///
/// Each principal's oldest `2 × limit` queued jobs are candidates (found by a
/// loose index scan over the principals with queued jobs: one index probe
/// each); a candidate's turn is the principal's running jobs plus its
/// place in the principal's queue; the lowest turns go first, the oldest
/// among equals. So a principal with nothing running goes before one with
/// a thousand jobs queued, and with one principal it is the oldest first.
///
/// On PostgreSQL the candidates, in turn order, become an array whose rows
/// are locked by primary key with `SKIP LOCKED` (a join of the candidates
/// back to the table was planned as a scan of every row), and twice the
/// limit per principal lets a claimer whose first choices another claimer
/// holds take the next ones instead of nothing.
pub(crate) fn fair_claim(limit: usize, max_running: Option<usize>, form: FairForm) -> [String; 2] {
    let depth = limit.saturating_mul(2);
    // A principal's running limit: no candidate past it.
    let within = max_running.map_or(String::new(), |max| format!(" WHERE turn <= {max}"));
    // Each principal's first `depth` queued jobs: a lateral join where the
    // database has one; SQLite runs the `IN` form once per principal.
    let (open, close) = match form {
        FairForm::Postgres => (
            "CROSS JOIN LATERAL (SELECT h.id, h.seq FROM async_query h",
            format!(" ORDER BY h.principal_name, h.seq LIMIT {depth}) q"),
        ),
        FairForm::Sqlite => (
            "JOIN async_query q ON q.id IN (SELECT h.id FROM async_query h",
            format!(" ORDER BY h.principal_name, h.seq LIMIT {depth})"),
        ),
    };
    // The principals with queued jobs (a loose index scan), each with its
    // running count, counted once per principal (`MATERIALIZED`: inlined,
    // PostgreSQL counted once per candidate). Candidates are read in the
    // order of `async_query_queued_by`, so that index serves them.
    let head = format!(
        "WITH RECURSIVE owners(name) AS (
            SELECT name FROM (SELECT principal_name AS name FROM async_query
                WHERE status = 'QUEUED' ORDER BY principal_name LIMIT 1) first_owner
          UNION ALL
            SELECT (SELECT principal_name FROM async_query
                WHERE status = 'QUEUED' AND principal_name > owners.name
                ORDER BY principal_name LIMIT 1)
            FROM owners WHERE owners.name IS NOT NULL
        ), counted AS MATERIALIZED (
            SELECT name, (SELECT count(*) FROM async_query r
                WHERE r.status = 'PROCESSING' AND r.principal_name = owners.name) AS running
            FROM owners WHERE name IS NOT NULL
        ), cand AS (
            SELECT q.id, q.seq,
                o.running + row_number() OVER (PARTITION BY o.name ORDER BY q.seq) AS turn
            FROM counted o {open}
                WHERE h.status = 'QUEUED' AND h.principal_name = o.name"
    );
    match form {
        FairForm::Postgres => [
            head,
            format!(
                "{close})
                SELECT a.id
                FROM unnest(ARRAY(SELECT id FROM cand{within} ORDER BY turn, seq)) WITH ORDINALITY p(id, n)
                JOIN async_query a ON a.id = p.id
                WHERE a.status = 'QUEUED'
                ORDER BY p.n LIMIT {limit}
                FOR UPDATE OF a SKIP LOCKED"
            ),
        ],
        FairForm::Sqlite => [
            head,
            format!("{close}) SELECT id FROM cand{within} ORDER BY turn, seq LIMIT {limit}"),
        ],
    }
}

/// `statement` restricted to the rows with these ids.
pub(crate) fn where_ids<DB: sqlx::Database>(
    statement: &str,
    ids: &[Uuid],
) -> sqlx::QueryBuilder<'static, DB>
where
    Uuid: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new(statement);
    push_ids(&mut query, ids);
    query
}

/// Appends ` WHERE id IN (…)` with these ids bound.
pub(crate) fn push_ids<DB: sqlx::Database>(
    query: &mut sqlx::QueryBuilder<'static, DB>,
    ids: &[Uuid],
) where
    Uuid: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query.push(" WHERE id IN ");
    push_list(query, ids);
}

/// Appends `(…)` with these ids bound.
pub(crate) fn push_list<DB: sqlx::Database>(
    query: &mut sqlx::QueryBuilder<'static, DB>,
    ids: &[Uuid],
) where
    Uuid: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query.push("(");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
}

/// The columns every query selects, in `RawJob` order.
pub(crate) const COLUMNS: &str = "id, kind, query, query_type, principal_name, principal_roles, \
     status, async_after_ms, max_run_time_ms, created_on, updated_on, result, lease_owner, \
     lease_expires_at, idempotency_key, progress, attempt, retry_at";

/// A record with its JSON columns encoded: kind, roles, result, progress.
pub(crate) type EncodedJob<'a> = (
    &'a AsyncQuery,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// One row of `async_query`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RawJob {
    pub(crate) id: Uuid,
    pub(crate) kind: String,
    pub(crate) query: String,
    pub(crate) query_type: String,
    pub(crate) principal_name: String,
    pub(crate) principal_roles: String,
    pub(crate) status: String,
    pub(crate) async_after_ms: i64,
    pub(crate) max_run_time_ms: i64,
    pub(crate) created_on: i64,
    pub(crate) updated_on: i64,
    pub(crate) result: Option<String>,
    pub(crate) lease_owner: Option<Uuid>,
    pub(crate) lease_expires_at: Option<i64>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) progress: Option<String>,
    pub(crate) attempt: i64,
    pub(crate) retry_at: Option<i64>,
}

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::dao(
        format!("reading a job record: {what}"),
        format!("stored value is not valid: {detail}"),
    )
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(v: i64, what: &str) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(what, v))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn duration(v: i64, what: &str) -> Result<Duration> {
    u64::try_from(v)
        .map(Duration::from_millis)
        .map_err(|_| corrupt(what, v))
}

/// A stored status; an unknown one is a corrupt row ([`Error::Dao`]).
pub(crate) fn status(text: &str) -> Result<QueryStatus> {
    text.parse().map_err(|e| corrupt("status", e))
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::dao("encoding a job record", e))
}

impl RawJob {
    pub(crate) fn into_job(self) -> Result<AsyncQuery> {
        let kind: JobKind = serde_json::from_str(&self.kind).map_err(|e| corrupt("kind", e))?;
        let roles = serde_json::from_str(&self.principal_roles)
            .map_err(|e| corrupt("principal_roles", e))?;
        let result: Option<QueryResult> = self
            .result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("result", e))?;
        let progress: Option<Progress> = self
            .progress
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt("progress", e))?;
        let lease = match (self.lease_owner, self.lease_expires_at) {
            (Some(owner), Some(at)) => Some(Lease {
                owner,
                expires_at: time(at, "lease_expires_at")?,
            }),
            _ => None,
        };
        Ok(AsyncQuery {
            id: self.id,
            kind,
            query: self.query.into(),
            query_type: self.query_type.into(),
            principal: Principal {
                name: self.principal_name.into(),
                roles,
            },
            status: status(&self.status)?,
            async_after: duration(self.async_after_ms, "async_after_ms")?,
            max_run_time: duration(self.max_run_time_ms, "max_run_time_ms")?,
            created_on: time(self.created_on, "created_on")?,
            updated_on: time(self.updated_on, "updated_on")?,
            result,
            lease,
            idempotency_key: self.idempotency_key,
            progress,
            attempt: u32::try_from(self.attempt).map_err(|_| corrupt("attempt", self.attempt))?,
            retry_at: self.retry_at.map(|t| time(t, "retry_at")).transpose()?,
        })
    }
}

pub(crate) fn into_jobs(rows: Vec<RawJob>) -> Result<Vec<AsyncQuery>> {
    rows.into_iter().map(RawJob::into_job).collect()
}

/// How a status change treats the lease columns: 0 keep, 1 set, 2 clear.
pub(crate) fn lease_mode(change: &StatusChange) -> i64 {
    if change.to == QueryStatus::Processing {
        1
    } else if change.clears_lease() {
        2
    } else {
        0
    }
}

/// The `retry_at` column a status change leaves: a retry's time, `NULL`
/// after any other change.
pub(crate) fn retry_at(change: &StatusChange) -> Option<i64> {
    change.retry_at_after().map(micros)
}

/// Appends the condition that keeps candidates of a claim at `at` to the
/// jobs that are due: not waiting for a retry past `at`. A bound value,
/// so the statement's text (and PostgreSQL's cached plan) stays the same.
pub(crate) fn push_due<DB: sqlx::Database>(
    query: &mut sqlx::QueryBuilder<'static, DB>,
    at: DateTime<Utc>,
) where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .push(" AND (h.retry_at IS NULL OR h.retry_at <= ")
        .push_bind(micros(at))
        .push(")");
}

pub(crate) fn db_error(context: &str, e: sqlx::Error) -> Error {
    Error::dao(context.to_owned(), e)
}

/// Claimed rows (`seq` first, then [`COLUMNS`]) as records, oldest first:
/// `RETURNING` has no order.
pub(crate) fn claimed<'r, R>(rows: impl Iterator<Item = &'r R>) -> Result<Vec<AsyncQuery>>
where
    R: sqlx::Row + 'r,
    RawJob: for<'x> sqlx::FromRow<'x, R>,
    i64: for<'x> sqlx::Decode<'x, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let mut rows = rows
        .map(|row| {
            let seq: i64 = row.try_get("seq")?;
            Ok((seq, <RawJob as sqlx::FromRow<R>>::from_row(row)?))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(|e| db_error("claiming queued jobs", e))?;
    rows.sort_by_key(|(seq, _)| *seq);
    rows.into_iter().map(|(_, row)| row.into_job()).collect()
}

/// What the shared queries ([`sql_dao!`]) need from each SQL back-end.
pub(crate) trait SqlBackend {
    /// The database.
    type Db: sqlx::Database;

    /// Appended to the claim's inner `SELECT`: row locks where the database
    /// has them (`FOR UPDATE SKIP LOCKED`), nothing where a write locks the
    /// whole database (SQLite).
    const CLAIM_LOCK: &'static str;

    /// How the database runs the fair claim ([`fair_claim`]).
    const FAIR_FORM: FairForm;

    /// A statement that, run first in a transaction, holds every other
    /// claim under a per-principal running limit off until the
    /// transaction ends (an advisory lock), where concurrent claims could
    /// otherwise both count a principal's running jobs before either
    /// commits. `None` where a write locks the whole database anyway.
    const SERIALIZE_LIMITED_CLAIMS: Option<&'static str> = None;

    /// The statement that stores a running job's encoded progress (`$1`)
    /// for job `$2` if it is `PROCESSING` under `$3`'s lease (see
    /// [`AsyncApiDao::update_progress`](crate::dao::AsyncApiDao::update_progress));
    /// where statements record events it also records one at `$4`, which
    /// others leave unused.
    const PROGRESS_UPDATE: &'static str = "UPDATE async_query SET progress = $1 \
        WHERE id = $2 AND status = 'PROCESSING' AND lease_owner = $3";

    /// An SQL expression for the stored result's name of a row (the
    /// `value` of a `stored` result body in the `result` JSON), `NULL`
    /// otherwise.
    const STORED_NAME: &'static str;

    /// An SQL expression for the type of a row's result body (`none`,
    /// `inline`, `stored`, `expired`; `NULL` without a result).
    const BODY_TYPE: &'static str;

    /// The SQL for a row's result with its body expired and its message
    /// replaced: the text before and after the bound message.
    const EXPIRED_RESULT: [&'static str; 2];

    /// Where the database records status changes (see
    /// [`keeps_events`](Self::keeps_events)): the text around a statement
    /// that changes statuses, turning it into one that also records them.
    /// The statement ends in `RETURNING` with at least `event_from` (the
    /// status before), `id`, `kind`, `principal_name`, `status` and
    /// `updated_on`; the whole still returns the statement's rows. `None`
    /// where nothing is recorded.
    const RECORD_EVENTS: Option<[&'static str; 2]> = None;

    /// The connection pool every query runs on.
    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Compare-and-sets `changes`, each with the outcome a lone
    /// compare-and-set would give, in order, and (with `claim`) claims up
    /// to `claim.limit` queued jobs that `changes` does not name: all in
    /// one commit.
    fn update_and_claim(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        changes: &[(Uuid, StatusChange)],
        claim: Option<&Claim>,
    ) -> impl Future<Output = Result<(Vec<CasOutcome>, Vec<AsyncQuery>)>> + Send;

    /// The database's clock, if instances on other machines share it.
    fn clock(&self) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send;

    /// Status changes pushed by the database, if it can push them.
    fn signals(&self) -> impl Future<Output = Result<Option<SignalStream>>> + Send;

    /// Whether the database records status changes itself (see
    /// [`AsyncApiDao::keeps_events`](crate::dao::AsyncApiDao::keeps_events)):
    /// exactly when its statements record them.
    fn keeps_events(&self) -> bool {
        Self::RECORD_EVENTS.is_some()
    }

    /// A page of the recorded events (see
    /// [`AsyncApiDao::events`](crate::dao::AsyncApiDao::events)).
    fn events(
        &self,
        stream: crate::dao::EventStream<'_>,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<crate::EventPage>> + Send {
        let _ = (stream, after, limit);
        async {
            Err(Error::Config {
                reason: "this job store keeps no events".into(),
            })
        }
    }

    /// Upkeep of the recorded events (see
    /// [`AsyncApiDao::tidy_events`](crate::dao::AsyncApiDao::tidy_events)).
    fn tidy_events(&self) -> impl Future<Output = Result<u64>> + Send {
        async { Ok(0) }
    }
}

mod create;
mod history;
mod schema;
pub(crate) use schema::{
    fair_claim_indexes, idempotency_keys, output_kept, progress_column, results_index,
    retry_columns, schema_v1,
};
mod migrate;
mod retention;
pub(crate) use create::sql_create;
pub(crate) use history::{history_indexes, history_query};
pub(crate) use migrate::sql_migrations;
pub(crate) use retention::sql_retention;
mod queries;
pub(crate) use queries::sql_dao;
