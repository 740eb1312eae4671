//! Schema migrations for the SQL back-ends, written once as a macro like
//! the queries (see `queries.rs`).

/// Adds `apply_migrations` to `$dao`, a `SqlBackend` on database `$db`.
macro_rules! sql_migrations {
    ($dao:ty, $db:ty) => {
        impl $dao {
            /// Applies the schema versions not yet recorded in
            /// `async_query_migrations`, in one transaction that first runs
            /// `lock` (if any) so concurrent callers serialise.
            async fn apply_migrations(
                &self,
                versions: Vec<Vec<String>>,
                lock: Option<sqlx::query::Query<'static, $db, <$db as sqlx::Database>::Arguments<'static>>>,
            ) -> $crate::Result<()> {
                let context = "migrating the job store schema";
                let fail = |e| $crate::dao::sql::db_error(context, e);
                let mut tx = $crate::dao::sql::SqlBackend::pool(self).begin().await.map_err(fail)?;
                if let Some(lock) = lock {
                    lock.execute(&mut *tx).await.map_err(fail)?;
                }
                sqlx::query("CREATE TABLE IF NOT EXISTS async_query_migrations (version BIGINT PRIMARY KEY)")
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                for (i, statements) in versions.iter().enumerate() {
                    let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
                    let applied: Option<i64> =
                        sqlx::query_scalar("SELECT version FROM async_query_migrations WHERE version = $1")
                            .bind(version)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(fail)?;
                    if applied.is_some() {
                        continue;
                    }
                    // One statement at a time: `raw_sql` futures are not
                    // `Send` enough for `tokio::spawn`.
                    for statement in statements {
                        sqlx::query(statement.as_str()).execute(&mut *tx).await.map_err(fail)?;
                    }
                    sqlx::query("INSERT INTO async_query_migrations (version) VALUES ($1)")
                        .bind(version)
                        .execute(&mut *tx)
                        .await
                        .map_err(fail)?;
                }
                tx.commit().await.map_err(fail)
            }
        }
    };
}

pub(crate) use sql_migrations;
