//! [`PostgresDao`]: job records in PostgreSQL, shared by many instances.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::sql::{db_error, migrations, sql_dao};
use crate::Result;

/// The advisory-lock key concurrent `migrate` calls serialise on (any fixed
/// number; this is "asyncqry" read as a big-endian integer).
const MIGRATION_LOCK: i64 = 0x6173_796e_6371_7279;

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
        let lock = sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK);
        self.apply_migrations(
            migrations("BIGSERIAL PRIMARY KEY", "UUID", "BIGINT"),
            Some(lock),
        )
        .await
    }
}

sql_dao!(PostgresDao, sqlx::Postgres, " FOR UPDATE SKIP LOCKED");
