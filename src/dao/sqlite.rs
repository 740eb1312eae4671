//! [`SqliteDao`]: durable job records in an embedded SQLite database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Claim;
use super::sql::{SqlBackend, db_error, schema_v1, sql_dao};
use crate::error::Result;

/// Job records in SQLite: durable on one host, no server needed.
///
/// ```no_run
/// # async fn demo() -> async_query::Result<()> {
/// use async_query::dao::SqliteDao;
/// let dao = SqliteDao::connect("sqlite://jobs.db").await?;
/// dao.migrate().await?; // creates or upgrades the schema; call once at start-up
/// # Ok(()) }
/// ```
///
/// The database runs in WAL mode with a busy timeout, so the cleaner, the
/// workers and readers do not block each other. One process should own a
/// database file; several instances sharing jobs need [`PostgresDao`](super::PostgresDao).
#[derive(Debug, Clone)]
pub struct SqliteDao {
    pool: SqlitePool,
}

impl SqliteDao {
    /// Opens (creating if missing) the database at `url`, e.g.
    /// `sqlite://jobs.db` or `sqlite::memory:`.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::Error::Dao) if the URL is invalid or the file
    /// cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| db_error("parsing the SQLite URL", e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let in_memory = url.contains(":memory:");
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists per connection: use exactly one.
            .max_connections(if in_memory { 1 } else { 4 })
            .connect_with(options)
            .await
            .map_err(|e| db_error("opening the SQLite database", e))?;
        Ok(SqliteDao { pool })
    }

    /// Uses an existing pool (the host's own).
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteDao { pool }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the schema (the `async_query` table and its
    /// indexes, versions tracked in `async_query_migrations`). Safe to call on
    /// every start.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::Error::Dao) if a statement fails; a failed
    /// version is rolled back.
    pub async fn migrate(&self) -> Result<()> {
        let v1 = schema_v1("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "INTEGER");
        let v2 = super::sql::results_index(<Self as SqlBackend>::BODY_TYPE);
        let v3 = super::sql::history_indexes();
        let v4 = super::sql::idempotency_keys();
        let v5 = super::sql::progress_column();
        let v6 = super::sql::fair_claim_indexes();
        let v7 = super::sql::retry_columns("INTEGER");
        self.apply_migrations(vec![v1, v2, v3, v4, v5, v6, v7], None)
            .await
    }
}

impl SqlBackend for SqliteDao {
    type Db = sqlx::Sqlite;

    /// A write locks the whole database: claims need no row locks.
    const CLAIM_LOCK: &'static str = "";
    const FAIR_FORM: super::sql::FairForm = super::sql::FairForm::Sqlite;
    const STORED_NAME: &'static str = "CASE WHEN json_extract(result, '$.body.type') = 'stored' \
        THEN json_extract(result, '$.body.value') END";
    const BODY_TYPE: &'static str = "json_extract(result, '$.body.type')";
    const EXPIRED_RESULT: [&'static str; 2] = [
        "json_set(result, '$.body', json('{\"type\":\"expired\"}'), '$.message', ",
        ")",
    ];

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One transaction, one statement per change: SQLite runs in-process,
    /// so round trips cost little.
    async fn update_and_claim(
        conn: &mut sqlx::SqliteConnection,
        changes: &[(uuid::Uuid, super::StatusChange)],
        claim: Option<&Claim>,
    ) -> Result<(Vec<super::CasOutcome>, Vec<crate::model::AsyncQuery>)> {
        use sqlx::Connection;
        let fail = |e| db_error("changing jobs' statuses", e);
        let mut tx = conn.begin().await.map_err(fail)?;
        let outcomes = Self::cas_each(&mut tx, changes).await?;
        let claimed = match claim {
            Some(claim) => {
                let ids: Vec<uuid::Uuid> = changes.iter().map(|(id, _)| *id).collect();
                Self::claim_on(&mut tx, claim, &ids).await?
            }
            None => Vec::new(),
        };
        tx.commit().await.map_err(fail)?;
        Ok((outcomes, claimed))
    }

    /// SQLite's clock is this machine's clock: the service's own.
    async fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }

    /// SQLite cannot push changes to other processes; the service polls.
    async fn signals(&self) -> Result<Option<super::SignalStream>> {
        Ok(None)
    }
}

sql_dao!(SqliteDao, sqlx::Sqlite);
