//! The fair claim reads a few index entries per principal with queued
//! jobs, however long one principal's queue is.

use sqlx::Executor;

use super::sql::{FairForm, fair_claim};

/// Alice's 20,000 jobs (the first two running) and one each of 50 other
/// principals, with `{id}` and `{series}` (1 to 20,050) filled in per
/// database.
const FILL: &str = "INSERT INTO async_query (id, kind, query, query_type, principal_name,
        principal_roles, status, async_after_ms, max_run_time_ms, created_on, updated_on)
    SELECT {id}, '{\"type\":\"query\"}', 'q', 'SQL',
        CASE WHEN g <= 20000 THEN 'alice' ELSE 'p' || (1000000 + g) END, '[]',
        CASE WHEN g <= 2 THEN 'PROCESSING' ELSE 'QUEUED' END, 0, 0, g, g
    FROM {series}";

/// On SQLite every read of the table goes through an index.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_reads_the_fair_claim_from_indexes() {
    let dao = super::SqliteDao::connect("sqlite::memory:")
        .await
        .expect("open");
    dao.migrate().await.expect("migrate");
    let fill = FILL.replace("{id}", "randomblob(16)").replace(
        "{series}",
        "(WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 20050) \
         SELECT g FROM n)",
    );
    dao.pool()
        .execute(format!("{fill}; ANALYZE").as_str())
        .await
        .expect("fill");
    // Without and with a running limit (alice is at it).
    for max_running in [None, Some(2)] {
        let [fair, rest] = fair_claim(1, max_running, FairForm::Sqlite);
        let select = format!("{fair}{rest}");
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {select}"))
                .fetch_all(dao.pool())
                .await
                .expect("explain");
        let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        for table in ["async_query", "q", "h", "r", "a"] {
            assert!(
                !plan.contains(&format!("SCAN {table}").as_str()),
                "a scan of every row ({table}): {plan:?}"
            );
        }
        assert!(
            plan.iter()
                .any(|step| step.contains("async_query_queued_by")),
            "{plan:?}"
        );
        let chosen: Vec<u8> = sqlx::query_scalar(&select)
            .fetch_one(dao.pool())
            .await
            .expect("claim");
        let owner: String =
            sqlx::query_scalar("SELECT principal_name FROM async_query WHERE id = $1")
                .bind(chosen)
                .fetch_one(dao.pool())
                .await
                .expect("owner");
        assert_eq!(owner, "p1020001");
    }
}

/// 20,000 jobs queued by alice (2 running), one each by 50 others: a claim
/// of one reads a few rows per principal, not alice's queue, and takes the
/// oldest job of a principal with nothing running.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_a_few_rows_per_principal() {
    use super::pg_test::{fresh, widest};
    let Some(db) = fresh("async_query_fair").await else {
        return;
    };
    let pool = db.dao.pool();
    let fill = FILL
        .replace("{id}", "gen_random_uuid()")
        .replace("{series}", "generate_series(1, 20050) g");
    pool.execute(format!("{fill}; ANALYZE async_query").as_str())
        .await
        .expect("fill the table");
    for max_running in [None, Some(2)] {
        let [fair, rest] = fair_claim(1, max_running, FairForm::Postgres);
        let select = format!("{fair}{rest}");
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {select}");
        let plan: serde_json::Value = sqlx::query_scalar(&explain)
            .fetch_one(pool)
            .await
            .expect("explain");
        let root = &plan[0]["Plan"];
        assert!(
            widest(root) <= 200,
            "the claim reads more than a few rows per principal: {root:#}"
        );
        let chosen: uuid::Uuid = sqlx::query_scalar(&select)
            .fetch_one(pool)
            .await
            .expect("claim");
        let owner: String =
            sqlx::query_scalar("SELECT principal_name FROM async_query WHERE id = $1")
                .bind(chosen)
                .fetch_one(pool)
                .await
                .expect("owner");
        assert_eq!(
            owner, "p1020001",
            "the oldest job of a principal with nothing running"
        );
    }
    db.drop_db().await;
}
