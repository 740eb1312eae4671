//! [`SqliteDao`]: durable job records in an embedded SQLite database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, SqlitePool};

use super::sql::{db_error, sql_dao};
use crate::Result;

/// Schema versions, applied in order by [`SqliteDao::migrate`].
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS async_query (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               BLOB    NOT NULL UNIQUE,
    kind             TEXT    NOT NULL,
    query            TEXT    NOT NULL,
    query_type       TEXT    NOT NULL,
    principal_name   TEXT    NOT NULL,
    principal_roles  TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    async_after_ms   INTEGER NOT NULL,
    max_run_time_ms  INTEGER NOT NULL,
    created_on       INTEGER NOT NULL,
    updated_on       INTEGER NOT NULL,
    result           TEXT,
    lease_owner      BLOB,
    lease_expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS async_query_claim ON async_query (status, seq);
CREATE INDEX IF NOT EXISTS async_query_age ON async_query (status, updated_on);
CREATE INDEX IF NOT EXISTS async_query_lease ON async_query (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS async_query_owner ON async_query (lease_owner) WHERE lease_owner IS NOT NULL;
"#];

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
        let context = "migrating the SQLite schema";
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS async_query_migrations (version INTEGER PRIMARY KEY)",
            )
            .await
            .map_err(|e| db_error(context, e))?;
        for (i, script) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            let mut tx = self.pool.begin().await.map_err(|e| db_error(context, e))?;
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM async_query_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_error(context, e))?;
            if applied.is_none() {
                // One statement at a time (the scripts hold no `;` inside
                // literals); `raw_sql` futures are not `Send` enough for
                // `tokio::spawn`.
                for statement in script.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| db_error(context, e))?;
                }
                sqlx::query("INSERT INTO async_query_migrations (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(context, e))?;
            }
            tx.commit().await.map_err(|e| db_error(context, e))?;
        }
        Ok(())
    }
}

sql_dao!(SqliteDao, sqlx::Sqlite, "");
