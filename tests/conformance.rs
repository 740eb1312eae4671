//! The built-in back-ends pass the conformance suites they ship.

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
