//! The SQL Lab's pieces, shared by `examples/sql_lab.rs`, `tests/http.rs`
//! and `tests/two_instances.rs`: a demo SQLite database and a read-only,
//! interruptible SQL executor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_query::{AsyncQuery, BoxError, ExecutionContext, JobKind, QueryExecutor, QueryOutput};
use async_query::{Progress, Record, SubmitRequest};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use serde_json::{Value, json};

/// Creates the demo database at `path` (replacing it): `regions` (5 rows),
/// `customers` (10,000) and `orders` (`orders` rows, 1,000,000 in the
/// example), built by recursive CTEs so it takes about a second.
pub fn create_demo_database(path: &Path, orders: u64) -> rusqlite::Result<()> {
    let _ = std::fs::remove_file(path);
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         BEGIN;
         CREATE TABLE regions (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO regions VALUES (1,'EMEA'),(2,'APAC'),(3,'NA'),(4,'LATAM'),(5,'ANZ');
         CREATE TABLE customers (
             id INTEGER PRIMARY KEY, name TEXT NOT NULL, region_id INTEGER NOT NULL
                 REFERENCES regions(id), since TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO customers SELECT i, printf('customer-%05d', i), i % 5 + 1,
             date('2020-01-01', '+' || (i % 1500) || ' days') FROM n;
         CREATE TABLE orders (
             id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
             product TEXT NOT NULL, quantity INTEGER NOT NULL, amount REAL NOT NULL,
             status TEXT NOT NULL, note TEXT, ordered_on TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {orders})
         INSERT INTO orders SELECT i, (i * 7919) % 10000 + 1,
             CASE i % 4 WHEN 0 THEN 'widget' WHEN 1 THEN 'gadget, large'
                        WHEN 2 THEN 'gizmo \"pro\"' ELSE 'doohickey' END,
             i % 17 + 1, round((i * 37 % 100000) / 100.0, 2),
             CASE WHEN i % 50 = 0 THEN 'returned' ELSE 'shipped' END,
             CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i END,
             date('2024-01-01', '+' || (i % 730) || ' days') FROM n;
         CREATE INDEX orders_customer ON orders(customer_id);
         COMMIT;"
    ))
}

/// The demo database at `path` with `orders` rows: the file there if it is
/// a complete one of that size, otherwise built (in a file of its own,
/// renamed into place, so that instances starting together never see half
/// of one). Returns whether it was built.
#[allow(dead_code)] // Used by the example and tests/two_instances.rs.
pub fn ensure_demo_database(path: &Path, orders: u64) -> rusqlite::Result<bool> {
    let complete = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|conn| {
            conn.query_row("SELECT max(id) FROM orders", [], |row| {
                row.get::<_, Option<i64>>(0)
            })
        })
        .is_ok_and(|max| max.is_some_and(|max| u64::try_from(max) == Ok(orders)));
    if complete {
        return Ok(false);
    }
    let building = path.with_extension(format!("building-{}", std::process::id()));
    create_demo_database(&building, orders)?;
    std::fs::rename(&building, path).map_err(|e| {
        rusqlite::Error::InvalidPath(
            format!("{} → {}: {e}", building.display(), path.display()).into(),
        )
    })?;
    Ok(true)
}

/// Runs read-only SQL against one SQLite file: queries answer a JSON array
/// of row objects inline; exports stream rows. Cancelling or timing out a
/// job interrupts the SQLite statement.
pub struct SqlExecutor {
    path: PathBuf,
    max_inline_bytes: usize,
    running: Arc<AtomicUsize>,
}

/// Counts a statement as running while alive.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SqlExecutor {
    /// An executor over the database at `path`; inline results above
    /// `max_inline_bytes` fail with a hint to export instead.
    pub fn new(path: impl Into<PathBuf>, max_inline_bytes: usize) -> Self {
        SqlExecutor {
            path: path.into(),
            max_inline_bytes,
            running: Arc::default(),
        }
    }

    /// SQLite statements running right now (on blocking threads).
    #[allow(dead_code)] // Used by the tests, not by the example.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }
}

/// Checks that `sql` is one read-only statement.
fn check(conn: &Connection, sql: &str) -> Result<(), String> {
    let invalid = |e: rusqlite::Error| format!("the query is not valid SQL: {e}");
    let mut batch = rusqlite::Batch::new(conn, sql);
    let Some(statement) = batch.next().map_err(invalid)? else {
        return Err("the query is empty".into());
    };
    if !statement.readonly() {
        return Err(
            "the SQL Lab is read-only: only SELECT (and WITH … SELECT) statements run; writes and DDL are rejected"
                .into(),
        );
    }
    drop(statement);
    if batch.next().map_err(invalid)?.is_some() {
        return Err("send one statement at a time".into());
    }
    Ok(())
}

fn to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}

/// Interrupts the statement when dropped before [`disarm`](Self::disarm):
/// the service drops the executor's future on cancel and time-out.
struct Interrupt(Option<InterruptHandle>);

impl Interrupt {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.interrupt();
        }
    }
}

/// Runs `sql` on `conn`, handing each row to `row` until it says stop.
fn run(
    conn: &Connection,
    sql: &str,
    mut row: impl FnMut(&[String], Record) -> Result<bool, BoxError>,
) -> Result<Vec<String>, BoxError> {
    let mut statement = conn.prepare(sql)?;
    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(String::from)
        .collect();
    let width = columns.len();
    let mut rows = statement.query([])?;
    while let Some(r) = rows.next()? {
        let record = (0..width)
            .map(|i| r.get_ref(i).map(to_json))
            .collect::<Result<Record, _>>()?;
        if !row(&columns, record)? {
            break;
        }
    }
    Ok(columns)
}

#[async_trait::async_trait]
impl QueryExecutor for SqlExecutor {
    fn validate(&self, request: &SubmitRequest) -> Result<(), String> {
        let conn = self
            .open()
            .map_err(|e| format!("the demo database cannot be opened: {e}"))?;
        check(&conn, &request.query)
    }

    async fn execute(
        &self,
        job: &AsyncQuery,
        ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let conn = self.open()?;
        // `validate` checked it at submit, on this instance; a queued record
        // may come from another instance or straight from the database, and
        // a read-only lab must never run a write.
        check(&conn, &job.query)?;
        let mut interrupt = Interrupt(Some(conn.get_interrupt_handle()));
        let sql = job.query.clone();
        let running = Arc::clone(&self.running);
        match job.kind {
            JobKind::Query => {
                let limit = self.max_inline_bytes;
                let body = tokio::task::spawn_blocking(move || {
                    let _running = Running::start(&running);
                    let mut body = String::from("[");
                    let mut count = 0u64;
                    run(&conn, &sql, |columns, record| {
                        let object: serde_json::Map<String, Value> =
                            columns.iter().cloned().zip(record).collect();
                        if count > 0 {
                            body.push(',');
                        }
                        body.push_str(&Value::Object(object).to_string());
                        count += 1;
                        if body.len() > limit {
                            return Err(format!(
                                "the result is above {limit} bytes; submit it as a tableExport instead"
                            )
                            .into());
                        }
                        Ok(true)
                    })?;
                    body.push(']');
                    Ok::<_, BoxError>((body, count))
                })
                .await??;
                interrupt.disarm();
                Ok(QueryOutput::body(body.0, body.1))
            }
            JobKind::TableExport { .. } => {
                // Column names come first, then rows through a small buffer:
                // memory stays bounded whatever the result size.
                let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
                let (rows_tx, rows_rx) =
                    tokio::sync::mpsc::channel::<Result<Record, BoxError>>(256);
                tokio::task::spawn_blocking(move || {
                    let _running = Running::start(&running);
                    let mut columns_tx = Some(columns_tx);
                    let mut rows = 0u64;
                    let ran = run(&conn, &sql, |columns, record| {
                        if let Some(tx) = columns_tx.take() {
                            let _ = tx.send(Ok(columns.to_vec()));
                        }
                        // Cheap to call per row: the service writes the
                        // latest report once per progress interval.
                        rows += 1;
                        ctx.report_progress(Progress::records(rows));
                        // A dropped receiver (cancel, time-out) stops the query.
                        Ok(rows_tx.blocking_send(Ok(record)).is_ok())
                    });
                    match (ran, columns_tx) {
                        (Ok(columns), Some(tx)) => {
                            let _ = tx.send(Ok(columns));
                        }
                        (Err(e), Some(tx)) => {
                            let _ = tx.send(Err(e));
                        }
                        (Err(e), None) => {
                            let _ = rows_tx.blocking_send(Err(e));
                        }
                        (Ok(_), None) => {}
                    }
                });
                let columns = columns_rx.await.map_err(|_| "the query thread stopped")??;
                // The stream owns the interrupt guard: dropping the export
                // (cancel, time-out) interrupts a statement still running.
                let rows =
                    futures::stream::unfold((rows_rx, interrupt), |(mut rx, guard)| async move {
                        let row = rx.recv().await?;
                        Some((row, (rx, guard)))
                    });
                Ok(QueryOutput::records(columns, rows))
            }
        }
    }
}
