//! # async-query
//!
//! Run long analytic queries asynchronously, the way Elide's Async API
//! (`AsyncQuery` / `TableExport`) and Superset's global async queries do,
//! as a small embeddable library: no broker, no JVM.
//!
//! The host implements [`QueryExecutor`] for its query engine and calls
//! [`AsyncQueryService`]: `submit` waits up to an *async-after* threshold and
//! returns the finished job, or the unfinished job while it runs on in the
//! background on a bounded pool. The job can then be polled, waited on,
//! subscribed to, cancelled and (for exports) downloaded. Records live in an
//! [`AsyncApiDao`], export files in a [`ResultStorageEngine`]; both are
//! pluggable and default to memory.
//!
//! Every job follows Elide's lifecycle ([`QueryStatus`]), and every status
//! change is a compare-and-set against one transition table, so races
//! (cancel vs completion, several instances) always resolve to a legal
//! history.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use async_query::*;
//!
//! struct Sleepy;
//!
//! #[async_trait::async_trait]
//! impl QueryExecutor for Sleepy {
//!     async fn execute(&self, job: &AsyncQuery, _ctx: ExecutionContext) -> Result<QueryOutput, BoxError> {
//!         let secs: u64 = job.query.parse()?;
//!         tokio::time::sleep(Duration::from_secs(secs)).await;
//!         Ok(QueryOutput::body(format!("[{{\"slept\":{secs}}}]"), 1))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> async_query::Result<()> {
//! let service = AsyncQueryService::builder().executor(Arc::new(Sleepy)).build()?;
//! let alice = Principal::new("alice");
//!
//! // Finishes within async-after: the result comes back inline.
//! let fast = service.submit(&alice, SubmitRequest::query("0")).await?;
//! assert_eq!(fast.status, QueryStatus::Complete);
//! assert_eq!(fast.result.unwrap().inline_body(), Some("[{\"slept\":0}]"));
//!
//! // Takes longer: returned unfinished, then awaited.
//! let request = SubmitRequest::query("30").with_async_after(Duration::from_secs(1));
//! let slow = service.submit(&alice, request).await?;
//! assert_eq!(slow.status, QueryStatus::Processing);
//! let done = service.wait(&alice, slow.id, Duration::from_secs(60)).await?;
//! assert_eq!(done.status, QueryStatus::Complete);
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | *(default)* | the service, in-memory DAO, in-memory and filesystem result storage |
//! | `test-util` | conformance suites for your own back-ends, a scripted executor and fault-injecting wrappers (`async_query::testing`) |
//! | `sqlite` | [`dao::SqliteDao`](crate::dao): durable job records in an embedded SQLite file |
//! | `postgres` | [`dao::PostgresDao`](crate::dao): job records in PostgreSQL shared by many instances, with LISTEN/NOTIFY |
//! | `axum` | `async_query::http`: an axum router with Elide-compatible JSON:API routes, downloads with ranges and event polling |
//! | `metrics` | counters, gauges and histograms through the `metrics` facade, named in [`metrics`] |
//! | `xlsx` | the `XLSX` export format ([`format::XlsxFormat`]): Excel workbooks in constant memory |
//! | `arrow` | the `ARROW_STREAM` and `PARQUET` export formats ([`format::ArrowStreamFormat`], [`format::ParquetFormat`]) |
//!
//! Further reading in the repository: `docs/architecture.md`,
//! `docs/lifecycle.md` (every transition and who makes it),
//! `docs/operations.md` (deployment, leases, crashes) and
//! `docs/BENCHMARKS.md`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod dao;
pub mod error;
pub mod event;
pub mod executor;
pub mod format;
pub mod history;
#[cfg(feature = "axum")]
pub mod http;
pub mod metrics;
pub mod model;
pub mod overview;
pub mod policy;
pub mod progress;
pub mod request;
pub mod retry;
mod runtime;
pub mod service;
pub mod storage;
#[cfg(feature = "test-util")]
pub mod testing;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The `object_store` crate that [`ObjectStoreStorage`] is built on, so that a
/// host builds its store with the same version.
#[cfg(feature = "object-store")]
pub use ::object_store;
#[cfg(feature = "redis")]
pub use ::redis;
pub use async_trait::async_trait;
pub use config::Config;
pub use dao::{AsyncApiDao, MemoryDao};
pub use error::{BoxError, Error, Result};
pub use event::{EventPage, JobEvent, LoggedEvent, Subscription};
pub use executor::{ExecutionContext, QueryExecutor, QueryOutput, RecordStream};
pub use model::{
    AsyncQuery, ColumnType, ExportFormat, JobKind, Principal, QueryResult, QueryStatus, Record,
    ResultBody,
};
pub use overview::Overview;
pub use progress::Progress;
pub use request::{CancelOutcome, Reuse, ShutdownReport, SubmitRequest, WaitTimeout};
pub use retry::{RetryPolicy, Transient};
pub use service::{AsyncQueryService, AsyncQueryServiceBuilder};
#[cfg(feature = "object-store")]
pub use storage::ObjectStoreStorage;
#[cfg(feature = "redis")]
pub use storage::RedisStorage;
pub use storage::{Download, FileSystemStorage, MemoryStorage, ResultStorageEngine};
