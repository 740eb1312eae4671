//! `ObjectStoreStorage` on object_store's in-memory and local stores, and on
//! a real S3-compatible server (moto) on 127.0.0.1: the storage conformance
//! suite, multipart uploads in bounded parts, aborts that leave no upload
//! behind, and exports through the service.
#![cfg(feature = "s3")]

mod common;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_query::object_store::local::LocalFileSystem;
use async_query::object_store::memory::InMemory;
use async_query::object_store::path::Path;
use async_query::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use async_query::testing::{read_object, storage_conformance};
use async_query::{
    AsyncQueryService, ObjectStoreStorage, QueryStatus, ResultBody, ResultStorageEngine,
};
use common::*;
use futures::stream::BoxStream;

const MIB: usize = 1024 * 1024;

/// `len` bytes that differ from part to part.
fn big_body(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / MIB) as u8)
        .collect()
}

/// Writes `body` in 256 KiB pieces, returning the unpublished writer.
async fn write(
    storage: &dyn ResultStorageEngine,
    name: &str,
    body: &[u8],
) -> Box<dyn async_query::storage::ResultWriter> {
    write_object(storage, name, body, 256 * 1024).await
}

#[tokio::test]
async fn in_memory_object_store_conforms() {
    let storage = ObjectStoreStorage::new(Arc::new(InMemory::new())).with_prefix("exports");
    storage_conformance(&storage).await;
}

#[tokio::test]
async fn local_object_store_conforms_and_leaves_no_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let storage = ObjectStoreStorage::new(Arc::new(local)).with_prefix("exports");
    storage_conformance(&storage).await;

    // A multipart upload that is aborted, and one that is dropped.
    let body = big_body(12 * MIB);
    write(&storage, "aborted.csv", &body)
        .await
        .abort()
        .await
        .unwrap();
    drop(write(&storage, "dropped.csv", &body).await);
    let published = write(&storage, "published.csv", &body).await;
    assert_eq!(published.publish().await.unwrap(), body.len() as u64);
    // The dropped writer's clean-up runs in the background.
    for _ in 0..100 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if std::fs::read_dir(dir.path().join("exports"))
            .unwrap()
            .count()
            == 1
        {
            break;
        }
    }
    let left: Vec<String> = std::fs::read_dir(dir.path().join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["published.csv".to_owned()]);
    assert_eq!(read_object(&storage, "published.csv", None).await, body);
}

#[tokio::test]
async fn s3_storage_conforms() {
    let Some(s3) = moto::start() else { return };
    let (bucket, store) = s3.bucket().await;
    let storage = ObjectStoreStorage::new(store).with_prefix("results");
    storage_conformance(&storage).await;
    assert!(
        s3.keys(&bucket).await.is_empty(),
        "the suite deletes what it writes"
    );
    assert!(s3.open_uploads(&bucket).await.is_empty());
}

#[tokio::test]
async fn s3_presigned_urls_download_the_object_without_credentials() {
    let Some(s3) = moto::start() else { return };
    let (_, client) = s3.s3_bucket().await;
    let storage = ObjectStoreStorage::new(client.clone())
        .with_prefix("results")
        .with_signer(client.clone());
    let body = big_body(100_000);
    write(&storage, "signed.csv", &body)
        .await
        .publish()
        .await
        .unwrap();

    let valid_for = std::time::Duration::from_secs(90);
    let url = storage
        .signed_url("signed.csv", valid_for)
        .await
        .unwrap()
        .expect("an S3 client signs");
    assert!(url.contains("/results/signed.csv?"), "{url}");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=90"),
        "{url}"
    );
    // A plain HTTP client, no credentials: the URL is enough.
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), &body[..]);

    // No signer: no URL; a bad name is refused either way.
    let unsigned = ObjectStoreStorage::new(client).with_prefix("results");
    assert_eq!(
        unsigned.signed_url("signed.csv", valid_for).await.unwrap(),
        None
    );
    assert!(matches!(
        storage.signed_url("../etc", valid_for).await,
        Err(async_query::Error::InvalidName { .. })
    ));
}

#[tokio::test]
async fn s3_multipart_upload_is_invisible_until_complete_and_reads_ranges() {
    let Some(s3) = moto::start() else { return };
    let (bucket, store) = s3.bucket().await;
    let storage = ObjectStoreStorage::new(store).with_max_concurrency(2);
    let body = big_body(13 * MIB + 17);

    let writer = write(&storage, "big.csv", &body).await;
    // Two full parts have gone up; the object does not exist yet.
    assert_eq!(s3.open_uploads(&bucket).await, vec!["big.csv".to_owned()]);
    assert!(storage.open("big.csv", None).await.unwrap().is_none());
    assert_eq!(storage.len("big.csv").await.unwrap(), None);
    assert_eq!(writer.publish().await.unwrap(), body.len() as u64);
    assert!(s3.open_uploads(&bucket).await.is_empty());

    assert_eq!(read_object(&storage, "big.csv", None).await, body);
    let len = body.len() as u64;
    for range in [
        0..1,
        5 * MIB as u64 - 3..5 * MIB as u64 + 3,
        len - 10..len + 100,
    ] {
        let end = range.end.min(len);
        assert_eq!(
            read_object(&storage, "big.csv", Some(range.clone())).await,
            body[range.start as usize..end as usize],
            "{range:?}"
        );
    }

    // Replacing a large object is atomic too.
    let smaller = big_body(6 * MIB);
    let writer = write(&storage, "big.csv", &smaller).await;
    assert_eq!(
        read_object(&storage, "big.csv", None).await,
        body,
        "old object until publish"
    );
    writer.publish().await.unwrap();
    assert_eq!(read_object(&storage, "big.csv", None).await, smaller);
}

#[tokio::test]
async fn s3_aborted_and_dropped_uploads_leave_nothing() {
    let Some(s3) = moto::start() else { return };
    let (bucket, store) = s3.bucket().await;
    let storage = ObjectStoreStorage::new(store);
    let body = big_body(11 * MIB);

    let writer = write(&storage, "aborted.csv", &body).await;
    assert_eq!(s3.open_uploads(&bucket).await.len(), 1);
    writer.abort().await.unwrap();
    assert!(s3.open_uploads(&bucket).await.is_empty());

    drop(write(&storage, "dropped.csv", &body).await);
    let mut left = s3.open_uploads(&bucket).await;
    for _ in 0..200 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left = s3.open_uploads(&bucket).await;
    }
    assert!(
        left.is_empty(),
        "a dropped writer aborts its upload: {left:?}"
    );
    assert!(s3.keys(&bucket).await.is_empty());
}

/// A store that fails the `fail_at`-th part of every multipart upload.
#[derive(Debug)]
struct FailingParts {
    inner: Arc<dyn ObjectStore>,
    fail_at: usize,
}

impl fmt::Display for FailingParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingParts({})", self.inner)
    }
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    parts: AtomicUsize,
    fail_at: usize,
}

#[async_query::async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if self.parts.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Box::pin(async {
                Err(async_query::object_store::Error::Generic {
                    store: "FailingParts",
                    source: "injected part failure".into(),
                })
            });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> async_query::object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> async_query::object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_query::async_trait]
impl ObjectStore for FailingParts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> async_query::object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> async_query::object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FailingUpload {
            inner,
            parts: AtomicUsize::new(0),
            fail_at: self.fail_at,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> async_query::object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, async_query::object_store::Result<Path>>,
    ) -> BoxStream<'static, async_query::object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, async_query::object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> async_query::object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> async_query::object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn export_service(storage: ObjectStoreStorage) -> AsyncQueryService {
    storage_service(config(), Arc::new(storage))
}

#[tokio::test]
async fn s3_export_through_the_service_downloads_the_same_bytes() {
    let Some(s3) = moto::start() else { return };
    let (bucket, store) = s3.bucket().await;
    let service = export_service(ObjectStoreStorage::new(store).with_prefix("exports"));
    // About 11 MB of CSV: three parts.
    let job = export_csv(&service, "rows 500000").await;
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let result = job.result.clone().unwrap();
    assert_eq!(result.body, ResultBody::Stored(job.id.to_string()));
    assert_eq!(s3.keys(&bucket).await, vec![format!("exports/{}", job.id)]);
    assert!(s3.open_uploads(&bucket).await.is_empty());

    let bytes = read_download(service.download(&alice(), job.id, None).await.unwrap()).await;
    assert!(bytes.len() > 10 * MIB, "{} bytes", bytes.len());
    assert_eq!(Some(bytes.len() as u64), result.content_length);
    let rows = csv_rows(&bytes);
    assert_eq!(rows.len(), 500_000);
    assert_eq!(&rows[499_999][1], "name 499999");
}

#[tokio::test]
async fn s3_a_part_that_fails_ends_the_export_failed_with_nothing_left() {
    let Some(s3) = moto::start() else { return };
    let (bucket, store) = s3.bucket().await;
    let failing = FailingParts {
        inner: store,
        fail_at: 2,
    };
    let service = export_service(ObjectStoreStorage::new(Arc::new(failing)));
    let job = export_csv(&service, "rows 500000").await;
    assert_eq!(job.status, QueryStatus::Failure);
    let message = job
        .result
        .clone()
        .and_then(|r| r.message)
        .unwrap_or_default();
    // The part fails while writing or when completing, as the upload's
    // tasks happen to run; the message names the object either way.
    assert!(
        message.contains("upload") && message.contains(&job.id.to_string()),
        "{message}"
    );
    assert!(
        s3.keys(&bucket).await.is_empty(),
        "no object after a failed upload"
    );
    assert!(
        s3.open_uploads(&bucket).await.is_empty(),
        "the failed upload is aborted"
    );
}
