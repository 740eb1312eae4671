//! The schema versions the SQL back-ends share, oldest first; each
//! back-end lists them in its `migrate`.

/// Version 1 of the schema, with `{seq}`, `{uuid}` and `{int}` standing for
/// each database's types.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS async_query (
    seq              {seq},
    id               {uuid} NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    query            TEXT NOT NULL,
    query_type       TEXT NOT NULL,
    principal_name   TEXT NOT NULL,
    principal_roles  TEXT NOT NULL,
    status           TEXT NOT NULL,
    async_after_ms   {int} NOT NULL,
    max_run_time_ms  {int} NOT NULL,
    created_on       {int} NOT NULL,
    updated_on       {int} NOT NULL,
    result           TEXT,
    lease_owner      {uuid},
    lease_expires_at {int}
);
CREATE INDEX IF NOT EXISTS async_query_claim ON async_query (status, seq);
CREATE INDEX IF NOT EXISTS async_query_age ON async_query (status, updated_on);
CREATE INDEX IF NOT EXISTS async_query_lease ON async_query (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS async_query_owner ON async_query (lease_owner) WHERE lease_owner IS NOT NULL
";

/// Version 1 of the schema for a database with these column types, as
/// single statements.
pub(crate) fn schema_v1(seq: &str, uuid: &str, int: &str) -> Vec<String> {
    SCHEMA_V1
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.replace("{seq}", seq)
                .replace("{uuid}", uuid)
                .replace("{int}", int)
        })
        .collect()
}

/// The condition for `COMPLETE` rows whose output is kept (an inline body or
/// a stored export), with `body_type` the back-end's
/// [`SqlBackend::BODY_TYPE`]: the predicate of the partial index
/// [`results_index`] and of the query that finds results past their
/// lifetime, spelled the same so the planner matches them.
pub(crate) fn output_kept(body_type: &str) -> String {
    format!("status = 'COMPLETE' AND {body_type} IN ('inline', 'stored')")
}

/// The schema version that adds the partial index behind result lifetime:
/// `COMPLETE` rows with output, by `updated_on`, so finding outlived
/// results reads only those (not every record retention still keeps).
pub(crate) fn results_index(body_type: &str) -> Vec<String> {
    vec![format!(
        "CREATE INDEX IF NOT EXISTS async_query_results ON async_query (updated_on) WHERE {}",
        output_kept(body_type)
    )]
}

/// The schema version that adds idempotency keys: a nullable column and a
/// unique index over the principal's keys, which is what stops two
/// instances racing with one key from both storing a job.
pub(crate) fn idempotency_keys() -> Vec<String> {
    vec![
        "ALTER TABLE async_query ADD COLUMN idempotency_key TEXT".to_owned(),
        "CREATE UNIQUE INDEX IF NOT EXISTS async_query_idempotency ON async_query \
         (principal_name, idempotency_key) WHERE idempotency_key IS NOT NULL"
            .to_owned(),
    ]
}

/// The schema version that adds progress: a nullable JSON column of the
/// latest report written.
pub(crate) fn progress_column() -> Vec<String> {
    vec!["ALTER TABLE async_query ADD COLUMN progress TEXT".to_owned()]
}

/// The schema version behind fair claims: each principal's queued jobs in
/// order, and its running jobs, both as partial indexes, so a claim reads
/// a few index entries per principal with queued jobs.
pub(crate) fn fair_claim_indexes() -> Vec<String> {
    vec![
        "CREATE INDEX IF NOT EXISTS async_query_queued_by ON async_query \
         (principal_name, seq) WHERE status = 'QUEUED'"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS async_query_running_by ON async_query \
         (principal_name) WHERE status = 'PROCESSING'"
            .to_owned(),
    ]
}

/// The schema version behind retries: which attempt a record is about,
/// and when a job queued for a retry may start (`NULL` otherwise), with
/// `{int}` standing for the database's integer type.
pub(crate) fn retry_columns(int: &str) -> Vec<String> {
    vec![
        format!("ALTER TABLE async_query ADD COLUMN attempt {int} NOT NULL DEFAULT 1"),
        format!("ALTER TABLE async_query ADD COLUMN retry_at {int}"),
    ]
}
