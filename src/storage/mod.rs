//! Byte storage of export results: the [`ResultStorageEngine`] trait and its
//! contract.
//!
//! Built in: [`MemoryStorage`] and [`FileSystemStorage`]; with the
//! `object-store` feature, `ObjectStoreStorage` (S3, GCS, Azure, local, memory);
//! with `redis`, `RedisStorage`.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::model::ExportFormat;

mod fs;
mod memory;
#[cfg(feature = "object-store")]
mod object_store;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "object-store")]
pub use self::object_store::ObjectStoreStorage;
#[cfg(feature = "redis")]
pub use self::redis::RedisStorage;
pub use fs::FileSystemStorage;
pub use memory::{MEMORY_STORAGE_MAX_BYTES, MemoryStorage};

/// An object being written. Nothing is visible to readers until
/// [`publish`](ResultWriter::publish) succeeds; [`abort`](ResultWriter::abort)
/// (or dropping the writer) discards what was written.
#[async_trait]
pub trait ResultWriter: Send {
    /// Appends a chunk. The caller bounds chunk sizes; the writer must not
    /// buffer the whole object in memory (except an in-memory back-end).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the back-end fails; the caller then aborts.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Makes the object visible under its name, atomically; returns its length.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the back-end fails; nothing is visible then.
    async fn publish(self: Box<Self>) -> Result<u64>;

    /// Discards everything written.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if clean-up fails.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A stored object being read.
pub struct ResultStream {
    /// Length of the whole object.
    pub total_len: u64,
    /// The bytes this stream yields (the requested range after clamping).
    pub range: Range<u64>,
    /// The bytes, in order.
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("total_len", &self.total_len)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A stored export opened for reading, from
/// [`AsyncQueryService::download`](crate::AsyncQueryService::download).
#[derive(Debug)]
#[non_exhaustive]
pub struct Download {
    /// The export's format.
    pub format: ExportFormat,
    /// Its media type.
    pub content_type: String,
    /// The format's file extension, without the dot (for a download's
    /// file name).
    pub extension: String,
    /// The stored object's name: `<id>`, or `<id>.<ext>` with
    /// [`Config::append_file_extension`](crate::Config::append_file_extension).
    pub file_name: String,
    /// Records in the whole export.
    pub record_count: Option<u64>,
    /// The bytes.
    pub stream: ResultStream,
}

/// Byte storage for export results.
///
/// # Contract
///
/// - Names are checked with [`validate_name`]; a name that fails it is
///   rejected with [`Error::InvalidName`] by every method.
/// - `create` returns a writer; the object appears only when the writer
///   publishes, replacing any earlier object of that name atomically.
/// - `open` returns `None` for a missing object. A range's end is clamped to
///   the object's length; a range whose start is past the end (or beyond an
///   empty object) fails with [`Error::RangeNotSatisfiable`].
/// - `delete` returns whether the object existed.
#[async_trait]
pub trait ResultStorageEngine: Send + Sync + 'static {
    /// Starts writing the object `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::Storage`].
    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>>;

    /// Opens the object `name`, or the byte `range` of it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::RangeNotSatisfiable`] or
    /// [`Error::Storage`].
    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>>;

    /// The object's length, or `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::Storage`].
    async fn len(&self, name: &str) -> Result<Option<u64>>;

    /// Deletes the object; returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::Storage`].
    async fn delete(&self, name: &str) -> Result<bool>;

    /// Removes partial objects (writes never published nor aborted, e.g.
    /// of a process that was killed) last written before `before`; returns
    /// how many. The cleaner calls it every sweep with a time older than
    /// any live writer can be. The default does nothing, for back-ends that
    /// leave no partial data behind (a multipart upload that expires, memory).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    async fn remove_stale_partials(&self, before: std::time::SystemTime) -> Result<u64> {
        let _ = before;
        Ok(0)
    }

    /// A URL that lets whoever holds it read the object `name` directly
    /// from the store for `valid_for` (an S3, GCS or Azure presigned URL),
    /// or `None` (the default) if the store cannot sign. The HTTP adapter
    /// hands it out as a finished export's `url` when download links are
    /// configured ([`HttpOptions::download_links`]); such a URL is a bearer
    /// secret.
    ///
    /// [`HttpOptions::download_links`]: https://docs.rs/async-query/latest/async_query/http/struct.HttpOptions.html
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] or [`Error::Storage`].
    async fn signed_url(
        &self,
        name: &str,
        valid_for: std::time::Duration,
    ) -> Result<Option<String>> {
        validate_name(name)?;
        let _ = valid_for;
        Ok(None)
    }
}

/// Checks an object name: 1 to 200 ASCII letters, digits, `-`, `_` or `.`,
/// not starting with `.`. Such a name cannot leave a directory or name a
/// hidden (temporary) file.
///
/// # Errors
///
/// [`Error::InvalidName`] otherwise.
///
/// ```
/// use async_query::storage::validate_name;
/// assert!(validate_name("0b9a5c2e.csv").is_ok());
/// assert!(validate_name("../etc/passwd").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Clamps `range` to an object of `len` bytes (whole object for `None`).
pub(crate) fn resolve_range(range: Option<Range<u64>>, len: u64) -> Result<Range<u64>> {
    let Some(range) = range else {
        return Ok(0..len);
    };
    let end = range.end.min(len);
    if range.start > range.end || range.start >= len {
        return Err(Error::RangeNotSatisfiable {
            start: range.start,
            end: range.end,
            len,
        });
    }
    Ok(range.start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_or_hide() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".tmp", "x\0", "é", "a b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&"a".repeat(201)).is_err());
        for good in ["a", "a.csv", "A-b_c.1.ndjson", &"a".repeat(200)] {
            assert!(validate_name(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn ranges_clamp_end_and_reject_start_past_end() {
        assert_eq!(resolve_range(None, 10).unwrap(), 0..10);
        assert_eq!(resolve_range(Some(2..5), 10).unwrap(), 2..5);
        assert_eq!(resolve_range(Some(9..100), 10).unwrap(), 9..10);
        assert!(resolve_range(Some(10..11), 10).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..4;
        assert!(resolve_range(Some(reversed), 10).is_err());
        assert!(resolve_range(Some(0..1), 0).is_err());
    }
}
