//! Test helpers (feature `test-util`): a scripted executor for lifecycle
//! tests, fault-injecting wrappers for back-ends, and conformance suites that every [`AsyncApiDao`](crate::AsyncApiDao)
//! and [`ResultStorageEngine`](crate::ResultStorageEngine) must pass — run
//! them against your own back-end:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dao = async_query::MemoryDao::new();
//! async_query::testing::dao_conformance(&dao).await;
//! let storage = async_query::MemoryStorage::new();
//! async_query::testing::storage_conformance(&storage).await;
//! # }
//! ```

mod conformance;
mod executor;
mod faults;

pub use conformance::{dao_conformance, sample_job, storage_conformance};
pub use executor::ScriptedExecutor;
pub use faults::{Faults, FaultyDao, FaultyStorage, InjectedFault};
