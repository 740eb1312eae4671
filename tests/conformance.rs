//! The built-in back-ends pass the conformance suites they ship.

mod common;

use async_query::testing::{dao_conformance, storage_conformance};
use async_query::{FileSystemStorage, MemoryDao, MemoryStorage};

#[tokio::test]
async fn memory_dao_conforms() {
    dao_conformance(&MemoryDao::new()).await;
}

#[tokio::test]
async fn memory_storage_conforms() {
    storage_conformance(&MemoryStorage::new()).await;
}

#[tokio::test]
async fn filesystem_storage_conforms_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileSystemStorage::new(dir.path().join("results"))
        .await
        .unwrap();
    storage_conformance(&storage).await;
    let left: Vec<String> = std::fs::read_dir(storage.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Each area passes on its own, in any order.
#[tokio::test]
async fn each_area_runs_on_its_own() {
    use async_query::testing::*;
    let dao = MemoryDao::new();
    dao_watch(&dao).await;
    dao_delete(&dao).await;
    dao_list(&dao).await;
    dao_history(&dao).await;
    dao_leases(&dao).await;
    dao_claims(&dao).await;
    dao_batches(&dao).await;
    dao_compare_and_set(&dao).await;
    dao_create_and_get(&dao).await;
    dao_expire_results(&dao).await;
    dao_delete_expired(&dao).await;
    dao_clock(&dao).await;
    let storage = MemoryStorage::new();
    storage_stale_partials(&storage).await;
    storage_names(&storage).await;
    storage_delete(&storage).await;
    storage_ranges(&storage).await;
    storage_publish(&storage).await;
    assert!(
        storage.names().is_empty(),
        "objects left: {:?}",
        storage.names()
    );
}

/// A DAO that breaks one rule (it extends leases it does not hold) fails
/// the area that holds the rule, and only that one.
#[tokio::test]
async fn a_broken_rule_fails_its_own_area() {
    use async_query::testing::*;
    use futures::FutureExt;

    // It extends leases it does not hold, and keeps every optional
    // method's default.
    let dao = common::RequiredOnly {
        inner: MemoryDao::new(),
        renews_every_lease: true,
    };
    let leases = std::panic::AssertUnwindSafe(dao_leases(&dao))
        .catch_unwind()
        .await;
    let message = leases.expect_err("dao_leases must catch the broken rule");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| message.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains("another instance must not extend a lease it does not hold"),
        "{message}"
    );
    // It keeps the default `expire_results`, which expires nothing: that
    // area fails with the reason.
    let expiry = std::panic::AssertUnwindSafe(dao_expire_results(&dao))
        .catch_unwind()
        .await;
    let message = expiry.expect_err("dao_expire_results must fail the default");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("expire_results failed") && message.contains("cannot expire results"),
        "{message}"
    );
    // The other areas do not depend on those rules.
    dao_create_and_get(&dao).await;
    dao_compare_and_set(&dao).await;
    dao_batches(&dao).await;
    dao_delete(&dao).await;
    dao_watch(&dao).await;
}
