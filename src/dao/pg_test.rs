//! For the crate's own PostgreSQL tests: a fresh database, dropped at the
//! end, and a reader of `EXPLAIN (ANALYZE, FORMAT JSON)` plans.

use sqlx::{ConnectOptions, Executor, PgConnection};

use super::PostgresDao;

/// A database of its own for one test, on `ASYNC_QUERY_TEST_POSTGRES_URL`.
pub(crate) struct TestDb {
    pub(crate) dao: PostgresDao,
    admin: PgConnection,
    name: String,
}

/// A migrated database named after `prefix`, or `None` (and a loud
/// message) without `ASYNC_QUERY_TEST_POSTGRES_URL`.
pub(crate) async fn fresh(prefix: &str) -> Option<TestDb> {
    let Ok(url) = std::env::var("ASYNC_QUERY_TEST_POSTGRES_URL") else {
        eprintln!(
            "\n*** SKIPPED: set ASYNC_QUERY_TEST_POSTGRES_URL to run the PostgreSQL tests ***\n"
        );
        return None;
    };
    let server: sqlx::postgres::PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = server.connect().await.expect("connect");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create");
    let dao = PostgresDao::from_pool(
        sqlx::PgPool::connect_with(server.database(&name))
            .await
            .expect("connect"),
    );
    dao.migrate().await.expect("migrate");
    Some(TestDb { dao, admin, name })
}

impl TestDb {
    /// Closes the pool and drops the database.
    pub(crate) async fn drop_db(mut self) {
        self.dao.pool().close().await;
        self.admin
            .execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop");
    }
}

/// The most rows any node of a JSON plan read: those it returned and those
/// it read and dropped.
pub(crate) fn widest(plan: &serde_json::Value) -> u64 {
    let own = ["Actual Rows", "Rows Removed by Filter"]
        .iter()
        .filter_map(|field| plan[field].as_u64())
        .sum();
    let children = plan["Plans"].as_array().into_iter().flatten();
    children.map(widest).fold(own, u64::max)
}
