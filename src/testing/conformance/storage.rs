//! The [`ResultStorageEngine`] contract, one function per area. Each
//! function writes objects of its own (random names) and deletes them
//! again, so they run in any order.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use uuid::Uuid;

use crate::error::Error;
use crate::storage::{ResultStorageEngine, ResultWriter};

/// Every byte of object `name` of `storage` (or of its `range`), for tests
/// of storage engines.
///
/// # Panics
///
/// If the object does not exist or cannot be read.
pub async fn read_object(
    storage: &dyn ResultStorageEngine,
    name: &str,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let stream = storage
        .open(name, range)
        .await
        .expect("open failed")
        .unwrap_or_else(|| panic!("{name} must exist"));
    let chunks: Vec<Bytes> = stream.body.try_collect().await.expect("read failed");
    chunks.concat()
}

/// A fresh object name.
fn fresh_name() -> String {
    format!("conformance-{}.csv", Uuid::new_v4().simple())
}

/// A writer for `name` that has written `body` in 64 KiB chunks.
async fn written(
    storage: &dyn ResultStorageEngine,
    name: &str,
    body: &[u8],
) -> Box<dyn ResultWriter> {
    let mut writer = storage.create(name).await.expect("create failed");
    for chunk in body.chunks(64 * 1024) {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write failed");
    }
    writer
}

/// Publishes `body` as `name`.
async fn publish(storage: &dyn ResultStorageEngine, name: &str, body: &[u8]) {
    let writer = written(storage, name, body).await;
    writer.publish().await.expect("publish failed");
}

/// Checks that no object `name` can be opened.
async fn assert_absent(storage: &dyn ResultStorageEngine, name: &str, rule: &str) {
    let opened = storage.open(name, None).await.expect("open failed");
    assert!(opened.is_none(), "{rule}");
}

/// The 200,000 bytes the checks write.
fn sample_body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

/// Writing and publishing: nothing is visible before `publish`, which
/// returns the length and replaces an earlier object atomically; `abort`
/// and dropping a writer leave nothing; empty objects work.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_publish(storage: &dyn ResultStorageEngine) {
    let name = fresh_name();
    let body = sample_body();

    // nothing visible before publish
    let writer = written(storage, &name, &body).await;
    assert_absent(storage, &name, "unpublished data must not be visible").await;
    assert_eq!(storage.len(&name).await.expect("len failed"), None);
    assert_eq!(
        writer.publish().await.expect("publish failed"),
        body.len() as u64,
        "publish must return the length"
    );

    assert_eq!(
        read_object(storage, &name, None).await,
        body,
        "read must return what was written"
    );
    assert_eq!(
        storage.len(&name).await.expect("len failed"),
        Some(body.len() as u64)
    );

    // replacing is atomic: readers see the old object until publish
    let writer = written(storage, &name, b"new").await;
    assert_eq!(
        read_object(storage, &name, None).await,
        body,
        "the old object must stay until publish"
    );
    writer.publish().await.expect("publish failed");
    assert_eq!(read_object(storage, &name, None).await, b"new");

    // abort and drop leave nothing
    let aborted = format!("conformance-{}", Uuid::new_v4().simple());
    let writer = written(storage, &aborted, b"partial").await;
    writer.abort().await.expect("abort failed");
    assert_absent(storage, &aborted, "aborted data must not be visible").await;
    let writer = written(storage, &aborted, b"partial").await;
    drop(writer);
    assert_absent(storage, &aborted, "dropped writers must not publish").await;

    // empty objects
    let empty = format!("conformance-{}", Uuid::new_v4().simple());
    storage
        .create(&empty)
        .await
        .expect("create failed")
        .publish()
        .await
        .expect("publish failed");
    assert_eq!(read_object(storage, &empty, None).await, b"");
    assert!(storage.delete(&empty).await.expect("delete failed"));

    assert!(storage.delete(&name).await.expect("delete failed"));
}

/// Byte ranges: the end is clamped to the object's length; a start past
/// the end, or a reversed range, is `RangeNotSatisfiable`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_ranges(storage: &dyn ResultStorageEngine) {
    let name = fresh_name();
    let body = sample_body();
    publish(storage, &name, &body).await;

    // whole reads, lengths, ranges
    assert_eq!(
        read_object(storage, &name, None).await,
        body,
        "read must return what was written"
    );
    assert_eq!(
        storage.len(&name).await.expect("len failed"),
        Some(body.len() as u64)
    );
    let len = body.len() as u64;
    for range in [0..1, 1..2, 65_535..65_537, len - 1..len, 10..len + 100] {
        let stream = storage
            .open(&name, Some(range.clone()))
            .await
            .expect("open failed")
            .expect("exists");
        assert_eq!(stream.total_len, len);
        let end = range.end.min(len);
        assert_eq!(
            stream.range,
            range.start..end,
            "the range end must be clamped"
        );
        let got = read_object(storage, &name, Some(range.clone())).await;
        assert_eq!(
            got,
            body[range.start as usize..end as usize],
            "range {range:?} read wrong bytes"
        );
    }
    #[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the bad inputs
    let bad_ranges = [len..len + 1, 5..4];
    for bad in bad_ranges {
        match storage.open(&name, Some(bad.clone())).await {
            Err(Error::RangeNotSatisfiable { .. }) => {}
            other => panic!("range {bad:?} must be RangeNotSatisfiable, got {other:?}"),
        }
    }

    assert!(storage.delete(&name).await.expect("delete failed"));
}

/// `delete` says whether the object existed, and a deleted object is gone.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_delete(storage: &dyn ResultStorageEngine) {
    let name = fresh_name();
    publish(storage, &name, b"a,b\n1,2\n").await;
    // delete
    assert!(
        storage.delete(&name).await.expect("delete failed"),
        "delete of an existing object must say true"
    );
    assert!(
        !storage.delete(&name).await.expect("delete failed"),
        "delete of a missing object must say false"
    );
    assert_absent(storage, &name, "a deleted object must be gone").await;
}

/// Names that could escape a directory or hide are refused by every
/// method with `InvalidName`.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_names(storage: &dyn ResultStorageEngine) {
    // names that could escape are refused everywhere
    for bad in ["../escape", "a/b", ".hidden", ""] {
        assert!(
            matches!(storage.create(bad).await, Err(Error::InvalidName { .. })),
            "create({bad:?})"
        );
        assert!(
            matches!(
                storage.open(bad, None).await,
                Err(Error::InvalidName { .. })
            ),
            "open({bad:?})"
        );
        assert!(
            matches!(storage.delete(bad).await, Err(Error::InvalidName { .. })),
            "delete({bad:?})"
        );
    }
}

/// `remove_stale_partials`: the data of a writer that was never published
/// nor aborted (a killed process) never becomes visible, and removing
/// stale partials never touches a published object.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_stale_partials(storage: &dyn ResultStorageEngine) {
    let kept = fresh_name();
    publish(storage, &kept, b"published").await;
    let lost = fresh_name();
    let writer = written(storage, &lost, b"partial").await;
    // Neither published nor aborted nor dropped: as if the process died.
    std::mem::forget(writer);
    let later = SystemTime::now() + Duration::from_secs(3600);
    storage
        .remove_stale_partials(later)
        .await
        .expect("remove_stale_partials failed");
    storage
        .remove_stale_partials(later)
        .await
        .expect("remove_stale_partials failed twice");
    assert_absent(storage, &lost, "a partial object must never be visible").await;
    assert_eq!(
        read_object(storage, &kept, None).await,
        b"published",
        "removing stale partials must not touch published objects"
    );
    assert!(storage.delete(&kept).await.expect("delete failed"));
}

/// Runs every check of the [`ResultStorageEngine`] contract against
/// `storage`, area by area (the `storage_*` functions of this module).
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn storage_conformance(storage: &dyn ResultStorageEngine) {
    storage_publish(storage).await;
    storage_ranges(storage).await;
    storage_delete(storage).await;
    storage_names(storage).await;
    storage_stale_partials(storage).await;
}
