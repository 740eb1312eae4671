//! Object-store [`ResultStorageEngine`] over the `object_store` crate: S3
//! and S3-compatible servers, Google Cloud Storage, Azure Blob Storage, a
//! local directory, or memory.

use std::ops::Range;
use std::sync::Arc;

use ::object_store::path::Path;
use ::object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ResultStorageEngine, ResultStream, ResultWriter, resolve_range, validate_name};
use crate::error::{Error, Result};

/// The smallest part S3 accepts (except for the last one).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Stores export results in an [`ObjectStore`]: any of the `object_store`
/// crate's back-ends, or a host's own implementation of its trait.
///
/// Several instances that share one bucket (or container) can serve each
/// other's downloads.
///
/// # Writing
///
/// A writer buffers up to one part ([`with_part_size`](Self::with_part_size),
/// 5 MiB by default). An object that fits in one part is written with one
/// `PUT` when it is published. A larger one becomes a multipart upload: each
/// full part is sent while the export goes on, at most
/// [`with_max_concurrency`](Self::with_max_concurrency) parts at a time
/// (2 by default). Memory use is therefore bounded by about
/// `part_size × (max_concurrency + 1)` per export, whatever its size.
/// Nothing is visible under the object's key until the upload completes, and
/// a completed upload replaces an older object atomically.
///
/// On failure or [`abort`](ResultWriter::abort), the upload is aborted and
/// its parts are deleted. A writer dropped without publishing or aborting
/// aborts its upload in a background task on the current Tokio runtime.
///
/// # Uploads of a killed process
///
/// A process killed in the middle of an export leaves an incomplete
/// multipart upload behind. It is never visible as an object, but a cloud
/// store keeps (and bills) its parts until they are removed, and the
/// `object_store` crate cannot list them. So
/// [`remove_stale_partials`](ResultStorageEngine::remove_stale_partials)
/// does nothing here. Let the store remove them instead:
///
/// - **S3** (and most S3-compatible stores): a bucket lifecycle rule with
///   `AbortIncompleteMultipartUpload`, for example
///   `{"Rules":[{"ID":"abort-incomplete","Status":"Enabled","Filter":{},"AbortIncompleteMultipartUpload":{"DaysAfterInitiation":1}}]}`
///   applied with `aws s3api put-bucket-lifecycle-configuration`.
/// - **Google Cloud Storage**: a lifecycle rule with the
///   `AbortIncompleteMultipartUpload` action.
/// - **Azure**: nothing to do; uncommitted blocks are discarded after
///   seven days.
/// - **Local file system**: the staging file (`<name>#<n>`) stays in the
///   directory; remove files that contain `#` and are older than a day.
///
/// # Example
///
/// ```
/// # async fn example() -> Result<(), async_query::Error> {
/// use std::sync::Arc;
/// use async_query::storage::ObjectStoreStorage;
/// use async_query::object_store::memory::InMemory;
///
/// // With the `s3` feature: `object_store::aws::AmazonS3Builder::from_env()
/// // .with_bucket_name("exports").build()?` instead of `InMemory`.
/// let storage = ObjectStoreStorage::new(Arc::new(InMemory::new()))
///     .with_prefix("async-query/exports");
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ObjectStoreStorage {
    store: Arc<dyn ObjectStore>,
    #[cfg(feature = "s3")]
    signer: Option<Arc<dyn ::object_store::signer::Signer>>,
    prefix: Path,
    part_size: usize,
    max_concurrency: usize,
}

impl ObjectStoreStorage {
    /// Stores objects at the root of `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreStorage {
            store,
            #[cfg(feature = "s3")]
            signer: None,
            prefix: Path::default(),
            part_size: MIN_PART_SIZE,
            max_concurrency: 2,
        }
    }

    /// Stores objects under `prefix` (for example `"exports"` or
    /// `"tenant-a/exports"`), so that the bucket can hold other data too.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Path::from(prefix);
        self
    }

    /// The size of each part of a multipart upload, and so the size above
    /// which an object is uploaded in parts. Raised to 5 MiB if smaller,
    /// since S3 refuses smaller parts.
    #[must_use]
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    /// How many parts of one export may be uploading at the same time
    /// (at least 1).
    #[must_use]
    pub fn with_max_concurrency(mut self, parts: usize) -> Self {
        self.max_concurrency = parts.max(1);
        self
    }

    /// Feature `s3`: signs download URLs with `signer` (the same S3 client
    /// as the store, which implements
    /// [`Signer`](::object_store::signer::Signer)), so that
    /// [`signed_url`](ResultStorageEngine::signed_url) gives presigned URLs
    /// clients download from the store directly:
    ///
    /// ```ignore
    /// let s3 = Arc::new(AmazonS3Builder::from_env().with_bucket_name("exports").build()?);
    /// let storage = ObjectStoreStorage::new(s3.clone()).with_signer(s3);
    /// ```
    #[cfg(feature = "s3")]
    #[must_use]
    pub fn with_signer(mut self, signer: Arc<dyn ::object_store::signer::Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of the object `name`, after checking the name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if `name` fails [`validate_name`].
    pub fn key(&self, name: &str) -> Result<Path> {
        validate_name(name)?;
        Ok(self.prefix.clone().join(name))
    }

    async fn head(&self, key: &Path) -> Result<Option<::object_store::ObjectMeta>> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(::object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed("reading the metadata of", key, e)),
        }
    }
}

fn failed(action: &str, key: &Path, e: ::object_store::Error) -> Error {
    Error::storage(format!("{action} object {key}"), e)
}

/// What a writer holds: parts not sent yet, or an upload under way.
enum State {
    Buffering(Vec<Bytes>),
    Uploading(WriteMultipart),
    Finished,
}

struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: Path,
    part_size: usize,
    max_concurrency: usize,
    state: State,
    /// Bytes written so far.
    len: u64,
    /// Bytes held in `State::Buffering`.
    buffered: usize,
}

impl ObjectWriter {
    fn take(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Finished)
    }
}

#[async_trait]
impl ResultWriter for ObjectWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let len = chunk.len();
        match &mut self.state {
            State::Buffering(chunks) => {
                chunks.push(chunk);
                self.buffered += len;
                if self.buffered >= self.part_size {
                    // A full part: from now on, upload in parts.
                    let upload = self
                        .store
                        .put_multipart(&self.key)
                        .await
                        .map_err(|e| failed("starting an upload of", &self.key, e))?;
                    let mut upload = WriteMultipart::new_with_chunk_size(upload, self.part_size);
                    for chunk in chunks.drain(..) {
                        upload.put(chunk);
                    }
                    self.buffered = 0;
                    self.state = State::Uploading(upload);
                }
            }
            State::Uploading(upload) => {
                upload
                    .wait_for_capacity(self.max_concurrency)
                    .await
                    .map_err(|e| failed("uploading a part of", &self.key, e))?;
                upload.put(chunk);
            }
            State::Finished => {
                return Err(Error::storage(
                    format!("writing object {}", self.key),
                    "writer already finished",
                ));
            }
        }
        self.len += len as u64;
        Ok(())
    }

    async fn publish(mut self: Box<Self>) -> Result<u64> {
        match self.take() {
            State::Buffering(chunks) => {
                let payload: PutPayload = chunks.into_iter().collect();
                self.store
                    .put(&self.key, payload)
                    .await
                    .map_err(|e| failed("writing", &self.key, e))?;
            }
            // `finish` aborts the upload itself when a part or the
            // completion fails.
            State::Uploading(upload) => {
                upload
                    .finish()
                    .await
                    .map_err(|e| failed("completing the upload of", &self.key, e))?;
            }
            State::Finished => {
                return Err(Error::storage(
                    format!("publishing object {}", self.key),
                    "writer already finished",
                ));
            }
        }
        Ok(self.len)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let State::Uploading(upload) = self.take() {
            upload
                .abort()
                .await
                .map_err(|e| failed("aborting the upload of", &self.key, e))?;
        }
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if let State::Uploading(upload) = self.take() {
            // Abort the upload so that its parts do not linger; without a
            // runtime the store's own clean-up rule removes them.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let key = self.key.clone();
                runtime.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(%key, error = %e, "aborting a dropped upload failed");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl ResultStorageEngine for ObjectStoreStorage {
    #[cfg(feature = "s3")]
    async fn signed_url(
        &self,
        name: &str,
        valid_for: std::time::Duration,
    ) -> Result<Option<String>> {
        let key = self.key(name)?;
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(::object_store::signer::Method::GET, &key, valid_for)
            .await
            .map_err(|e| failed("signing a download URL for", &key, e))?;
        Ok(Some(url.to_string()))
    }

    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>> {
        let key = self.key(name)?;
        Ok(Box::new(ObjectWriter {
            store: Arc::clone(&self.store),
            key,
            part_size: self.part_size,
            max_concurrency: self.max_concurrency,
            state: State::Buffering(Vec::new()),
            len: 0,
            buffered: 0,
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        let key = self.key(name)?;
        let (options, total_len, range) = match range {
            None => (GetOptions::default(), None, None),
            Some(range) => {
                // The length is needed to clamp the range and to refuse one
                // that starts past the end the same way on every store.
                let Some(meta) = self.head(&key).await? else {
                    return Ok(None);
                };
                let range = resolve_range(Some(range), meta.size)?;
                if range.is_empty() {
                    return Ok(Some(ResultStream {
                        total_len: meta.size,
                        range,
                        body: futures::stream::empty().boxed(),
                    }));
                }
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    // The object read must be the one measured.
                    if_match: meta.e_tag,
                    ..GetOptions::default()
                };
                (options, Some(meta.size), Some(range))
            }
        };
        let result = match self.store.get_opts(&key, options).await {
            Ok(result) => result,
            Err(::object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e @ ::object_store::Error::Precondition { .. }) => {
                return Err(failed("reading (it was replaced while opening)", &key, e));
            }
            Err(e) => return Err(failed("reading", &key, e)),
        };
        let total_len = total_len.unwrap_or(result.meta.size);
        let range = range.unwrap_or_else(|| result.range.clone());
        let body = result
            .into_stream()
            .map_err(move |e| failed("reading", &key, e))
            .boxed();
        Ok(Some(ResultStream {
            total_len,
            range,
            body,
        }))
    }

    async fn len(&self, name: &str) -> Result<Option<u64>> {
        let key = self.key(name)?;
        Ok(self.head(&key).await?.map(|meta| meta.size))
    }

    /// Deletes the object. Stores such as S3 do not say whether a deleted
    /// key existed, so this asks first; if two callers delete the same
    /// object at once, both may be told it existed.
    async fn delete(&self, name: &str) -> Result<bool> {
        let key = self.key(name)?;
        if self.head(&key).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(&key).await {
            Ok(()) => Ok(true),
            Err(::object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(failed("deleting", &key, e)),
        }
    }
}
