//! Creating records for the SQL back-ends, written once as a macro like
//! the queries (see `queries.rs`): encoding, multi-row `INSERT`s in chunks,
//! and naming what a unique index refused.

/// Adds `insert_jobs` (the body of `create_many`) and `insert_rows` to
/// `$dao`, a `SqlBackend` on database `$db`.
macro_rules! sql_create {
    ($dao:ty, $db:ty) => {
        impl $dao {
            /// One multi-row `INSERT` of encoded records.
            async fn insert_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[$crate::dao::sql::EncodedJob<'_>],
            ) -> std::result::Result<(), sqlx::Error> {
                use $crate::dao::sql::{micros, millis};
                let record = <Self as $crate::dao::sql::SqlBackend>::RECORD_EVENTS;
                let mut insert = sqlx::QueryBuilder::<$db>::new(record.map_or("", |[open, _]| open));
                insert.push(concat!(
                    "INSERT INTO async_query (id, kind, query, query_type, principal_name, ",
                    "principal_roles, status, async_after_ms, max_run_time_ms, created_on, ",
                    "updated_on, result, lease_owner, lease_expires_at, idempotency_key, progress, ",
                    "attempt, retry_at) "
                ));
                insert.push_values(rows, |mut row, (job, kind, roles, result, progress)| {
                    row.push_bind(job.id)
                        .push_bind(kind.as_str())
                        .push_bind(&*job.query)
                        .push_bind(&*job.query_type)
                        .push_bind(&*job.principal.name)
                        .push_bind(roles.as_str())
                        .push_bind(job.status.as_str())
                        .push_bind(millis(job.async_after))
                        .push_bind(millis(job.max_run_time))
                        .push_bind(micros(job.created_on))
                        .push_bind(micros(job.updated_on))
                        .push_bind(result.as_deref())
                        .push_bind(job.lease.as_ref().map(|l| l.owner))
                        .push_bind(job.lease.as_ref().map(|l| micros(l.expires_at)))
                        .push_bind(job.idempotency_key.as_deref())
                        .push_bind(progress.as_deref())
                        .push_bind(i64::from(job.attempt))
                        .push_bind(job.retry_at.map(micros));
                });
                if let Some([_, close]) = record {
                    insert.push(
                        " RETURNING NULL AS event_from, id, kind, principal_name, status, updated_on",
                    );
                    insert.push(close);
                }
                insert.build().execute(&mut *conn).await.map(|_| ())
            }


            /// Stores new records, all or nothing (`create_many`).
            async fn insert_jobs(&self, jobs: &[$crate::model::AsyncQuery]) -> $crate::Result<()> {
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
                        job.progress.as_ref().map(json).transpose()?,
                    ));
                }
                // 18 parameters a row: 500 rows stay below every database's
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
                            if $crate::AsyncApiDao::get(self, job.id).await?.is_some() {
                                return Err($crate::Error::DuplicateId { id: job.id });
                            }
                        }
                        // Or a principal's idempotency key that exists or
                        // repeats in the batch.
                        let mut keys = std::collections::HashSet::new();
                        for job in jobs {
                            if let Some(key) = &job.idempotency_key {
                                let name = &*job.principal.name;
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
        }
    };
}

pub(crate) use sql_create;
