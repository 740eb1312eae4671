//! Retention and result lifetime for the SQL back-ends, written once as a
//! macro like the queries (see `queries.rs`): both find records by age,
//! hand their ids and stored result names to a reaper that deletes the
//! results, then delete the records (retention) or mark their results
//! expired (result lifetime).

/// Adds `delete_expired_rows` and `expire_result_rows` to `$dao`, a
/// `SqlBackend` on database `$db`.
macro_rules! sql_retention {
    ($dao:ty, $db:ty) => {
        impl $dao {
            /// Runs `select` (rows of id and stored result name; its row
            /// locks, where the database has them, last until the end),
            /// hands the rows to `reap`, and runs `finish` on the ids it
            /// returns: one transaction where there are row locks, so
            /// concurrent callers take different rows.
            async fn reap_rows(
                &self,
                context: &'static str,
                mut select: sqlx::QueryBuilder<'static, $db>,
                reap: $crate::dao::Reaper<'_>,
                finish: impl FnOnce(&[uuid::Uuid]) -> sqlx::QueryBuilder<'static, $db> + Send,
            ) -> $crate::Result<$crate::dao::Purged> {
                use $crate::dao::sql::SqlBackend;
                let fail = |e| $crate::dao::sql::db_error(context, e);
                let mut tx = match !<Self as SqlBackend>::CLAIM_LOCK.is_empty() {
                    true => Some(SqlBackend::pool(self).begin().await.map_err(fail)?),
                    false => None,
                };
                let query = select.build_query_as::<(uuid::Uuid, Option<String>)>();
                let rows = match tx.as_mut() {
                    Some(tx) => query.fetch_all(&mut **tx).await,
                    None => query.fetch_all(SqlBackend::pool(self)).await,
                }
                .map_err(fail)?;
                let found = rows.len();
                let records = rows
                    .into_iter()
                    .map(|(id, stored)| $crate::dao::ExpiredRecord::new(id, stored))
                    .collect();
                let ids = reap(records).await;
                if ids.is_empty() {
                    // Release the row locks now, not when the pool gets to it.
                    if let Some(tx) = tx {
                        tx.rollback().await.map_err(fail)?;
                    }
                    return Ok($crate::dao::Purged::new(found, 0));
                }
                let mut finish = finish(&ids);
                let finish = finish.build();
                let done = match tx {
                    Some(mut tx) => {
                        let done = finish.execute(&mut *tx).await.map_err(fail)?;
                        tx.commit().await.map_err(fail)?;
                        done
                    }
                    None => finish.execute(SqlBackend::pool(self)).await.map_err(fail)?,
                };
                Ok($crate::dao::Purged::new(found, done.rows_affected()))
            }

            /// `delete_expired`: terminal records older than `before`, by
            /// creation order; the stored name is read from the result's
            /// JSON in SQL.
            async fn delete_expired_rows(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: usize,
                reap: $crate::dao::Reaper<'_>,
            ) -> $crate::Result<$crate::dao::Purged> {
                use $crate::dao::sql::SqlBackend;
                let mut select = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT id, {} FROM async_query WHERE status IN (",
                    <Self as SqlBackend>::STORED_NAME
                ));
                let mut list = select.separated(", ");
                for status in $crate::model::QueryStatus::ALL
                    .into_iter()
                    .filter(|s| s.is_terminal())
                {
                    list.push_bind(status.as_str());
                }
                select
                    .push(") AND updated_on < ")
                    .push_bind($crate::dao::sql::micros(before))
                    .push(" ORDER BY seq LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .push(<Self as SqlBackend>::CLAIM_LOCK);
                self.reap_rows("deleting expired jobs", select, reap, |ids| {
                    $crate::dao::sql::where_ids("DELETE FROM async_query", ids)
                })
                .await
            }

            /// `expire_results`: `COMPLETE` records with output, older
            /// than `before`, through the partial index of exactly those
            /// (the condition is spelled as in the index, with literals,
            /// so the planner can use it); the result JSON is rewritten in
            /// SQL, so bodies are never read.
            async fn expire_result_rows(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: usize,
                message: &str,
                reap: $crate::dao::Reaper<'_>,
            ) -> $crate::Result<$crate::dao::Purged> {
                use $crate::dao::sql::SqlBackend;
                let mut select = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT id, {} FROM async_query WHERE {} AND updated_on < ",
                    <Self as SqlBackend>::STORED_NAME,
                    $crate::dao::sql::output_kept(<Self as SqlBackend>::BODY_TYPE),
                ));
                select
                    .push_bind($crate::dao::sql::micros(before))
                    .push(" ORDER BY updated_on LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .push(<Self as SqlBackend>::CLAIM_LOCK);
                let message = message.to_owned();
                self.reap_rows("expiring results", select, reap, move |ids| {
                    let [before, after] = <Self as SqlBackend>::EXPIRED_RESULT;
                    let mut update =
                        sqlx::QueryBuilder::<$db>::new("UPDATE async_query SET result = ");
                    update.push(before).push_bind(message).push(after);
                    $crate::dao::sql::push_ids(&mut update, ids);
                    update
                })
                .await
            }
        }
    };
}

pub(crate) use sql_retention;
