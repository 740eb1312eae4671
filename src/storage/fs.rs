//! Filesystem [`ResultStorageEngine`]: one file per object in a directory.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{ResultStorageEngine, ResultStream, ResultWriter, resolve_range, validate_name};
use crate::error::{Error, Result};

/// Stores each object as a file in one directory.
///
/// A writer writes to a hidden temporary file (`.tmp-<name>-<random>`) in
/// the same directory, syncs it, and publishes by `rename`, so readers see
/// either the old object or the whole new one. Object names are checked with
/// [`validate_name`], so no name can point outside the directory.
#[derive(Debug, Clone)]
pub struct FileSystemStorage {
    root: PathBuf,
}

impl FileSystemStorage {
    /// Uses `root`, creating it if needed.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the directory cannot be created.
    pub async fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(&root).await.map_err(|e| {
            Error::storage(format!("creating result directory {}", root.display()), e)
        })?;
        Ok(FileSystemStorage { root })
    }

    /// The directory objects are stored in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }
}

fn io_error(action: &str, path: &Path, e: std::io::Error) -> Error {
    Error::storage(format!("{action} {}", path.display()), e)
}

/// Writes to a temporary file; removes it if dropped unpublished.
struct FileWriter {
    file: Option<tokio::fs::File>,
    temp: PathBuf,
    target: PathBuf,
    len: u64,
}

impl FileWriter {
    fn file(&mut self) -> Result<&mut tokio::fs::File> {
        let temp = &self.temp;
        self.file.as_mut().ok_or_else(|| {
            io_error(
                "writing",
                temp,
                std::io::Error::other("writer already finished"),
            )
        })
    }
}

#[async_trait]
impl ResultWriter for FileWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let len = chunk.len() as u64;
        let file = self.file()?;
        if let Err(e) = file.write_all(&chunk).await {
            return Err(io_error("writing", &self.temp, e));
        }
        self.len += len;
        Ok(())
    }

    async fn publish(mut self: Box<Self>) -> Result<u64> {
        let mut file = self.file.take().ok_or_else(|| {
            io_error(
                "publishing",
                &self.temp,
                std::io::Error::other("writer already finished"),
            )
        })?;
        let synced = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        drop(file);
        synced.map_err(|e| io_error("syncing", &self.temp, e))?;
        tokio::fs::rename(&self.temp, &self.target)
            .await
            .map_err(|e| io_error("publishing", &self.target, e))?;
        // Published: nothing left to clean up on drop.
        self.temp = PathBuf::new();
        Ok(self.len)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        drop(self.file.take());
        let temp = std::mem::take(&mut self.temp);
        match tokio::fs::remove_file(&temp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", &temp, e)),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            // Best effort: a cancelled export must not leave its partial file.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[async_trait]
impl ResultStorageEngine for FileSystemStorage {
    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>> {
        let target = self.path(name)?;
        let temp = self
            .root
            .join(format!(".tmp-{name}-{}", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| io_error("creating", &temp, e))?;
        Ok(Box::new(FileWriter {
            file: Some(file),
            temp,
            target,
            len: 0,
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        let path = self.path(name)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("opening", &path, e)),
        };
        let total_len = file
            .metadata()
            .await
            .map_err(|e| io_error("reading metadata of", &path, e))?
            .len();
        let range = resolve_range(range, total_len)?;
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(|e| io_error("seeking in", &path, e))?;
        }
        let body = ReaderStream::with_capacity(file.take(range.end - range.start), 64 * 1024)
            .map_err(move |e| io_error("reading", &path, e));
        Ok(Some(ResultStream {
            total_len,
            range,
            body: Box::pin(body),
        }))
    }

    async fn len(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading metadata of", &path, e)),
        }
    }

    async fn remove_stale_partials(&self, before: std::time::SystemTime) -> Result<u64> {
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|e| io_error("listing", &self.root, e))?;
        let mut removed = 0;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("listing", &self.root, e))?
        {
            if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let path = entry.path();
            let stale = match entry.metadata().await.and_then(|m| m.modified()) {
                Ok(modified) => modified < before,
                Err(_) => false,
            };
            if stale {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("removing", &path, e)),
                }
            }
        }
        Ok(removed)
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("deleting", &path, e)),
        }
    }
}
