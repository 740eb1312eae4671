//! Status-change events kept in PostgreSQL, so that every instance reads
//! the same streams (see `docs/architecture.md`, "Why events are numbered
//! after they commit").
//!
//! - **Writing** happens in the statement that changes statuses: it
//!   becomes a CTE whose rows a second, data-modifying CTE inserts into
//!   `async_query_event` ([`RECORD_EVENTS`]). That costs a row and one
//!   index entry per change, and no extra round trip (a statement-level
//!   trigger with transition tables, tried first, cost twice the server
//!   time of the `UPDATE` it followed). An event row is born without a
//!   position, stamped with its transaction id (`xid8`). Status changes
//!   made by hand in SQL are not recorded.
//! - **Numbering** happens later, under an advisory lock, for the events
//!   whose transactions are all over (ids below the oldest transaction
//!   still running, `pg_snapshot_xmin`): so a transaction that commits late
//!   can never slip an event in below a position a reader has already
//!   passed. Each event gets a position in its owner's stream and one in
//!   the stream of every change. Readers number before they read (one
//!   statement), and the cleaner numbers and trims on every sweep.
//! - **Trimming** keeps the newest `keep` events per principal and records
//!   the highest position it dropped, for the `missed` flag.

use sqlx::Row;

use super::PostgresDao;
use super::sql::{corrupt, db_error, status, time};
use crate::error::Result;
use crate::event::{EventPage, EventStream, JobEvent, LoggedEvent};

/// The advisory-lock key numbering serialises on ("asyqevnt").
const EVENT_LOCK: i64 = 0x6173_7971_6576_6e74;

/// Events numbered per statement: bounds the rows one call reads.
const BATCH: i64 = 5_000;

/// The status changes of the rows of CTE `changed` (with their previous
/// status as `event_from`), recorded.
macro_rules! recorded {
    () => {
        "recorded AS (INSERT INTO async_query_event \
         (owner, job_id, kind, from_status, to_status, at) \
         SELECT principal_name, id, kind, event_from, status, updated_on FROM changed)"
    };
}
pub(super) const RECORDED: &str = recorded!();

/// [`SqlBackend::RECORD_EVENTS`](super::sql::SqlBackend::RECORD_EVENTS):
/// the statement becomes CTE `changed`, whose rows are recorded and
/// returned.
pub(super) const RECORD_EVENTS: [&str; 2] = [
    "WITH changed AS (",
    concat!("), ", recorded!(), " SELECT * FROM changed"),
];

/// Schema version 5: the event tables, the triggers that fill them, and
/// the numbering function.
pub(super) fn schema_v5() -> Vec<String> {
    let statements = [
        "CREATE TABLE IF NOT EXISTS async_query_event (
            id          BIGSERIAL,
            tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
            owner       TEXT NOT NULL,
            job_id      UUID NOT NULL,
            kind        TEXT NOT NULL,
            from_status TEXT,
            to_status   TEXT NOT NULL,
            at          BIGINT NOT NULL,
            pos         BIGINT,
            gpos        BIGINT
        )",
        "CREATE INDEX IF NOT EXISTS async_query_event_pending ON async_query_event (tx, id)
         WHERE gpos IS NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS async_query_event_owner ON async_query_event (owner, pos)
         WHERE pos IS NOT NULL",
        "CREATE UNIQUE INDEX IF NOT EXISTS async_query_event_all ON async_query_event (gpos)
         WHERE gpos IS NOT NULL",
        // One row per stream: '*' for every change, 'o:<name>' per principal.
        "CREATE TABLE IF NOT EXISTS async_query_event_stream (
            stream  TEXT PRIMARY KEY,
            newest  BIGINT NOT NULL,
            dropped BIGINT NOT NULL DEFAULT 0
        )",
        "INSERT INTO async_query_event_stream (stream, newest) VALUES ('*', 0)
         ON CONFLICT DO NOTHING",
    ];
    let mut all: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
    all.push(format!(
        "CREATE OR REPLACE FUNCTION async_query_number_events(batch bigint) RETURNS bigint AS $$
         DECLARE
             numbered bigint;
         BEGIN
             PERFORM pg_advisory_xact_lock({EVENT_LOCK});
             -- A new snapshot after the lock: what an earlier holder numbered
             -- is seen, and every transaction below its xmin is over.
             WITH pending AS (
                 SELECT ctid, tx, id, owner FROM async_query_event
                 WHERE gpos IS NULL AND tx < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY tx, id LIMIT batch
             ), ranked AS (
                 SELECT ctid, owner,
                        row_number() OVER (ORDER BY tx, id) AS g,
                        row_number() OVER (PARTITION BY owner ORDER BY tx, id) AS p
                 FROM pending
             ), heads AS (
                 SELECT o.owner, COALESCE(s.newest, 0) AS newest
                 FROM (SELECT DISTINCT owner FROM ranked) o
                 LEFT JOIN async_query_event_stream s ON s.stream = 'o:' || o.owner
             ), base AS (
                 SELECT newest FROM async_query_event_stream WHERE stream = '*'
             ), placed AS (
                 UPDATE async_query_event e SET gpos = base.newest + r.g, pos = h.newest + r.p
                 FROM ranked r JOIN heads h ON h.owner = r.owner, base
                 WHERE e.ctid = r.ctid
                 RETURNING e.owner, e.pos, e.gpos
             ), moved AS (
                 INSERT INTO async_query_event_stream AS s (stream, newest)
                 SELECT 'o:' || owner, max(pos) FROM placed GROUP BY owner
                 UNION ALL
                 SELECT '*', max(gpos) FROM placed HAVING count(*) > 0
                 ON CONFLICT (stream) DO UPDATE SET newest = excluded.newest
             )
             SELECT count(*) INTO numbered FROM placed;
             RETURN numbered;
         END
         $$ LANGUAGE plpgsql"
    ));
    all
}

/// Schema version 8: progress on the record and on progress events.
pub(super) fn schema_v8() -> Vec<String> {
    let mut all = super::sql::progress_column();
    all.push("ALTER TABLE async_query_event ADD COLUMN progress TEXT".to_owned());
    all
}

/// A running job's progress, stored and recorded as an event from and to
/// `PROCESSING` (at `$4`, which is not `updated_on`: progress does not
/// change that) in one statement.
pub(super) const PROGRESS: &str = "WITH changed AS (
        UPDATE async_query SET progress = $1
        WHERE id = $2 AND status = 'PROCESSING' AND lease_owner = $3
        RETURNING principal_name, id, kind, status, progress
    )
    INSERT INTO async_query_event (owner, job_id, kind, from_status, to_status, at, progress)
    SELECT principal_name, id, kind, status, status, $4, progress FROM changed";

/// Numbers pending events, then trims every principal's stream to its
/// newest `keep` (run by the cleaner, not by readers).
const TRIM: &str = "WITH gone AS (
        DELETE FROM async_query_event e USING async_query_event_stream s
        WHERE s.stream = 'o:' || e.owner AND s.newest - $1 > s.dropped AND e.pos <= s.newest - $1
        RETURNING e.owner, e.pos, e.gpos
    ), highest AS (
        SELECT 'o:' || owner AS stream, max(pos) AS dropped FROM gone GROUP BY owner
        UNION ALL
        SELECT '*', max(gpos) FROM gone HAVING count(*) > 0
    )
    UPDATE async_query_event_stream s SET dropped = GREATEST(s.dropped, h.dropped)
    FROM highest h WHERE s.stream = h.stream";

/// A page of `stream`: the stream's row, and up to `$3` events after
/// position `$2` (none when the stream has no row yet; `$1` is its key);
/// `$4` is the owner of an owner's stream.
fn page_sql(stream: EventStream<'_>) -> String {
    let (column, owner) = match stream {
        EventStream::Owner(_) => ("pos", "owner = $4 AND "),
        EventStream::All => ("gpos", ""),
    };
    format!(
        "SELECT s.newest, s.dropped, e.{column} AS position, e.job_id, e.kind,
            e.owner, e.from_status, e.to_status, e.at, e.progress
        FROM async_query_event_stream s LEFT JOIN LATERAL (
            SELECT * FROM async_query_event
            WHERE {owner}{column} > $2 ORDER BY {column} LIMIT $3
        ) e ON true
        WHERE s.stream = $1
        ORDER BY e.{column}"
    )
}

fn position(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|e| corrupt("event position", e))
}

impl PostgresDao {
    /// Numbers up to [`BATCH`] events whose transactions are over.
    async fn number_events(&self) -> Result<u64> {
        let numbered: i64 = sqlx::query_scalar("SELECT async_query_number_events($1)")
            .bind(BATCH)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("numbering job events", e))?;
        position(numbered)
    }

    pub(super) async fn read_events(
        &self,
        stream: EventStream<'_>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage> {
        self.number_events().await?;
        let page = self.page(stream, after.unwrap_or(0), limit).await?;
        match after {
            // A cursor beyond the newest was not handed out by this stream:
            // start again from the oldest kept.
            Some(after) if after > page.newest => {
                let restarted = self.page(stream, 0, limit).await?;
                Ok(EventPage {
                    missed: true,
                    ..restarted
                })
            }
            Some(_) => Ok(page),
            None => Ok(EventPage {
                missed: false,
                ..page
            }),
        }
    }

    /// The events of `stream` after `after`; `missed` says whether
    /// positions after `after` were dropped.
    async fn page(&self, stream: EventStream<'_>, after: u64, limit: usize) -> Result<EventPage> {
        let fail = |e| db_error("reading job events", e);
        let key = match stream {
            EventStream::Owner(name) => format!("o:{name}"),
            EventStream::All => "*".to_owned(),
        };
        let sql = page_sql(stream);
        let mut query = sqlx::query(&sql)
            .bind(key)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if let EventStream::Owner(name) = stream {
            query = query.bind(name);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(fail)?;
        let mut page = EventPage {
            events: Vec::with_capacity(rows.len()),
            last_id: after,
            missed: false,
            newest: 0,
        };
        for row in rows {
            page.newest = position(row.try_get("newest").map_err(fail)?)?;
            let dropped = position(row.try_get("dropped").map_err(fail)?)?;
            page.missed = after < dropped;
            let Some(seq) = row.try_get::<Option<i64>, _>("position").map_err(fail)? else {
                continue;
            };
            let kind: String = row.try_get("kind").map_err(fail)?;
            let from: Option<String> = row.try_get("from_status").map_err(fail)?;
            let to: String = row.try_get("to_status").map_err(fail)?;
            let progress: Option<String> = row.try_get("progress").map_err(fail)?;
            let event = JobEvent {
                id: row.try_get("job_id").map_err(fail)?,
                kind: serde_json::from_str(&kind).map_err(|e| corrupt("event kind", e))?,
                owner: row.try_get::<String, _>("owner").map_err(fail)?.into(),
                from: from.as_deref().map(status).transpose()?,
                to: status(&to)?,
                at: time(row.try_get("at").map_err(fail)?, "event time")?,
                progress: progress
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|e| corrupt("event progress", e))?,
            };
            page.last_id = position(seq)?;
            page.events.push(LoggedEvent {
                seq: page.last_id,
                event,
            });
        }
        Ok(page)
    }

    /// Numbers what is pending (up to a batch) and trims each principal's
    /// stream to the newest [`keep_events`](Self::keep_events).
    pub(super) async fn tidy(&self) -> Result<u64> {
        let numbered = self.number_events().await?;
        sqlx::query(TRIM)
            .bind(i64::try_from(self.keep_events).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("trimming job events", e))?;
        Ok(numbered)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use super::*;
    use crate::dao::pg_test::widest;

    /// With 20,000 events of two principals kept, a page of 100 reads at
    /// most 100 event rows through an index, in either stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_reads_a_bounded_number_of_rows() {
        let Some(db) = crate::dao::pg_test::fresh("async_query_plan").await else {
            return;
        };
        let dao = &db.dao;
        dao.pool
            .execute(
                "INSERT INTO async_query_event (owner, job_id, kind, to_status, at, pos, gpos)
                 SELECT CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END, gen_random_uuid(),
                        '{\"type\":\"query\"}', 'QUEUED', 0, (g + 1) / 2, g
                 FROM generate_series(1, 20000) g;
                 INSERT INTO async_query_event_stream (stream, newest)
                 VALUES ('o:alice', 10000), ('o:bob', 10000);
                 UPDATE async_query_event_stream SET newest = 20000 WHERE stream = '*';
                 ANALYZE async_query_event",
            )
            .await
            .expect("fill the event table");
        for owner in [Some("alice"), None] {
            let (key, stream) = match owner {
                Some(o) => (format!("o:{o}"), EventStream::Owner(o)),
                None => ("*".to_owned(), EventStream::All),
            };
            let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", page_sql(stream));
            let mut query = sqlx::query_scalar::<_, serde_json::Value>(&explain)
                .bind(key)
                .bind(5_000_i64)
                .bind(100_i64);
            if let Some(owner) = owner {
                query = query.bind(owner);
            }
            let plan = query.fetch_one(&dao.pool).await.expect("explain");
            let root = &plan[0]["Plan"];
            let text = root.to_string();
            assert!(text.contains("Index Scan"), "{owner:?}: {root:#}");
            assert!(
                widest(root) <= 100,
                "{owner:?} reads more than a page: {root:#}"
            );
        }
        let page = dao
            .read_events(EventStream::Owner("alice"), Some(5_000), 100)
            .await
            .expect("page");
        assert_eq!(
            (page.events.len(), page.last_id, page.newest),
            (100, 5_100, 10_000)
        );
        db.drop_db().await;
    }
}
