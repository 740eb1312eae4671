//! In-memory [`ResultStorageEngine`], for tests and small deployments.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{ResultStorageEngine, ResultStream, ResultWriter, resolve_range, validate_name};
use crate::error::{Error, Result};

/// The bytes a [`MemoryStorage`] holds at most unless told otherwise
/// (256 MiB): published objects and exports being written together.
pub const MEMORY_STORAGE_MAX_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default)]
struct Objects {
    objects: HashMap<String, Bytes>,
    /// Bytes of the objects plus those written by unpublished writers.
    used: u64,
}

type Shared = Arc<Mutex<Objects>>;

/// Objects held as [`Bytes`] in a map. Everything lives in memory: use it for
/// tests and for results that are small.
///
/// It holds at most [`MEMORY_STORAGE_MAX_BYTES`] (change it with
/// [`with_max_bytes`](Self::with_max_bytes)), counting exports still being
/// written: a write past the limit fails with [`Error::Storage`], so the
/// export ends `FAILURE` with a message saying so, and a service on the
/// default back-ends cannot run out of memory through its results.
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    objects: Shared,
    max_bytes: u64,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage {
            objects: Shared::default(),
            max_bytes: MEMORY_STORAGE_MAX_BYTES,
        }
    }
}

impl MemoryStorage {
    /// An empty store holding at most [`MEMORY_STORAGE_MAX_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds at most `bytes` (objects and exports being written).
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Names of the stored objects, sorted (for tests and diagnostics).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.objects).objects.keys().cloned().collect();
        names.sort();
        names
    }

    /// The bytes held now: objects, and exports being written.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.objects).used
    }
}

fn lock(objects: &Shared) -> MutexGuard<'_, Objects> {
    // Each operation is a few map and counter changes made together, after
    // every check; poisoning cannot leave a half-done change.
    objects
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct MemoryWriter {
    objects: Shared,
    max_bytes: u64,
    name: String,
    buffer: BytesMut,
}

impl Drop for MemoryWriter {
    /// Gives back what an unpublished writer held (`publish` empties the
    /// buffer first).
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            let mut objects = lock(&self.objects);
            objects.used = objects.used.saturating_sub(self.buffer.len() as u64);
        }
    }
}

#[async_trait]
impl ResultWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        {
            let mut objects = lock(&self.objects);
            let wanted = objects.used + chunk.len() as u64;
            if wanted > self.max_bytes {
                return Err(Error::storage(
                    format!(
                        "writing {}: the in-memory result storage is full ({} bytes at most; \
                         use MemoryStorage::with_max_bytes, or a file or object store for large \
                         exports)",
                        self.name, self.max_bytes
                    ),
                    std::io::Error::from(std::io::ErrorKind::StorageFull),
                ));
            }
            objects.used = wanted;
        }
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    async fn publish(mut self: Box<Self>) -> Result<u64> {
        let bytes = std::mem::take(&mut self.buffer).freeze();
        let len = bytes.len() as u64;
        let mut objects = lock(&self.objects);
        if let Some(old) = objects
            .objects
            .insert(std::mem::take(&mut self.name), bytes)
        {
            objects.used = objects.used.saturating_sub(old.len() as u64);
        }
        Ok(len)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl ResultStorageEngine for MemoryStorage {
    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>> {
        validate_name(name)?;
        Ok(Box::new(MemoryWriter {
            objects: Arc::clone(&self.objects),
            max_bytes: self.max_bytes,
            name: name.to_owned(),
            buffer: BytesMut::new(),
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        validate_name(name)?;
        let Some(bytes) = lock(&self.objects).objects.get(name).cloned() else {
            return Ok(None);
        };
        let total_len = bytes.len() as u64;
        let range = resolve_range(range, total_len)?;
        // `resolve_range` keeps the range within `bytes`, so the casts and the
        // slice are in bounds.
        let body = bytes.slice(range.start as usize..range.end as usize);
        Ok(Some(ResultStream {
            total_len,
            range,
            body: Box::pin(futures::stream::iter([Ok(body)])),
        }))
    }

    async fn len(&self, name: &str) -> Result<Option<u64>> {
        validate_name(name)?;
        Ok(lock(&self.objects)
            .objects
            .get(name)
            .map(|b| b.len() as u64))
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let mut objects = lock(&self.objects);
        let Some(old) = objects.objects.remove(name) else {
            return Ok(false);
        };
        objects.used = objects.used.saturating_sub(old.len() as u64);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_byte_limit_counts_writers_and_objects_and_frees_what_goes() {
        let storage = MemoryStorage::new().with_max_bytes(10);
        let mut first = storage.create("a").await.expect("create");
        first
            .write(Bytes::from_static(b"123456"))
            .await
            .expect("6 fit");
        let mut second = storage.create("b").await.expect("create");
        let full = second.write(Bytes::from_static(b"12345")).await;
        assert!(matches!(full, Err(Error::Storage { .. })), "{full:?}");
        second
            .write(Bytes::from_static(b"1234"))
            .await
            .expect("4 fit");
        assert_eq!(storage.used_bytes(), 10);
        drop(second);
        assert_eq!(
            storage.used_bytes(),
            6,
            "a dropped writer gives its bytes back"
        );
        assert_eq!(first.publish().await.expect("publish"), 6);
        assert_eq!(storage.used_bytes(), 6);
        let mut again = storage.create("a").await.expect("create");
        again
            .write(Bytes::from_static(b"1234"))
            .await
            .expect("fits");
        again.publish().await.expect("replace");
        assert_eq!(storage.used_bytes(), 4, "a replaced object is given back");
        assert!(storage.delete("a").await.expect("delete"));
        assert_eq!(storage.used_bytes(), 0);
    }
}
