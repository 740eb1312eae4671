//! [`PostgresDao`]: job records in PostgreSQL, shared by many instances.

use futures::StreamExt;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::JobSignal;

use super::Claim;
use super::sql::{SqlBackend, db_error, results_index, schema_v1, sql_dao};
use crate::error::Result;

/// The advisory-lock key concurrent `migrate` calls serialise on (any fixed
/// number; this is "asyncqry" read as a big-endian integer).
const MIGRATION_LOCK: i64 = 0x6173_796e_6371_7279;

/// Version 2: every insert and status change notifies channel
/// [`CHANNEL`] with `"<id> <STATUS>"`, in the writing transaction, so other
/// instances learn of new jobs, cancellations and completions at once.
const NOTIFY_V2: &[&str] = &[
    "CREATE OR REPLACE FUNCTION async_query_notify() RETURNS trigger AS $$
     BEGIN
         PERFORM pg_notify('async_query', NEW.id::text || ' ' || NEW.status);
         RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
    "CREATE OR REPLACE TRIGGER async_query_notify AFTER INSERT OR UPDATE OF status ON async_query
     FOR EACH ROW EXECUTE FUNCTION async_query_notify()",
];

/// Version 3, for throughput:
/// - claims read a partial index of the queued rows only. The `(status,
///   seq)` index it replaces let the planner, misled by statistics taken
///   while most rows were queued, walk the primary key past every finished
///   row on each claim (4.6 ms per claim with 10,000 finished jobs, against
///   0.01 ms now);
/// - a claim (a change to `PROCESSING`) notifies nobody: no instance needs
///   to react to one (waiters of a queued job learn of its end), and every
///   notification costs the server work for each listening instance.
const QUEUE_INDEX_V3: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS async_query_queued ON async_query (seq) WHERE status = 'QUEUED'",
    "DROP INDEX IF EXISTS async_query_claim",
    "CREATE OR REPLACE TRIGGER async_query_notify AFTER INSERT OR UPDATE OF status ON async_query
     FOR EACH ROW WHEN (NEW.status <> 'PROCESSING') EXECUTE FUNCTION async_query_notify()",
];

/// The most jobs one statement claims: claim limits are literals (see
/// `update_and_claim`), so this bounds the number of cached statements.
const MAX_CLAIM: usize = 256;

/// The LISTEN/NOTIFY channel the schema's trigger notifies.
pub const CHANNEL: &str = "async_query";

/// Job records in PostgreSQL. Any number of service instances may share one
/// database: claims take queued jobs with `FOR UPDATE SKIP LOCKED`, so
/// concurrent claimers never block each other or get the same job.
///
/// ```no_run
/// # async fn demo() -> async_query::Result<()> {
/// use async_query::dao::PostgresDao;
/// let dao = PostgresDao::connect("postgres://app@db/app").await?;
/// dao.migrate().await?; // creates or upgrades the schema; safe from many instances at once
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresDao {
    pub(super) pool: PgPool,
    /// Events kept per principal.
    pub(super) keep_events: u64,
}

/// The events [`PostgresDao`] keeps per principal unless told otherwise
/// (Superset's default per-user stream limit).
pub const EVENTS_PER_PRINCIPAL: u64 = 1_000;

impl PostgresDao {
    /// Connects a pool of up to 10 connections to `url`; a call waits at
    /// most 10 s for a connection before failing. Build your own pool and use
    /// [`from_pool`](Self::from_pool) for other settings.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the URL is invalid or the server
    /// cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| db_error("connecting to PostgreSQL", e))?;
        Ok(PostgresDao::from_pool(pool))
    }

    /// Uses an existing pool (the host's own).
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresDao {
            pool,
            keep_events: EVENTS_PER_PRINCIPAL,
        }
    }

    /// Keeps the newest `per_principal` status changes of each principal
    /// (default [`EVENTS_PER_PRINCIPAL`]); the cleaner trims the rest on
    /// each sweep, and a reader whose cursor is older learns it `missed`
    /// events. Every instance on one database should use the same number.
    #[must_use]
    pub fn keep_events(mut self, per_principal: u64) -> Self {
        self.keep_events = per_principal;
        self
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the schema (the `async_query` table and its
    /// indexes, versions tracked in `async_query_migrations`). Instances
    /// starting together serialise on an advisory lock; safe on every start.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if a statement fails; a failed
    /// version is rolled back.
    pub async fn migrate(&self) -> Result<()> {
        let lock = sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK);
        let v1 = schema_v1("BIGSERIAL PRIMARY KEY", "UUID", "BIGINT");
        let v2 = NOTIFY_V2.iter().map(|s| s.to_string()).collect();
        let v3 = QUEUE_INDEX_V3.iter().map(|s| s.to_string()).collect();
        let v4 = results_index(<Self as SqlBackend>::BODY_TYPE);
        let v5 = super::pg_events::schema_v5();
        let v6 = super::sql::history_indexes();
        let v7 = super::sql::idempotency_keys();
        let v8 = super::pg_events::schema_v8();
        let v9 = super::sql::fair_claim_indexes();
        let v10 = super::sql::retry_columns("BIGINT");
        self.apply_migrations(vec![v1, v2, v3, v4, v5, v6, v7, v8, v9, v10], Some(lock))
            .await
    }
}

impl SqlBackend for PostgresDao {
    type Db = sqlx::Postgres;

    /// Concurrent claimers skip each other's rows instead of waiting.
    const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    const FAIR_FORM: super::sql::FairForm = super::sql::FairForm::Postgres;

    /// One advisory lock for every claim under a running limit (its key
    /// spells `aq-claim`), held to the end of the claim's transaction.
    const SERIALIZE_LIMITED_CLAIMS: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(7021443199090649453)");
    const PROGRESS_UPDATE: &'static str = super::pg_events::PROGRESS;
    const STORED_NAME: &'static str = "CASE WHEN result::jsonb -> 'body' ->> 'type' = 'stored' \
        THEN result::jsonb -> 'body' ->> 'value' END";
    const BODY_TYPE: &'static str = "(result::jsonb -> 'body' ->> 'type')";
    const EXPIRED_RESULT: [&'static str; 2] = [
        "jsonb_set(jsonb_set(result::jsonb, '{body}', '{\"type\":\"expired\"}'::jsonb), \
         '{message}', to_jsonb(",
        "::text))::text",
    ];

    const RECORD_EVENTS: Option<[&'static str; 2]> = Some(super::pg_events::RECORD_EVENTS);

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One statement on an autocommit connection, so one round trip and
    /// one commit: the changes as one `UPDATE … FROM (VALUES …)` and, with
    /// `claim`, the claim as a second data-modifying CTE that skips the jobs
    /// the batch names. Then one read of the records of the changes that
    /// did not apply.
    ///
    /// The statement is shaped so that PostgreSQL settles on a cached
    /// generic plan (planning ~0.02 ms instead of ~0.2 ms per call): the
    /// rows are a `VALUES` list (padded to a power of two with copies of the
    /// first row, which match nothing twice), and the claim's limit is a
    /// literal. So there is one cached statement per batch size and limit.
    async fn update_and_claim(
        conn: &mut sqlx::PgConnection,
        changes: &[(uuid::Uuid, super::StatusChange)],
        claim: Option<&Claim>,
    ) -> Result<(Vec<super::CasOutcome>, Vec<crate::model::AsyncQuery>)> {
        use super::sql::{COLUMNS, RawJob, claimed, json, lease_mode, micros};
        use sqlx::{Connection, FromRow, Row};
        let fail = |e| db_error("changing jobs' statuses", e);
        let ids: Vec<uuid::Uuid> = changes.iter().map(|(id, _)| *id).collect();
        let limit = claim.map_or(0, |c| c.limit.min(MAX_CLAIM));
        if super::first_repeated(ids.iter().copied()).is_some() {
            // UPDATE … FROM matches a row once: change by change instead,
            // in one transaction.
            let mut tx = conn.begin().await.map_err(fail)?;
            let outcomes = Self::cas_each(&mut tx, changes).await?;
            let claimed = match claim {
                Some(claim) => Self::claim_on(&mut tx, claim, &ids).await?,
                None => Vec::new(),
            };
            tx.commit().await.map_err(fail)?;
            return Ok((outcomes, claimed));
        }
        if changes.is_empty() || (limit == 0 && changes.len() == 1) {
            // Nothing to join, or one change alone: plain statements.
            let outcomes = Self::cas_each(conn, changes).await?;
            let claimed = match claim {
                Some(claim) => Self::claim_on(conn, claim, &[]).await?,
                None => Vec::new(),
            };
            return Ok((outcomes, claimed));
        }
        let mut encoded = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            encoded.push((*id, change, change.result.as_ref().map(json).transpose()?));
        }
        let rows = changes.len().next_power_of_two();
        let mut query = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "WITH v(v_id, v_to, v_at, v_result, v_mode, v_owner, v_expires, v_from, v_retry) AS (",
        );
        let padded = encoded
            .iter()
            .chain(std::iter::repeat_n(&encoded[0], rows - changes.len()));
        query.push_values(padded, |mut row, (id, change, result)| {
            row.push_bind(*id)
                .push_bind(change.to.as_str())
                .push_bind(micros(change.at))
                .push_bind(result.clone())
                .push_bind(lease_mode(change))
                .push_bind(change.lease.as_ref().map(|l| l.owner))
                .push_bind(change.lease.as_ref().map(|l| micros(l.expires_at)))
                .push_bind(change.from.as_str())
                .push_bind(super::sql::retry_at(change));
        });
        query.push(format!(
            "), done AS (UPDATE async_query AS a SET status = v.v_to, updated_on = v.v_at, \
             result = COALESCE(v.v_result, a.result), \
             lease_owner = CASE v.v_mode WHEN 1 THEN v.v_owner WHEN 2 THEN NULL ELSE a.lease_owner END, \
             lease_expires_at = CASE v.v_mode WHEN 1 THEN v.v_expires WHEN 2 THEN NULL ELSE a.lease_expires_at END, \
             attempt = a.attempt + CASE WHEN v.v_to = 'QUEUED' THEN 1 ELSE 0 END, retry_at = v.v_retry \
             FROM v WHERE a.id = v.v_id AND a.status = v.v_from \
             RETURNING false AS claimed, a.seq, v.v_from AS event_from, {COLUMNS}), \
             taken AS (UPDATE async_query SET status = 'PROCESSING', lease_owner = "
        ));
        query
            .push_bind(claim.map(|c| c.lease.owner))
            .push(", lease_expires_at = ")
            .push_bind(claim.map(|c| micros(c.lease.expires_at)))
            .push(", updated_on = ")
            .push_bind(claim.map(|c| micros(c.at)))
            .push(", retry_at = NULL WHERE id IN (");
        // Limited claims with writes are run apart (`limited_claim`): this
        // one statement counts running jobs before its own writes, so under
        // a limit it would take too few, never too many.
        let max_running = claim.and_then(|c| c.max_running_per_principal);
        let [fair, rest] = super::sql::fair_claim(limit, max_running, Self::FAIR_FORM);
        query.push(fair);
        if let Some(claim) = claim {
            super::sql::push_due(&mut query, claim.at);
        }
        query
            .push(" AND h.id NOT IN (SELECT v_id FROM v)")
            .push(rest);
        query.push(format!(
            ") RETURNING true AS claimed, seq, 'QUEUED' AS event_from, \
             {COLUMNS}), changed AS (SELECT * FROM done UNION ALL SELECT * FROM taken), {} \
             SELECT * FROM changed",
            super::pg_events::RECORDED
        ));
        let rows = query.build().fetch_all(&mut *conn).await.map_err(fail)?;
        let (taken, done): (Vec<_>, Vec<_>) = rows
            .iter()
            .partition(|row| row.try_get::<bool, _>("claimed").unwrap_or(false));
        let mut applied = done
            .into_iter()
            .map(|row| {
                let job = RawJob::from_row(row).map_err(fail)?.into_job()?;
                Ok((job.id, job))
            })
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let claimed = claimed(taken.into_iter())?;
        // The rest conflicted (or do not exist): their current records.
        let mut current = std::collections::HashMap::new();
        if applied.len() < changes.len() {
            let missing: Vec<uuid::Uuid> = ids
                .iter()
                .copied()
                .filter(|id| !applied.contains_key(id))
                .collect();
            let sql = format!("SELECT {COLUMNS} FROM async_query WHERE id = ANY($1)");
            let rows: Vec<RawJob> = sqlx::query_as(&sql)
                .bind(&missing)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| db_error("reading jobs", e))?;
            for row in rows {
                let job = row.into_job()?;
                current.insert(job.id, job);
            }
        }
        let outcomes = ids
            .iter()
            .map(|id| match (applied.remove(id), current.remove(id)) {
                (Some(job), _) => Ok(super::CasOutcome::Applied(job)),
                (None, Some(job)) => Ok(super::CasOutcome::Conflict(job)),
                (None, None) => Err(crate::error::Error::NotFound { id: *id }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outcomes, claimed))
    }

    /// `clock_timestamp()`, the time when the statement reads it (not the
    /// transaction's start, as `now()` would be).
    async fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let micros: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error("reading the database clock", e))?;
        super::sql::time(micros, "clock_timestamp()").map(Some)
    }

    /// LISTENs on [`CHANNEL`] on a dedicated connection. sqlx's listener
    /// reconnects by itself after a lost connection (signals sent meanwhile
    /// are lost; polling covers them).
    async fn signals(&self) -> Result<Option<super::SignalStream>> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| db_error("listening for job changes", e))?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| db_error("listening for job changes", e))?;
        let signals = listener.into_stream().map(|notification| {
            let notification = notification.map_err(|e| db_error("receiving job changes", e))?;
            let payload = notification.payload();
            let parsed = payload.split_once(' ').and_then(|(id, status)| {
                Some(JobSignal::new(id.parse().ok()?, status.parse().ok()?))
            });
            parsed.ok_or_else(|| {
                crate::error::Error::dao(
                    "receiving job changes",
                    format!("unexpected notification payload {payload:?}"),
                )
            })
        });
        Ok(Some(Box::pin(signals)))
    }

    async fn events(
        &self,
        stream: super::EventStream<'_>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<crate::EventPage> {
        self.read_events(stream, after, limit).await
    }

    async fn tidy_events(&self) -> Result<u64> {
        self.tidy().await
    }
}

sql_dao!(PostgresDao, sqlx::Postgres);
