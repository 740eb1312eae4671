//! Idempotency keys: unique per principal among the records that have
//! one, found by principal and key, released only from the record that
//! holds them, and gone with their record.

use uuid::Uuid;

use super::records::{clean_up, now, record};
use crate::dao::AsyncApiDao;
use crate::error::Error;
use crate::model::{AsyncQuery, Principal, QueryStatus};

fn keyed(principal: &str, key: &str) -> AsyncQuery {
    AsyncQuery {
        principal: Principal::new(principal),
        idempotency_key: Some(key.to_owned()),
        ..record(now(), QueryStatus::Queued)
    }
}

async fn found(dao: &dyn AsyncApiDao, principal: &str, key: &str) -> Option<Uuid> {
    dao.find_by_idempotency_key(principal, key)
        .await
        .expect("find_by_idempotency_key failed")
        .map(|job| job.id)
}

/// The idempotency-key contract ([`AsyncApiDao::create`] with keys,
/// [`AsyncApiDao::find_by_idempotency_key`],
/// [`AsyncApiDao::release_idempotency_key`]).
///
/// # Panics
///
/// On a broken rule, naming it.
pub async fn dao_idempotency_keys(dao: &dyn AsyncApiDao) {
    let (alice, bob) = (
        format!("keys-{}", Uuid::new_v4().simple()),
        format!("keys-{}", Uuid::new_v4().simple()),
    );
    let first = keyed(&alice, "k1");
    dao.create(&first).await.expect("create with a key failed");
    assert_eq!(
        dao.get(first.id)
            .await
            .expect("get failed")
            .and_then(|j| j.idempotency_key),
        Some("k1".to_owned()),
        "a record keeps its idempotency key"
    );
    assert_eq!(
        found(dao, &alice, "k1").await,
        Some(first.id),
        "found by its key"
    );
    assert_eq!(
        found(dao, &alice, "k2").await,
        None,
        "an unknown key finds nothing"
    );
    assert_eq!(
        found(dao, &bob, "k1").await,
        None,
        "keys of other principals are apart"
    );

    let again = keyed(&alice, "k1");
    match dao.create(&again).await {
        Err(Error::IdempotencyKeyTaken { key }) => assert_eq!(key, "k1"),
        other => panic!("a principal's taken key must be refused, got {other:?}"),
    }
    assert!(
        dao.get(again.id).await.expect("get failed").is_none(),
        "a refused record is not stored"
    );
    match dao
        .create_many(&[keyed(&alice, "k3"), keyed(&alice, "k1")])
        .await
    {
        Err(Error::IdempotencyKeyTaken { .. }) => {}
        other => panic!("a batch with a taken key must be refused, got {other:?}"),
    }
    assert_eq!(
        found(dao, &alice, "k3").await,
        None,
        "a refused batch stores nothing"
    );

    let bobs = keyed(&bob, "k1");
    dao.create(&bobs)
        .await
        .expect("another principal may use the same key");
    let unkeyed = [
        record(now(), QueryStatus::Queued),
        record(now(), QueryStatus::Queued),
    ];
    dao.create_many(&unkeyed)
        .await
        .expect("records without keys never collide");

    assert!(
        !dao.release_idempotency_key(first.id, "other")
            .await
            .expect("release failed"),
        "a key is released only from the record that holds it"
    );
    assert!(
        !dao.release_idempotency_key(bobs.id, "k2")
            .await
            .expect("release failed"),
        "a key is released only from the record that holds it"
    );
    assert!(
        dao.release_idempotency_key(first.id, "k1")
            .await
            .expect("release failed"),
        "releasing a record's key reports it"
    );
    let released = dao
        .get(first.id)
        .await
        .expect("get failed")
        .expect("still there");
    assert_eq!(
        released.idempotency_key, None,
        "a released record has no key"
    );
    assert_eq!(
        released.status,
        QueryStatus::Queued,
        "releasing changes nothing else"
    );
    assert_eq!(
        found(dao, &alice, "k1").await,
        None,
        "a released key finds nothing"
    );
    dao.create(&again)
        .await
        .expect("a released key can be taken again");
    assert_eq!(found(dao, &alice, "k1").await, Some(again.id));

    dao.delete(&[again.id]).await.expect("delete failed");
    assert_eq!(
        found(dao, &alice, "k1").await,
        None,
        "a key goes with its record"
    );
    let last = keyed(&alice, "k1");
    dao.create(&last)
        .await
        .expect("a deleted record's key can be taken again");

    let mut created = vec![first.id, bobs.id, last.id];
    created.extend(unkeyed.iter().map(|j| j.id));
    clean_up(dao, &created).await;
}
