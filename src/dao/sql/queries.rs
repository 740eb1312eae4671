//! The `AsyncApiDao` queries, written once as a macro and instantiated per
//! database by `sqlite.rs` and `postgres.rs` (sqlx's generic bounds over
//! `Database` do not combine well with `async_trait`).

/// Implements `AsyncApiDao` for `$dao`, a [`SqlBackend`] on database `$db`
/// (`SqlBackend::Db`). Everything the queries need from the back-end comes
/// through that trait.
///
/// [`SqlBackend`]: super::SqlBackend
macro_rules! sql_dao {
    ($dao:ty, $db:ty) => {
        $crate::dao::sql::sql_migrations!($dao, $db);
        $crate::dao::sql::sql_retention!($dao, $db);
        $crate::dao::sql::sql_create!($dao, $db);

        impl $dao {
            /// Checks every change against the transition table, then
            /// applies them (and the claim, if any) on one connection.
            async fn write_batch(
                &self,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
                claim: Option<&$crate::dao::Claim>,
            ) -> $crate::Result<(Vec<$crate::dao::CasOutcome>, Vec<$crate::model::AsyncQuery>)> {
                for (_, change) in changes {
                    $crate::dao::check_transition(change)?;
                }
                let mut conn = $crate::dao::sql::SqlBackend::pool(self)
                    .acquire()
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("changing jobs' statuses", e))?;
                if let (Some(claim), Some(serialize)) = (
                    claim.filter(|c| c.limit > 0 && c.max_running_per_principal.is_some()),
                    <Self as $crate::dao::sql::SqlBackend>::SERIALIZE_LIMITED_CLAIMS,
                ) {
                    return Self::limited_claim(&mut conn, serialize, changes, claim).await;
                }
                <Self as $crate::dao::sql::SqlBackend>::update_and_claim(&mut conn, changes, claim).await
            }

            /// Writes `changes` and claims under a per-principal running
            /// limit in one transaction that first takes the lock
            /// `serialize` names, so that no two claimers count a
            /// principal's running jobs at once and together pass its
            /// limit.
            async fn limited_claim(
                conn: &mut <$db as sqlx::Database>::Connection,
                serialize: &str,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
                claim: &$crate::dao::Claim,
            ) -> $crate::Result<(Vec<$crate::dao::CasOutcome>, Vec<$crate::model::AsyncQuery>)> {
                use sqlx::Connection;
                let fail = |e| $crate::dao::sql::db_error("claiming queued jobs", e);
                let mut tx = conn.begin().await.map_err(fail)?;
                sqlx::query(serialize).execute(&mut *tx).await.map_err(fail)?;
                // The writes as the back-end batches them, then the claim,
                // which sees them.
                let (outcomes, _) =
                    <Self as $crate::dao::sql::SqlBackend>::update_and_claim(&mut tx, changes, None).await?;
                let ids: Vec<uuid::Uuid> = changes.iter().map(|(id, _)| *id).collect();
                let claimed = Self::claim_on(&mut tx, claim, &ids).await?;
                tx.commit().await.map_err(fail)?;
                Ok((outcomes, claimed))
            }

            /// Compare-and-sets `changes` one statement each, in order.
            async fn cas_each(
                conn: &mut <$db as sqlx::Database>::Connection,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
            ) -> $crate::Result<Vec<$crate::dao::CasOutcome>> {
                let mut outcomes = Vec::with_capacity(changes.len());
                for (id, change) in changes {
                    outcomes.push(Self::cas(&mut *conn, *id, change).await?);
                }
                Ok(outcomes)
            }

            /// One compare-and-set on `conn`; a conflict reads the current
            /// record on the same connection.
            async fn cas(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: uuid::Uuid,
                change: &$crate::dao::StatusChange,
            ) -> $crate::Result<$crate::dao::CasOutcome> {
                use $crate::dao::sql::{json, lease_mode, micros};
                let [open, close] = <Self as $crate::dao::sql::SqlBackend>::RECORD_EVENTS.unwrap_or(["", ""]);
                let sql = format!(
                    "{open}UPDATE async_query SET status = $1, updated_on = $2, result = COALESCE($3, result), \
                     lease_owner = CASE $4 WHEN 1 THEN $5 WHEN 2 THEN NULL ELSE lease_owner END, \
                     lease_expires_at = CASE $4 WHEN 1 THEN $6 WHEN 2 THEN NULL ELSE lease_expires_at END, \
                     attempt = attempt + CASE WHEN $1 = 'QUEUED' THEN 1 ELSE 0 END, retry_at = $9 \
                     WHERE id = $7 AND status = $8 RETURNING $8 AS event_from, {}{close}",
                    $crate::dao::sql::COLUMNS
                );
                let updated = sqlx::query_as::<_, $crate::dao::sql::RawJob>(&sql)
                    .bind(change.to.as_str())
                    .bind(micros(change.at))
                    .bind(change.result.as_ref().map(json).transpose()?)
                    .bind(lease_mode(change))
                    .bind(change.lease.as_ref().map(|l| l.owner))
                    .bind(change.lease.as_ref().map(|l| micros(l.expires_at)))
                    .bind(id)
                    .bind(change.from.as_str())
                    .bind($crate::dao::sql::retry_at(change))
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("changing a job's status", e))?;
                if let Some(row) = updated {
                    return Ok($crate::dao::CasOutcome::Applied(row.into_job()?));
                }
                match Self::read(conn, id).await? {
                    Some(current) => Ok($crate::dao::CasOutcome::Conflict(current)),
                    None => Err($crate::Error::NotFound { id }),
                }
            }

            /// Claims up to `claim.limit` of the oldest queued jobs on
            /// `conn`, leaving out the jobs `exclude` names.
            async fn claim_on(
                conn: &mut <$db as sqlx::Database>::Connection,
                claim: &$crate::dao::Claim,
                exclude: &[uuid::Uuid],
            ) -> $crate::Result<Vec<$crate::model::AsyncQuery>> {
                use $crate::dao::sql::micros;
                if claim.limit == 0 {
                    return Ok(Vec::new());
                }
                let [open, close] = <Self as $crate::dao::sql::SqlBackend>::RECORD_EVENTS.unwrap_or(["", ""]);
                let mut query = sqlx::QueryBuilder::<$db>::new(open);
                query.push("UPDATE async_query SET status = 'PROCESSING', lease_owner = ");
                query
                    .push_bind(claim.lease.owner)
                    .push(", lease_expires_at = ")
                    .push_bind(micros(claim.lease.expires_at))
                    .push(", updated_on = ")
                    .push_bind(micros(claim.at))
                    .push(", retry_at = NULL WHERE id IN (");
                // A literal limit: with a parameter, PostgreSQL keeps
                // planning each call anew instead of caching a plan.
                let [fair, rest] = $crate::dao::sql::fair_claim(
                    claim.limit,
                    claim.max_running_per_principal,
                    <Self as $crate::dao::sql::SqlBackend>::FAIR_FORM,
                );
                query.push(fair);
                $crate::dao::sql::push_due(&mut query, claim.at);
                if !exclude.is_empty() {
                    query.push(" AND h.id NOT IN (");
                    let mut list = query.separated(", ");
                    for id in exclude {
                        list.push_bind(*id);
                    }
                    query.push(")");
                }
                query
                    .push(rest)
                    .push(format!(
                        ") RETURNING seq, 'QUEUED' AS event_from, {}{close}",
                        $crate::dao::sql::COLUMNS
                    ));
                let rows = query
                    .build()
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("claiming queued jobs", e))?;
                $crate::dao::sql::claimed(rows.iter())
            }

            /// The record `id` on `conn`, if any.
            async fn read(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: uuid::Uuid,
            ) -> $crate::Result<Option<$crate::model::AsyncQuery>> {
                let sql = format!("SELECT {} FROM async_query WHERE id = $1", $crate::dao::sql::COLUMNS);
                sqlx::query_as::<_, $crate::dao::sql::RawJob>(&sql)
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("reading a job", e))?
                    .map($crate::dao::sql::RawJob::into_job)
                    .transpose()
            }
        }

        #[async_trait::async_trait]
        impl $crate::dao::AsyncApiDao for $dao {
            async fn create(&self, job: &$crate::model::AsyncQuery) -> $crate::Result<()> {
                self.create_many(std::slice::from_ref(job)).await
            }

            async fn create_many(&self, jobs: &[$crate::model::AsyncQuery]) -> $crate::Result<()> {
                self.insert_jobs(jobs).await
            }

            async fn find_by_idempotency_key(
                &self,
                principal: &str,
                key: &str,
            ) -> $crate::Result<Option<$crate::model::AsyncQuery>> {
                let sql = format!(
                    "SELECT {} FROM async_query WHERE principal_name = $1 AND idempotency_key = $2",
                    $crate::dao::sql::COLUMNS
                );
                sqlx::query_as::<_, $crate::dao::sql::RawJob>(&sql)
                    .bind(principal)
                    .bind(key)
                    .fetch_optional($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("reading a job by idempotency key", e))?
                    .map($crate::dao::sql::RawJob::into_job)
                    .transpose()
            }

            async fn release_idempotency_key(&self, id: uuid::Uuid, key: &str) -> $crate::Result<bool> {
                let done = sqlx::query(
                    "UPDATE async_query SET idempotency_key = NULL WHERE id = $1 AND idempotency_key = $2",
                )
                .bind(id)
                .bind(key)
                .execute($crate::dao::sql::SqlBackend::pool(self))
                .await
                .map_err(|e| $crate::dao::sql::db_error("releasing an idempotency key", e))?;
                Ok(done.rows_affected() > 0)
            }

            async fn get(&self, id: uuid::Uuid) -> $crate::Result<Option<$crate::model::AsyncQuery>> {
                let mut conn = $crate::dao::sql::SqlBackend::pool(self).acquire().await
                    .map_err(|e| $crate::dao::sql::db_error("reading a job", e))?;
                Self::read(&mut conn, id).await
            }

            async fn update_status(
                &self,
                id: uuid::Uuid,
                change: $crate::dao::StatusChange,
            ) -> $crate::Result<$crate::dao::CasOutcome> {
                $crate::dao::check_transition(&change)?;
                let mut conn = $crate::dao::sql::SqlBackend::pool(self).acquire().await
                    .map_err(|e| $crate::dao::sql::db_error("changing a job's status", e))?;
                Self::cas(&mut conn, id, &change).await
            }

            async fn update_status_many(
                &self,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
            ) -> $crate::Result<Vec<$crate::dao::CasOutcome>> {
                let (outcomes, _) = self.write_batch(changes, None).await?;
                Ok(outcomes)
            }

            async fn update_and_claim(
                &self,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
                claim: &$crate::dao::Claim,
            ) -> $crate::Result<(Vec<$crate::dao::CasOutcome>, Vec<$crate::model::AsyncQuery>)> {
                self.write_batch(changes, Some(claim)).await
            }

            async fn claim(
                &self,
                claim: &$crate::dao::Claim,
            ) -> $crate::Result<Vec<$crate::model::AsyncQuery>> {
                if claim.limit == 0 {
                    return Ok(Vec::new());
                }
                // A claim is a batch without writes: one path, limits and all.
                Ok(self.write_batch(&[], Some(claim)).await?.1)
            }

            async fn renew_leases(
                &self,
                owner: uuid::Uuid,
                ids: &[uuid::Uuid],
                expires_at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<Vec<(uuid::Uuid, $crate::model::QueryStatus)>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut renew = sqlx::QueryBuilder::<$db>::new("UPDATE async_query SET lease_expires_at = ");
                renew
                    .push_bind($crate::dao::sql::micros(expires_at))
                    .push(" WHERE lease_owner = ")
                    .push_bind(owner)
                    .push(" AND status IN ('PROCESSING', 'CANCELLED') AND id IN ");
                $crate::dao::sql::push_list(&mut renew, ids);
                renew
                    .build()
                    .execute($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("renewing leases", e))?;
                let mut read = $crate::dao::sql::where_ids::<$db>("SELECT id, status FROM async_query", ids);
                let rows: Vec<(uuid::Uuid, String)> = read
                    .build_query_as()
                    .fetch_all($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("renewing leases", e))?;
                rows.into_iter()
                    .map(|(id, status)| Ok((id, $crate::dao::sql::status(&status)?)))
                    .collect()
            }

            async fn update_progress(
                &self,
                id: uuid::Uuid,
                owner: uuid::Uuid,
                progress: &$crate::progress::Progress,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<bool> {
                let done = sqlx::query(<Self as $crate::dao::sql::SqlBackend>::PROGRESS_UPDATE)
                    .bind($crate::dao::sql::json(progress)?)
                    .bind(id)
                    .bind(owner)
                    .bind($crate::dao::sql::micros(at))
                    .execute($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("storing a job's progress", e))?;
                Ok(done.rows_affected() > 0)
            }

            async fn count_queued(&self, principal: &str, up_to: usize) -> $crate::Result<usize> {
                // A literal bound: the count reads at most that many index
                // entries (`async_query_queued_by`).
                let up_to = up_to.min(1 << 40);
                let sql = format!(
                    "SELECT count(*) FROM (SELECT 1 FROM async_query \
                     WHERE status = 'QUEUED' AND principal_name = $1 LIMIT {up_to}) counted"
                );
                let counted: i64 = sqlx::query_scalar(&sql)
                    .bind(principal)
                    .fetch_one($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("counting queued jobs", e))?;
                Ok(usize::try_from(counted).unwrap_or(usize::MAX))
            }

            async fn list(
                &self,
                filter: &$crate::dao::ListFilter,
            ) -> $crate::Result<Vec<$crate::model::AsyncQuery>> {
                use $crate::dao::sql::micros;
                let mut query = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM async_query WHERE 1 = 1",
                    $crate::dao::sql::COLUMNS
                ));
                if !filter.statuses.is_empty() {
                    query.push(" AND status IN (");
                    let mut list = query.separated(", ");
                    for status in &filter.statuses {
                        list.push_bind(status.as_str());
                    }
                    query.push(")");
                }
                if let Some(t) = filter.updated_before {
                    query.push(" AND updated_on < ").push_bind(micros(t));
                }
                if let Some(t) = filter.lease_expired_before {
                    query.push(" AND lease_expires_at < ").push_bind(micros(t));
                }
                if let Some(owner) = filter.owner {
                    query.push(" AND lease_owner = ").push_bind(owner);
                }
                query.push(" ORDER BY seq");
                if filter.limit > 0 {
                    query
                        .push(" LIMIT ")
                        .push_bind(i64::try_from(filter.limit).unwrap_or(i64::MAX));
                }
                let rows = query
                    .build_query_as::<$crate::dao::sql::RawJob>()
                    .fetch_all($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("listing jobs", e))?;
                $crate::dao::sql::into_jobs(rows)
            }

            async fn history(
                &self,
                filter: &$crate::dao::HistoryFilter,
            ) -> $crate::Result<Vec<$crate::model::AsyncQuery>> {
                let rows = $crate::dao::sql::history_query::<$db>("", filter)?
                    .build_query_as::<$crate::dao::sql::RawJob>()
                    .fetch_all($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("reading job history", e))?;
                $crate::dao::sql::into_jobs(rows)
            }

            async fn now(&self) -> $crate::Result<Option<chrono::DateTime<chrono::Utc>>> {
                $crate::dao::sql::SqlBackend::clock(self).await
            }

            async fn watch(&self) -> $crate::Result<Option<$crate::dao::SignalStream>> {
                $crate::dao::sql::SqlBackend::signals(self).await
            }

            fn keeps_events(&self) -> bool {
                $crate::dao::sql::SqlBackend::keeps_events(self)
            }

            async fn events(
                &self,
                stream: $crate::dao::EventStream<'_>,
                after: Option<u64>,
                limit: usize,
            ) -> $crate::Result<$crate::EventPage> {
                $crate::dao::sql::SqlBackend::events(self, stream, after, limit).await
            }

            async fn tidy_events(&self) -> $crate::Result<u64> {
                $crate::dao::sql::SqlBackend::tidy_events(self).await
            }

            async fn delete(&self, ids: &[uuid::Uuid]) -> $crate::Result<u64> {
                if ids.is_empty() {
                    return Ok(0);
                }
                let done = $crate::dao::sql::where_ids::<$db>("DELETE FROM async_query", ids)
                    .build()
                    .execute($crate::dao::sql::SqlBackend::pool(self))
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("deleting jobs", e))?;
                Ok(done.rows_affected())
            }

            async fn delete_expired(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: usize,
                reap: $crate::dao::Reaper<'_>,
            ) -> $crate::Result<$crate::dao::Purged> {
                self.delete_expired_rows(before, limit, reap).await
            }

            async fn expire_results(
                &self,
                before: chrono::DateTime<chrono::Utc>,
                limit: usize,
                message: &str,
                reap: $crate::dao::Reaper<'_>,
            ) -> $crate::Result<$crate::dao::Purged> {
                self.expire_result_rows(before, limit, message, reap).await
            }
        }
    };
}

pub(crate) use sql_dao;
