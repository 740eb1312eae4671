//! The job-history query, the same for both SQL back-ends, and the indexes
//! it reads.

use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{COLUMNS, micros};
use crate::dao::{HistoryFilter, HistoryOrder, KindFilter};
use crate::error::Result;
use crate::model::JobKind;

/// The schema version that adds the history indexes: one principal's jobs
/// by creation, and everyone's (for admins). A page then reads its rows
/// from an index range, whatever the number of records.
pub(crate) fn history_indexes() -> Vec<String> {
    vec![
        "CREATE INDEX IF NOT EXISTS async_query_history_principal \
         ON async_query (principal_name, created_on, id)"
            .into(),
        "CREATE INDEX IF NOT EXISTS async_query_history ON async_query (created_on, id)".into(),
    ]
}

/// `SELECT … FROM async_query` for one page of `filter`, after `head`
/// (`""`, or an `EXPLAIN`).
pub(crate) fn history_query<DB: sqlx::Database>(
    head: &str,
    filter: &HistoryFilter,
) -> Result<QueryBuilder<'static, DB>>
where
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new(format!(
        "{head}SELECT {COLUMNS} FROM async_query WHERE 1 = 1"
    ));
    if let Some(principal) = &filter.principal {
        query
            .push(" AND principal_name = ")
            .push_bind(principal.clone());
    }
    if !filter.statuses.is_empty() {
        query.push(" AND status IN (");
        let mut list = query.separated(", ");
        for status in &filter.statuses {
            list.push_bind(status.as_str().to_owned());
        }
        query.push(")");
    }
    if let Some(kind) = filter.kind {
        let query_kind = super::json(&JobKind::Query)?;
        query.push(match kind {
            KindFilter::Query => " AND kind = ",
            KindFilter::TableExport => " AND kind <> ",
        });
        query.push_bind(query_kind);
    }
    if let Some(t) = filter.created_from {
        query.push(" AND created_on >= ").push_bind(micros(t));
    }
    if let Some(t) = filter.created_before {
        query.push(" AND created_on < ").push_bind(micros(t));
    }
    let (after, order) = match filter.order {
        HistoryOrder::NewestFirst => (" < ", " ORDER BY created_on DESC, id DESC"),
        HistoryOrder::OldestFirst => (" > ", " ORDER BY created_on, id"),
    };
    if let Some(position) = filter.after {
        query
            .push(" AND (created_on, id)")
            .push(after)
            .push("(")
            .push_bind(position.created_micros)
            .push(", ")
            .push_bind(position.id)
            .push(")");
    }
    query
        .push(order)
        .push(" LIMIT ")
        .push_bind(i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX));
    Ok(query)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use sqlx::Executor;
    use uuid::Uuid;

    use super::history_query;
    use crate::dao::{HistoryFilter, HistoryPosition};
    use crate::model::QueryStatus;

    /// A page in the middle of a principal's history, with and without
    /// more conditions, and of everyone's.
    fn filters() -> [HistoryFilter; 3] {
        let mid = HistoryFilter {
            after: Some(HistoryPosition {
                created_micros: 10_000,
                id: Uuid::max(),
            }),
            ..HistoryFilter::newest(100)
        };
        [
            mid.clone().of_principal("alice"),
            HistoryFilter {
                statuses: vec![QueryStatus::Complete],
                created_from: Some(Utc.timestamp_opt(0, 0).single().expect("epoch")),
                ..mid.clone().of_principal("alice")
            },
            mid,
        ]
    }

    /// 20,000 finished queries created 1 µs apart, one in a hundred
    /// `alice`'s, the others `bob`'s: `{id}` and `{series}` are each
    /// database's spelling.
    const FILL: &str = "INSERT INTO async_query (seq, id, kind, query, query_type, \
        principal_name, principal_roles, status, async_after_ms, max_run_time_ms, created_on, \
        updated_on) \
        SELECT g, {id}, '{\"type\":\"query\"}', 'select 1', 'SQL', \
            CASE WHEN g % 100 = 0 THEN 'alice' ELSE 'bob' END, '[]', 'COMPLETE', 0, 1000, g, g \
        FROM {series}";

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_pages_come_from_an_index_in_order() {
        use crate::dao::SqliteDao;
        let dao = SqliteDao::connect("sqlite::memory:").await.expect("open");
        dao.migrate().await.expect("migrate");
        let fill = FILL.replace("{id}", "randomblob(16)").replace(
            "{series}",
            "(WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < 20000) \
             SELECT g FROM n)",
        );
        dao.pool()
            .execute(format!("{fill}; ANALYZE").as_str())
            .await
            .expect("fill");
        for filter in filters() {
            let rows: Vec<(i64, i64, i64, String)> =
                history_query::<sqlx::Sqlite>("EXPLAIN QUERY PLAN ", &filter)
                    .expect("query")
                    .build_query_as()
                    .fetch_all(dao.pool())
                    .await
                    .expect("explain");
            let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
            let index = if filter.principal.is_some() {
                "USING INDEX async_query_history_principal"
            } else {
                "USING INDEX async_query_history"
            };
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{filter:?}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "{filter:?} sorts instead of reading in order: {plan:?}"
            );
            let page = crate::dao::AsyncApiDao::history(&dao, &filter)
                .await
                .expect("page");
            // alice has 100 jobs up to the position, everyone 10,000.
            assert_eq!(page.len(), 100, "{filter:?}");
        }
    }

    /// With 20,000 records, a page of 100 reads at most 100 rows, through
    /// an index, also for a principal with few of them.
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_pages_read_a_bounded_number_of_rows() {
        use crate::dao::pg_test::{fresh, widest};
        let Some(db) = fresh("async_query_history").await else {
            return;
        };
        let dao = &db.dao;
        let fill = FILL
            .replace("{id}", "gen_random_uuid()")
            .replace("{series}", "generate_series(1, 20000) g");
        dao.pool()
            .execute(format!("{fill}; ANALYZE async_query").as_str())
            .await
            .expect("fill");
        for filter in filters() {
            let plan: serde_json::Value =
                history_query::<sqlx::Postgres>("EXPLAIN (ANALYZE, FORMAT JSON) ", &filter)
                    .expect("query")
                    .build_query_scalar()
                    .fetch_one(dao.pool())
                    .await
                    .expect("explain");
            let root = &plan[0]["Plan"];
            let index = if filter.principal.is_some() {
                "\"async_query_history_principal\""
            } else {
                "\"async_query_history\""
            };
            assert!(root.to_string().contains(index), "{filter:?}: {root:#}");
            assert!(
                widest(root) <= 100,
                "{filter:?} reads more than a page: {root:#}"
            );
        }
        db.drop_db().await;
    }
}
