//! Redis [`ResultStorageEngine`]: each object a list of fixed-size chunks
//! with an expiry, as Elide's `RedisResultStorageEngine`.

use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use uuid::Uuid;

use super::{ResultStorageEngine, ResultStream, ResultWriter, resolve_range, validate_name};
use crate::error::{Error, Result};

/// Publishes a partial list: checks that every chunk is still there, puts
/// the header in front, renames it over the object and sets its expiry.
const PUBLISH: &str = r"
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  return redis.error_reply('AQ_PARTIAL_GONE')
end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('RENAME', KEYS[1], KEYS[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('PERSIST', KEYS[2])
end
return 1
";

/// Reads chunk `ARGV[2]` of the object whose header is `ARGV[1]`, so that
/// a reader never mixes two versions of an object.
const READ_CHUNK: &str = r"
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then
  return redis.error_reply('AQ_REPLACED')
end
return redis.call('LINDEX', KEYS[1], ARGV[2])
";

/// The scripts, hashed once (`Script::new` computes the SHA-1 that
/// `EVALSHA` sends; reads call it once per chunk).
static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH));
static READ_CHUNK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ_CHUNK));

/// Stores export results in Redis, so that several instances can serve
/// each other's downloads.
///
/// # Layout
///
/// An object is one Redis list, `<prefix>:{<name>}:object`. Its first
/// element is a header (length, chunk size and a version tag), and the
/// rest are the bytes in chunks of [`with_chunk_size`](Self::with_chunk_size)
/// (1 MiB by default).
///
/// A writer pushes each full chunk to a partial list of its own as the
/// export goes on, so memory stays at about one chunk whatever the size.
/// Publishing is one Lua script: it checks that every chunk is there, adds
/// the header, renames the list over the object (replacing an older one
/// atomically) and sets the expiry. Readers fetch one chunk per round trip
/// and fail cleanly, instead of mixing versions, if the object is replaced
/// or expires while they read.
///
/// # Expiry
///
/// A published object expires after [`with_expiry`](Self::with_expiry)
/// (7 days by default, Elide's default retention; `None` keeps it until
/// it is deleted). Set it to the result lifetime you promise users. A
/// partial list expires [`with_partial_expiry`](Self::with_partial_expiry)
/// after its last chunk (1 hour by default). That removes the writes of a
/// killed process without any sweep, so
/// [`remove_stale_partials`](ResultStorageEngine::remove_stale_partials)
/// has nothing to do. A writer idle for longer than that fails on publish
/// with a clear error rather than publishing a hole.
///
/// Redis keeps everything in memory: size its `maxmemory` for the exports
/// you keep, with an eviction policy that does not evict these keys
/// (`noeviction` or `volatile-*` with care).
///
/// # Example
///
/// ```no_run
/// # async fn example() -> Result<(), async_query::Error> {
/// use std::time::Duration;
/// use async_query::storage::RedisStorage;
///
/// let storage = RedisStorage::connect("redis://127.0.0.1:6379")
///     .await?
///     .with_prefix("exports")
///     .with_expiry(Some(Duration::from_secs(3600)));
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    connection: ConnectionManager,
    prefix: String,
    chunk_size: usize,
    expiry: Option<Duration>,
    partial_expiry: Duration,
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("prefix", &self.prefix)
            .field("chunk_size", &self.chunk_size)
            .field("expiry", &self.expiry)
            .field("partial_expiry", &self.partial_expiry)
            .finish_non_exhaustive()
    }
}

fn failed(action: &str, key: &str, e: ::redis::RedisError) -> Error {
    Error::storage(format!("{action} {key} in Redis"), e)
}

impl RedisStorage {
    /// Uses `connection`, a connection manager that reconnects by itself.
    pub fn new(connection: ConnectionManager) -> Self {
        RedisStorage {
            connection,
            prefix: "async-query".to_owned(),
            chunk_size: 1024 * 1024,
            expiry: Some(Duration::from_secs(7 * 24 * 3600)),
            partial_expiry: Duration::from_secs(3600),
        }
    }

    /// Connects to the Redis server at `url` (`redis://host:port/db`,
    /// `rediss://` for TLS if the `redis` crate is built with it).
    ///
    /// The connection manager retries a lost connection 3 times (after
    /// 0.1, 0.2 and 0.4 s) before a call fails, so an unreachable server is
    /// reported within a second; build your own manager and use
    /// [`new`](Self::new) for other settings.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the URL is malformed or the server cannot be
    /// reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = ::redis::Client::open(url)
            .map_err(|e| Error::storage(format!("opening Redis URL {url}"), e))?;
        let config = ::redis::aio::ConnectionManagerConfig::new().set_number_of_retries(3);
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| Error::storage(format!("connecting to Redis at {url}"), e))?;
        Ok(Self::new(connection))
    }

    /// The prefix of every key (`async-query` by default).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The size of each stored chunk (at least 1 KiB).
    #[must_use]
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(1024);
        self
    }

    /// How long a published object lives; `None`: until it is deleted.
    #[must_use]
    pub fn with_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.expiry = expiry;
        self
    }

    /// How long a partial object outlives its last write (at least one
    /// second).
    #[must_use]
    pub fn with_partial_expiry(mut self, expiry: Duration) -> Self {
        self.partial_expiry = expiry.max(Duration::from_secs(1));
        self
    }

    /// The Redis key of the object `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if `name` fails [`validate_name`].
    pub fn key(&self, name: &str) -> Result<String> {
        validate_name(name)?;
        Ok(format!("{}:{{{name}}}:object", self.prefix))
    }

    /// The object's header, or `None` if it does not exist.
    async fn header(&self, key: &str) -> Result<Option<Header>> {
        let raw: Option<Vec<u8>> = self
            .connection
            .clone()
            .lindex(key, 0)
            .await
            .map_err(|e| failed("reading", key, e))?;
        raw.map(|raw| Header::parse(&raw, key)).transpose()
    }
}

/// The first element of an object's list.
#[derive(Debug, Clone)]
struct Header {
    len: u64,
    chunk_size: u64,
    raw: Vec<u8>,
}

impl Header {
    fn encode(len: u64, chunk_size: usize) -> Vec<u8> {
        format!("aq1 {len} {chunk_size} {}", Uuid::new_v4().simple()).into_bytes()
    }

    fn parse(raw: &[u8], key: &str) -> Result<Header> {
        let corrupt = || {
            Error::storage(
                format!("reading {key} in Redis"),
                "the object's header is not async-query's",
            )
        };
        let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
        let mut parts = text.split(' ');
        if parts.next() != Some("aq1") {
            return Err(corrupt());
        }
        let len = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        let chunk_size: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        if chunk_size == 0 {
            return Err(corrupt());
        }
        Ok(Header {
            len,
            chunk_size,
            raw: raw.to_vec(),
        })
    }
}

struct RedisWriter {
    connection: ConnectionManager,
    key: String,
    partial: String,
    chunk_size: usize,
    expiry: Option<Duration>,
    partial_expiry: Duration,
    buffer: BytesMut,
    chunks: u64,
    len: u64,
    finished: bool,
}

impl RedisWriter {
    async fn push(&mut self, chunk: Bytes) -> Result<()> {
        let expiry = u64::try_from(self.partial_expiry.as_millis()).unwrap_or(u64::MAX);
        ::redis::pipe()
            .atomic()
            .rpush(&self.partial, &chunk[..])
            .ignore()
            .pexpire(&self.partial, i64::try_from(expiry).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(|e| failed("writing a chunk of", &self.key, e))?;
        self.chunks += 1;
        Ok(())
    }
}

#[async_trait]
impl ResultWriter for RedisWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(Error::storage(
                format!("writing {}", self.key),
                "writer already finished",
            ));
        }
        self.len += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        while self.buffer.len() >= self.chunk_size {
            let full = self.buffer.split_to(self.chunk_size).freeze();
            self.push(full).await?;
        }
        Ok(())
    }

    async fn publish(mut self: Box<Self>) -> Result<u64> {
        if !self.buffer.is_empty() {
            let last = self.buffer.split().freeze();
            self.push(last).await?;
        }
        self.finished = true;
        let expiry = self.expiry.map_or(0, |e| {
            u64::try_from(e.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let published = PUBLISH_SCRIPT
            .key(&self.partial)
            .key(&self.key)
            .arg(self.chunks)
            .arg(Header::encode(self.len, self.chunk_size))
            .arg(expiry)
            .invoke_async::<()>(&mut self.connection)
            .await;
        if let Err(e) = published {
            // Whatever is left of the partial list is useless now.
            let _: std::result::Result<(), _> = self.connection.del(&self.partial).await;
            if e.to_string().contains("AQ_PARTIAL_GONE") {
                return Err(Error::storage(
                    format!("publishing {}", self.key),
                    format!(
                        "the partial object expired before it was published (idle for more \
                         than the partial expiry of {:?})",
                        self.partial_expiry
                    ),
                ));
            }
            return Err(failed("publishing", &self.key, e));
        }
        Ok(self.len)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        self.connection
            .del::<_, ()>(&self.partial)
            .await
            .map_err(|e| failed("removing the partial", &self.key, e))
    }
}

impl Drop for RedisWriter {
    fn drop(&mut self) {
        if self.finished || self.chunks == 0 {
            return;
        }
        // Remove the partial list now; without a runtime it expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut connection = self.connection.clone();
            let partial = std::mem::take(&mut self.partial);
            runtime.spawn(async move {
                let _: std::result::Result<(), _> = connection.del(&partial).await;
            });
        }
    }
}

#[async_trait]
impl ResultStorageEngine for RedisStorage {
    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>> {
        let key = self.key(name)?;
        let partial = format!(
            "{}:{{{name}}}:partial:{}",
            self.prefix,
            Uuid::new_v4().simple()
        );
        Ok(Box::new(RedisWriter {
            connection: self.connection.clone(),
            key,
            partial,
            chunk_size: self.chunk_size,
            expiry: self.expiry,
            partial_expiry: self.partial_expiry,
            buffer: BytesMut::new(),
            chunks: 0,
            len: 0,
            finished: false,
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        let key = self.key(name)?;
        let Some(header) = self.header(&key).await? else {
            return Ok(None);
        };
        let range = resolve_range(range, header.len)?;
        let total_len = header.len;
        let chunk_size = header.chunk_size;
        let chunks = if range.is_empty() {
            0..0
        } else {
            range.start / chunk_size..(range.end - 1) / chunk_size + 1
        };
        let connection = self.connection.clone();
        let wanted = range.clone();
        // Shared by every chunk's read instead of copied into each.
        let key: Arc<str> = key.into();
        let header: Arc<[u8]> = header.raw.into();
        let body = futures::stream::iter(chunks)
            .then(move |index| {
                let mut connection = connection.clone();
                let key = Arc::clone(&key);
                let header = Arc::clone(&header);
                let wanted = wanted.clone();
                async move {
                    let chunk: Option<Vec<u8>> = READ_CHUNK_SCRIPT
                        .key(&*key)
                        .arg(&*header)
                        .arg(index + 1)
                        .invoke_async(&mut connection)
                        .await
                        .map_err(|e| {
                            if e.to_string().contains("AQ_REPLACED") {
                                Error::storage(
                                    format!("reading {key} in Redis"),
                                    "the object was replaced, deleted or expired while being read",
                                )
                            } else {
                                failed("reading", &key, e)
                            }
                        })?;
                    let chunk = chunk.ok_or_else(|| {
                        Error::storage(format!("reading {key} in Redis"), "a chunk is missing")
                    })?;
                    let at = index * chunk_size;
                    if chunk.len() as u64 != chunk_size.min(total_len - at) {
                        return Err(Error::storage(
                            format!("reading {key} in Redis"),
                            "a chunk's length differs from what the header says",
                        ));
                    }
                    // The part of this chunk inside the wanted range; both
                    // bounds are within the chunk, so they fit in usize.
                    let from = wanted.start.saturating_sub(at) as usize;
                    let to = (wanted.end - at).min(chunk_size) as usize;
                    Ok(Bytes::from(chunk).slice(from..to))
                }
            })
            .boxed();
        Ok(Some(ResultStream {
            total_len,
            range,
            body,
        }))
    }

    async fn len(&self, name: &str) -> Result<Option<u64>> {
        let key = self.key(name)?;
        Ok(self.header(&key).await?.map(|header| header.len))
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let key = self.key(name)?;
        let deleted: u64 = self
            .connection
            .clone()
            .del(&key)
            .await
            .map_err(|e| failed("deleting", &key, e))?;
        Ok(deleted > 0)
    }
}
