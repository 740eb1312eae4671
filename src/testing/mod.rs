//! Test helpers (feature `test-util`): a scripted executor for lifecycle
//! tests, fault-injecting wrappers for back-ends, and conformance suites
//! that every [`AsyncApiDao`](crate::AsyncApiDao) and
//! [`ResultStorageEngine`](crate::ResultStorageEngine) must pass. Run them
//! against your own back-end, whole or one contract area at a time
//! (`dao_create_and_get`, `dao_compare_and_set`, `dao_batches`,
//! `dao_claims`, `dao_fair_claims`, `dao_running_limit`, `dao_retries`, `dao_leases`, `dao_clock`, `dao_list`, `dao_history`,
//! `dao_idempotency_keys`, `dao_reuse`, `dao_progress`, `dao_delete`,
//! `dao_delete_expired`, `dao_expire_results`, `dao_watch`, `dao_events`;
//! `storage_publish`, `storage_ranges`, `storage_delete`, `storage_names`,
//! `storage_stale_partials`), so a broken rule shows where it is:
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

pub use conformance::{
    dao_batches, dao_claims, dao_clock, dao_compare_and_set, dao_conformance, dao_create_and_get,
    dao_delete, dao_delete_expired, dao_events, dao_expire_results, dao_fair_claims, dao_history,
    dao_idempotency_keys, dao_leases, dao_list, dao_progress, dao_retries, dao_reuse,
    dao_running_limit, dao_watch, read_object, sample_job, storage_conformance, storage_delete,
    storage_names, storage_publish, storage_ranges, storage_stale_partials,
};
pub use executor::ScriptedExecutor;
pub use faults::{Faults, FaultyDao, FaultyStorage, InjectedFault};
