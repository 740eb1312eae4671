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

        impl $dao {
            /// Checks every change against the transition table, then
            /// applies them (and the claim, if any) on one connection.
            async fn write_batch(
                &self,
                changes: &[(uuid::Uuid, $crate::dao::StatusChange)],
                claim: Option<&$crate::dao::sql::Claim<'_>>,
            ) -> $crate::Result<(Vec<$crate::dao::CasOutcome>, Vec<$crate::model::AsyncQuery>)> {
                for (_, change) in changes {
                    $crate::dao::check_transition(change)?;
                }
                let mut conn = $crate::dao::sql::SqlBackend::pool(self)
                    .acquire()
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("changing jobs' statuses", e))?;
                <Self as $crate::dao::sql::SqlBackend>::update_and_claim(&mut conn, changes, claim).await
            }

            /// One multi-row `INSERT` of encoded records (record, kind,
            /// roles, result).
            async fn insert_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[(&$crate::model::AsyncQuery, String, String, Option<String>)],
            ) -> std::result::Result<(), sqlx::Error> {
                use $crate::dao::sql::{micros, millis};
                let record = <Self as $crate::dao::sql::SqlBackend>::RECORD_EVENTS;
                let mut insert = sqlx::QueryBuilder::<$db>::new(record.map_or("", |[open, _]| open));
                insert.push(concat!(
                    "INSERT INTO async_query (id, kind, query, query_type, principal_name, ",
                    "principal_roles, status, async_after_ms, max_run_time_ms, created_on, ",
                    "updated_on, result, lease_owner, lease_expires_at, idempotency_key) "
                ));
                insert.push_values(rows, |mut row, (job, kind, roles, result)| {
                    row.push_bind(job.id)
                        .push_bind(kind.as_str())
                        .push_bind(job.query.as_str())
                        .push_bind(job.query_type.as_str())
                        .push_bind(job.principal.name.as_str())
                        .push_bind(roles.as_str())
                        .push_bind(job.status.as_str())
                        .push_bind(millis(job.async_after))
                        .push_bind(millis(job.max_run_time))
                        .push_bind(micros(job.created_on))
                        .push_bind(micros(job.updated_on))
                        .push_bind(result.as_deref())
                        .push_bind(job.lease.as_ref().map(|l| l.owner))
                        .push_bind(job.lease.as_ref().map(|l| micros(l.expires_at)))
                        .push_bind(job.idempotency_key.as_deref());
                });
                if let Some([_, close]) = record {
                    insert.push(
                        " RETURNING NULL AS event_from, id, kind, principal_name, status, updated_on",
                    );
                    insert.push(close);
                }
                insert.build().execute(&mut *conn).await.map(|_| ())
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
                     lease_expires_at = CASE $4 WHEN 1 THEN $6 WHEN 2 THEN NULL ELSE lease_expires_at END \
                     WHERE id = $7 AND status = $8 RETURNING $8 AS event_from, {}{close}",
                    $crate::dao::sql::COLUMNS
                );
                let updated = sqlx::query_as::<_, $crate::dao::sql::RawJob>(&sql)
                    .bind(change.to.as_str())
                    .bind(micros(change.at))
                    .bind(change.result.as_ref().map(json).transpose()?)
                    .bind(lease_mode(change.to))
                    .bind(change.lease.as_ref().map(|l| l.owner))
                    .bind(change.lease.as_ref().map(|l| micros(l.expires_at)))
                    .bind(id)
                    .bind(change.from.as_str())
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
                claim: &$crate::dao::sql::Claim<'_>,
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
                    .push(" WHERE id IN (SELECT id FROM async_query WHERE status = 'QUEUED'");
                if !exclude.is_empty() {
                    query.push(" AND id NOT IN (");
                    let mut list = query.separated(", ");
                    for id in exclude {
                        list.push_bind(*id);
                    }
                    query.push(")");
                }
                // A literal limit: with a parameter, PostgreSQL keeps
                // planning each call anew instead of caching a plan.
                query
                    .push(format!(" ORDER BY seq LIMIT {}", claim.limit))
                    .push(<Self as $crate::dao::sql::SqlBackend>::CLAIM_LOCK)
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
                use $crate::dao::sql::json;
                if jobs.is_empty() {
                    return Ok(());
                }
                if let Some(id) = $crate::dao::first_repeated_job(jobs) {
                    return Err($crate::Error::DuplicateId { id });
                }
                let fail = |e| $crate::dao::sql::db_error("creating jobs", e);
                // Encode everything before touching the database.
                let mut rows = Vec::with_capacity(jobs.len());
                for job in jobs {
                    rows.push((
                        job,
                        json(&job.kind)?,
                        json(&job.principal.roles)?,
                        job.result.as_ref().map(json).transpose()?,
                    ));
                }
                // 15 parameters a row: 500 rows stay below every database's
                // parameter limit. One statement is atomic by itself; more
                // share a transaction.
                const CHUNK: usize = 500;
                let inserted = if rows.len() <= CHUNK {
                    let mut conn = $crate::dao::sql::SqlBackend::pool(self).acquire().await.map_err(fail)?;
                    Self::insert_rows(&mut conn, &rows).await
                } else {
                    let mut tx = $crate::dao::sql::SqlBackend::pool(self).begin().await.map_err(fail)?;
                    let mut inserted = Ok(());
                    for chunk in rows.chunks(CHUNK) {
                        inserted = Self::insert_rows(&mut tx, chunk).await;
                        if inserted.is_err() {
                            break;
                        }
                    }
                    match inserted {
                        // Dropping `tx` rolls back.
                        Ok(()) => tx.commit().await,
                        failed => failed,
                    }
                };
                match inserted {
                    Ok(()) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        // Nothing was stored; name an id that exists.
                        for job in jobs {
                            if self.get(job.id).await?.is_some() {
                                return Err($crate::Error::DuplicateId { id: job.id });
                            }
                        }
                        // Or a principal's idempotency key that exists or
                        // repeats in the batch.
                        let mut keys = std::collections::HashSet::new();
                        for job in jobs {
                            if let Some(key) = &job.idempotency_key {
                                let name = job.principal.name.as_str();
                                if !keys.insert((name, key.as_str()))
                                    || $crate::AsyncApiDao::find_by_idempotency_key(self, name, key)
                                        .await?
                                        .is_some()
                                {
                                    return Err($crate::Error::IdempotencyKeyTaken { key: key.clone() });
                                }
                            }
                        }
                        Err(fail(sqlx::Error::Database(e)))
                    }
                    Err(e) => Err(fail(e)),
                }
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
                lease: &$crate::model::Lease,
                limit: usize,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<(Vec<$crate::dao::CasOutcome>, Vec<$crate::model::AsyncQuery>)> {
                let claim = $crate::dao::sql::Claim { lease, limit, at };
                self.write_batch(changes, Some(&claim)).await
            }

            async fn claim(
                &self,
                lease: &$crate::model::Lease,
                limit: usize,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::Result<Vec<$crate::model::AsyncQuery>> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let mut conn = $crate::dao::sql::SqlBackend::pool(self)
                    .acquire()
                    .await
                    .map_err(|e| $crate::dao::sql::db_error("claiming queued jobs", e))?;
                let claim = $crate::dao::sql::Claim { lease, limit, at };
                Self::claim_on(&mut conn, &claim, &[]).await
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
