//! [`PostgresDao`]: job records in PostgreSQL, shared by many instances.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::sql::{db_error, sql_dao};
use crate::Result;

/// The advisory-lock key concurrent `migrate` calls serialise on (any fixed
/// number; this is "asyncqry" read as a big-endian integer).
const MIGRATION_LOCK: i64 = 0x6173_796e_6371_7279;

/// Schema versions, applied in order by [`PostgresDao::migrate`].
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS async_query (
    seq              BIGSERIAL PRIMARY KEY,
    id               UUID      NOT NULL UNIQUE,
    kind             TEXT      NOT NULL,
    query            TEXT      NOT NULL,
    query_type       TEXT      NOT NULL,
    principal_name   TEXT      NOT NULL,
    principal_roles  TEXT      NOT NULL,
    status           TEXT      NOT NULL,
    async_after_ms   BIGINT    NOT NULL,
    max_run_time_ms  BIGINT    NOT NULL,
    created_on       BIGINT    NOT NULL,
    updated_on       BIGINT    NOT NULL,
    result           TEXT,
    lease_owner      UUID,
    lease_expires_at BIGINT
);
CREATE INDEX IF NOT EXISTS async_query_claim ON async_query (status, seq);
CREATE INDEX IF NOT EXISTS async_query_age ON async_query (status, updated_on);
CREATE INDEX IF NOT EXISTS async_query_lease ON async_query (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS async_query_owner ON async_query (lease_owner) WHERE lease_owner IS NOT NULL;
"#];

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
    pool: PgPool,
}

impl PostgresDao {
    /// Connects a pool of up to 10 connections to `url`; a call waits at
    /// most 10 s for a connection before failing. Build your own pool and use
    /// [`from_pool`](Self::from_pool) for other settings.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::Error::Dao) if the URL is invalid or the server
    /// cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| db_error("connecting to PostgreSQL", e))?;
        Ok(PostgresDao { pool })
    }

    /// Uses an existing pool (the host's own).
    pub fn from_pool(pool: PgPool) -> Self {
        PostgresDao { pool }
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
    /// [`Error::Dao`](crate::Error::Dao) if a statement fails; a failed
    /// version is rolled back.
    pub async fn migrate(&self) -> Result<()> {
        let context = "migrating the PostgreSQL schema";
        let mut tx = self.pool.begin().await.map_err(|e| db_error(context, e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(context, e))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS async_query_migrations (version BIGINT PRIMARY KEY)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(context, e))?;
        for (i, script) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
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
        }
        tx.commit().await.map_err(|e| db_error(context, e))
    }
}

sql_dao!(PostgresDao, sqlx::Postgres, " FOR UPDATE SKIP LOCKED");
