//! `RedisStorage` against a real Redis: the storage conformance suite,
//! chunked objects, expiry, readers that never mix versions, and exports
//! through the service. The server's URL comes from
//! `ASYNC_QUERY_TEST_REDIS_URL` (`.ci/run` sets it); without it the tests
//! print `*** SKIPPED ***`.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::redis::AsyncCommands;
use async_query::testing::{read_object, storage_conformance};
use async_query::{Error, QueryStatus, RedisStorage, ResultStorageEngine};
use common::*;
use futures::StreamExt;

/// A storage under a fresh prefix, and a connection to look at its keys.
async fn storage() -> Option<(
    RedisStorage,
    async_query::redis::aio::ConnectionManager,
    String,
)> {
    let Ok(url) = std::env::var("ASYNC_QUERY_TEST_REDIS_URL") else {
        eprintln!("\n*** SKIPPED: set ASYNC_QUERY_TEST_REDIS_URL to run the Redis tests ***\n");
        return None;
    };
    let prefix = format!("aq-test-{}", uuid::Uuid::new_v4().simple());
    let storage = RedisStorage::connect(&url)
        .await
        .expect("Redis at ASYNC_QUERY_TEST_REDIS_URL")
        .with_prefix(prefix.clone());
    let client = async_query::redis::Client::open(url.as_str()).unwrap();
    let connection = client.get_connection_manager().await.unwrap();
    Some((storage, connection, prefix))
}

async fn keys(
    connection: &mut async_query::redis::aio::ConnectionManager,
    prefix: &str,
) -> Vec<String> {
    let mut keys: Vec<String> = connection.keys(format!("{prefix}:*")).await.unwrap();
    keys.sort();
    keys
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

async fn write(
    storage: &RedisStorage,
    name: &str,
    body: &[u8],
) -> Box<dyn async_query::storage::ResultWriter> {
    write_object(storage, name, body, 10_000).await
}

#[tokio::test]
async fn redis_storage_conforms_with_default_and_small_chunks() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    storage_conformance(&storage).await;
    // 1 KiB chunks: the suite's 200,000 bytes span 196 chunks, and its
    // ranges cross chunk boundaries.
    storage_conformance(&storage.clone().with_chunk_size(1024)).await;
    assert_eq!(
        keys(&mut redis, &prefix).await,
        Vec::<String>::new(),
        "the suite deletes what it writes"
    );
}

#[tokio::test]
async fn objects_are_chunked_lists_with_the_configured_expiry() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    let storage = storage
        .with_chunk_size(4096)
        .with_expiry(Some(Duration::from_secs(3600)))
        .with_partial_expiry(Duration::from_secs(120));
    let data = body(10_000);

    let writer = write(&storage, "a.csv", &data).await;
    // Two full chunks are written; only the partial list exists, with its
    // own expiry, and nothing is visible.
    let partial = keys(&mut redis, &prefix).await;
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(partial[0].contains(":partial:"), "{partial:?}");
    let ttl: i64 = redis.pttl(&partial[0]).await.unwrap();
    assert!((1..=120_000).contains(&ttl), "partial expiry {ttl} ms");
    assert_eq!(storage.len("a.csv").await.unwrap(), None);
    assert_eq!(writer.publish().await.unwrap(), 10_000);

    let key = storage.key("a.csv").unwrap();
    assert_eq!(keys(&mut redis, &prefix).await, vec![key.clone()]);
    let elements: i64 = redis.llen(&key).await.unwrap();
    assert_eq!(elements, 1 + 3, "a header and three chunks of 4096");
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&ttl),
        "object expiry {ttl} ms"
    );
    assert_eq!(read_object(&storage, "a.csv", None).await, data);

    // Without an expiry the object stays (and a replacement drops the old TTL).
    let forever = storage.clone().with_expiry(None);
    write(&forever, "a.csv", b"new")
        .await
        .publish()
        .await
        .unwrap();
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert_eq!(ttl, -1, "no expiry");
    assert_eq!(read_object(&storage, "a.csv", None).await, b"new");
    assert!(storage.delete("a.csv").await.unwrap());
}

#[tokio::test]
async fn a_partial_that_expired_is_never_published_with_a_hole() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    let storage = storage.with_chunk_size(1024);
    let writer = write(&storage, "slow.csv", &body(5000)).await;
    // As if the partial list expired while the export was idle.
    let partial = keys(&mut redis, &prefix).await;
    let _: () = redis.del(&partial).await.unwrap();
    let err = writer.publish().await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    assert!(
        format!("{err:?}").contains("expired before it was published"),
        "{err:?}"
    );
    assert_eq!(storage.len("slow.csv").await.unwrap(), None);
    assert_eq!(keys(&mut redis, &prefix).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_reader_fails_rather_than_mixing_two_versions() {
    let Some((storage, _redis, _prefix)) = storage().await else {
        return;
    };
    let storage = storage.with_chunk_size(1024);
    write(&storage, "v.csv", &body(10_000))
        .await
        .publish()
        .await
        .unwrap();
    let mut stream = storage.open("v.csv", None).await.unwrap().unwrap().body;
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], &body(10_000)[..1024]);
    write(&storage, "v.csv", &body(20_000))
        .await
        .publish()
        .await
        .unwrap();
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(format!("{err:?}").contains("replaced"), "{err:?}");
    assert!(storage.delete("v.csv").await.unwrap());
}

#[tokio::test]
async fn aborted_and_dropped_writers_leave_no_keys() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    let storage = storage.with_chunk_size(1024);
    write(&storage, "x.csv", &body(5000))
        .await
        .abort()
        .await
        .unwrap();
    assert_eq!(keys(&mut redis, &prefix).await, Vec::<String>::new());
    drop(write(&storage, "y.csv", &body(5000)).await);
    let mut left = keys(&mut redis, &prefix).await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = keys(&mut redis, &prefix).await;
    }
    assert!(
        left.is_empty(),
        "a dropped writer removes its partial: {left:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_error() {
    let err = RedisStorage::connect("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
    let err = RedisStorage::connect("not a url").await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err:?}");
}

#[tokio::test]
async fn an_export_through_the_service_downloads_the_same_rows() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    let storage = storage.with_chunk_size(64 * 1024);
    let service = storage_service(config(), Arc::new(storage.clone()));
    let job = export_csv(&service, "rows 50000").await;
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    assert_eq!(
        keys(&mut redis, &prefix).await,
        vec![storage.key(&job.id.to_string()).unwrap()]
    );

    let bytes = read_download(service.download(&alice(), job.id, None).await.unwrap()).await;
    assert_eq!(
        Some(bytes.len() as u64),
        job.result.and_then(|r| r.content_length)
    );
    let rows = csv_rows(&bytes);
    assert_eq!(rows.len(), 50_000);
    assert_eq!(&rows[49_999][1], "name 49999");

    // A failed export leaves no key behind.
    let failed = export_csv(&service, "rows 50000 fail 40000").await;
    assert_eq!(failed.status, QueryStatus::Failure);
    assert_eq!(keys(&mut redis, &prefix).await.len(), 1);
    let _report = service.shutdown(SECOND).await;
    let left = keys(&mut redis, &prefix).await;
    let _: () = redis.del(left).await.unwrap();
}

#[tokio::test]
async fn a_key_that_is_not_ours_is_a_storage_error_not_a_panic() {
    let Some((storage, mut redis, prefix)) = storage().await else {
        return;
    };
    let key = storage.key("foreign.csv").unwrap();
    let _: () = redis.rpush(&key, "not a header").await.unwrap();
    for err in [
        storage.len("foreign.csv").await.unwrap_err(),
        storage.open("foreign.csv", None).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::Storage { .. }), "{err:?}");
        assert!(format!("{err:?}").contains("header"), "{err:?}");
    }
    assert!(storage.delete("foreign.csv").await.unwrap());
    assert_eq!(keys(&mut redis, &prefix).await, Vec::<String>::new());
}
