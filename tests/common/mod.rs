//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQueryService, Config, MemoryDao, Principal};

pub fn alice() -> Principal {
    Principal::new("alice")
}

pub fn bob() -> Principal {
    Principal::new("bob")
}

pub fn admin() -> Principal {
    Principal::new("root").with_role("admin")
}

pub struct Harness {
    pub service: AsyncQueryService,
    pub executor: Arc<ScriptedExecutor>,
    pub dao: Arc<MemoryDao>,
}

pub fn config() -> Config {
    Config {
        pool_size: 2,
        max_queued: 10,
        ..Config::default()
    }
}

pub fn harness(config: Config) -> Harness {
    let executor = Arc::new(ScriptedExecutor::new());
    let dao = Arc::new(MemoryDao::new());
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(dao.clone())
        .executor(executor.clone())
        .build()
        .expect("service builds");
    Harness {
        service,
        executor,
        dao,
    }
}

pub const SECOND: Duration = Duration::from_secs(1);
