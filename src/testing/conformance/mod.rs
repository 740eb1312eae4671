//! Conformance suites: the contracts of [`AsyncApiDao`] and
//! [`ResultStorageEngine`] as executable checks, one `pub async fn` per
//! contract area, like `object_store`'s integration functions. Each check
//! panics with a message naming the broken rule; a back-end that breaks
//! one rule fails exactly the area that holds it.
//!
//! [`AsyncApiDao`]: crate::AsyncApiDao
//! [`ResultStorageEngine`]: crate::ResultStorageEngine

mod claims;
mod events;
mod fairness;
mod history;
mod keys;
mod lifetime;
mod progress;
mod records;
mod retries;
mod reuse;
mod status;
mod storage;
mod writes;

pub use claims::{dao_claims, dao_clock, dao_leases, dao_list, dao_watch};
pub use events::dao_events;
pub use fairness::{dao_fair_claims, dao_running_limit};
pub use history::dao_history;
pub use keys::dao_idempotency_keys;
pub use lifetime::dao_expire_results;
pub use progress::dao_progress;
pub use records::sample_job;
pub use retries::dao_retries;
pub use reuse::dao_reuse;
pub use status::{dao_batches, dao_compare_and_set};
pub use storage::{
    read_object, storage_conformance, storage_delete, storage_names, storage_publish,
    storage_ranges, storage_stale_partials,
};
pub use writes::{dao_create_and_get, dao_delete, dao_delete_expired};

use crate::dao::AsyncApiDao;

/// Runs every check of the [`AsyncApiDao`] contract against `dao`, area by
/// area (the `dao_*` functions).
///
/// Use a store that holds no other queued jobs (claims are checked for
/// ordering); records the suite creates are deleted again except when a
/// check fails.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_conformance(dao: &dyn AsyncApiDao) {
    dao_create_and_get(dao).await;
    dao_compare_and_set(dao).await;
    dao_batches(dao).await;
    dao_claims(dao).await;
    dao_fair_claims(dao).await;
    dao_running_limit(dao).await;
    dao_retries(dao).await;
    dao_leases(dao).await;
    dao_clock(dao).await;
    dao_list(dao).await;
    dao_history(dao).await;
    dao_idempotency_keys(dao).await;
    dao_reuse(dao).await;
    dao_progress(dao).await;
    dao_delete(dao).await;
    dao_delete_expired(dao).await;
    dao_expire_results(dao).await;
    dao_watch(dao).await;
    dao_events(dao).await;
}
