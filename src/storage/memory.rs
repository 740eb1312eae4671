//! In-memory [`ResultStorageEngine`], for tests and small deployments.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{ResultStorageEngine, ResultStream, ResultWriter, resolve_range, validate_name};
use crate::error::Result;

type Objects = Arc<Mutex<HashMap<String, Bytes>>>;

/// Objects held as [`Bytes`] in a map. Everything lives in memory: use it for
/// tests and for results that are small.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    objects: Objects,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of the stored objects, sorted (for tests and diagnostics).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.objects).keys().cloned().collect();
        names.sort();
        names
    }
}

fn lock(objects: &Objects) -> MutexGuard<'_, HashMap<String, Bytes>> {
    // Each operation is a single insert/remove/get; poisoning cannot leave a
    // half-done change.
    objects
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct MemoryWriter {
    objects: Objects,
    name: String,
    buffer: BytesMut,
}

#[async_trait]
impl ResultWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    async fn publish(self: Box<Self>) -> Result<u64> {
        let len = self.buffer.len() as u64;
        lock(&self.objects).insert(self.name, self.buffer.freeze());
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
            name: name.to_owned(),
            buffer: BytesMut::new(),
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        validate_name(name)?;
        let Some(bytes) = lock(&self.objects).get(name).cloned() else {
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
        Ok(lock(&self.objects).get(name).map(|b| b.len() as u64))
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        Ok(lock(&self.objects).remove(name).is_some())
    }
}
