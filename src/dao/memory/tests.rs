//! Unit tests of the in-memory store's accounting.

use super::*;
use crate::model::QueryResult;

fn finished(body: &str, at: DateTime<Utc>) -> AsyncQuery {
    AsyncQuery {
        query_type: "SQL".into(),
        created_on: at,
        updated_on: at,
        result: Some(QueryResult {
            body: ResultBody::Inline(body.into()),
            ..QueryResult::message(at, "done")
        }),
        ..crate::model::tests::record(QueryStatus::Complete)
    }
}

/// Every way a body leaves (its result expiring, its record deleted)
/// gives its bytes back, and a batch that does not fit is refused whole.
#[tokio::test]
async fn result_bytes_follow_bodies_in_and_out() {
    let dao = MemoryDao::new().with_max_result_bytes(10);
    let at = Utc::now() - chrono::Duration::hours(1);
    let (a, b) = (finished("abcd", at), finished("efgh", at));
    dao.create_many(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(dao.result_bytes(), 8);
    let refused = dao.create(&finished("ijk", at)).await;
    assert!(matches!(refused, Err(Error::Dao { .. })), "{refused:?}");
    assert_eq!(dao.result_bytes(), 8);
    // Two running jobs finishing in one batch, 2 + 1 bytes over the cap
    // together: neither change applies.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = AsyncQuery {
            status: QueryStatus::Processing,
            result: None,
            ..finished("", at)
        };
        dao.create(&job).await.unwrap();
        ids.push(job.id);
    }
    let (c, d) = (ids[0], ids[1]);
    let done = |body: &str| {
        let result = QueryResult {
            body: ResultBody::Inline(body.into()),
            ..QueryResult::message(at, "done")
        };
        StatusChange::new(QueryStatus::Processing, QueryStatus::Complete, at).with_result(result)
    };
    let batch = dao
        .update_status_many(&[(c, done("ab")), (d, done("c"))])
        .await;
    assert!(matches!(batch, Err(Error::Dao { .. })), "{batch:?}");
    for id in [c, d] {
        let job = dao.get(id).await.unwrap().unwrap();
        assert_eq!(
            job.status,
            QueryStatus::Processing,
            "nothing of the batch applied"
        );
    }
    assert_eq!(dao.result_bytes(), 8);
    dao.delete(&[c, d]).await.unwrap();
    let mut reap = |records: Vec<ExpiredRecord>| {
        let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        Box::pin(async move { ids }) as futures::future::BoxFuture<'static, Vec<Uuid>>
    };
    let purged = dao
        .expire_results(Utc::now(), 1, "expired", &mut reap)
        .await
        .unwrap();
    assert_eq!(purged, Purged::new(1, 1));
    assert_eq!(dao.result_bytes(), 4);
    dao.delete(&[a.id, b.id]).await.unwrap();
    assert_eq!(dao.result_bytes(), 0);
}
