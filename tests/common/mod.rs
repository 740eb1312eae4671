//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQuery, AsyncQueryService, Config, MemoryDao, Principal, SubmitRequest};

pub fn alice() -> Principal {
    Principal::new("alice")
}

pub fn bob() -> Principal {
    Principal::new("bob")
}

pub fn admin() -> Principal {
    Principal::new("root").with_role("admin")
}

/// `alice` submits `request`; any error fails the test.
pub async fn submit(service: &AsyncQueryService, request: SubmitRequest) -> AsyncQuery {
    service.submit(&alice(), request).await.expect("submit")
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

/// A migrated SQLite job store in memory.
#[cfg(feature = "sqlite")]
pub async fn sqlite_in_memory() -> async_query::dao::SqliteDao {
    let dao = async_query::dao::SqliteDao::connect("sqlite::memory:")
        .await
        .expect("open an in-memory SQLite database");
    dao.migrate().await.expect("migrate");
    dao
}

/// A service with `config` and the scripted executor that keeps its
/// exports in `storage`.
pub fn storage_service(
    config: Config,
    storage: Arc<dyn async_query::ResultStorageEngine>,
) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(config)
        .storage(storage)
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .expect("service builds")
}

/// Every byte of `stream`.
pub async fn read_stream(stream: async_query::storage::ResultStream) -> Vec<u8> {
    use futures::TryStreamExt;
    let chunks: Vec<bytes::Bytes> = stream.body.try_collect().await.expect("read");
    chunks.concat()
}

/// Every byte of `download`.
pub async fn read_download(download: async_query::Download) -> Vec<u8> {
    read_stream(download.stream).await
}

/// `alice` exports `query` as CSV and waits up to a minute for the end.
pub async fn export_csv(service: &AsyncQueryService, query: &str) -> AsyncQuery {
    let request = SubmitRequest::export(query, async_query::ExportFormat::CSV);
    let job = service.submit(&alice(), request).await.expect("submit");
    service
        .wait(&alice(), job.id, 60 * SECOND)
        .await
        .expect("wait")
}

/// The records of a CSV export (after its header).
pub fn csv_rows(bytes: &[u8]) -> Vec<csv::StringRecord> {
    csv::Reader::from_reader(bytes)
        .records()
        .map(|r| r.expect("a CSV record"))
        .collect()
}

/// A writer for `name` that has written `body` in pieces of `piece` bytes,
/// not published yet.
pub async fn write_object(
    storage: &dyn async_query::ResultStorageEngine,
    name: &str,
    body: &[u8],
    piece: usize,
) -> Box<dyn async_query::storage::ResultWriter> {
    let mut writer = storage.create(name).await.expect("create");
    for piece in body.chunks(piece) {
        writer
            .write(bytes::Bytes::copy_from_slice(piece))
            .await
            .expect("write");
    }
    writer
}

#[cfg(feature = "s3")]
pub mod moto;
pub mod venv;

/// A fresh PostgreSQL database for one test, from
/// `ASYNC_QUERY_TEST_POSTGRES_URL`; `None` (and a loud message) without it.
#[cfg(feature = "postgres")]
pub mod pg {
    use std::str::FromStr;

    use async_query::dao::PostgresDao;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{ConnectOptions, Executor};

    pub struct TestDb {
        admin: PgConnectOptions,
        pub name: String,
        pub url: String,
        pub dao: PostgresDao,
    }

    pub async fn fresh() -> Option<TestDb> {
        let Ok(url) = std::env::var("ASYNC_QUERY_TEST_POSTGRES_URL") else {
            eprintln!(
                "\n*** SKIPPED: set ASYNC_QUERY_TEST_POSTGRES_URL to run the PostgreSQL tests ***\n"
            );
            return None;
        };
        let admin = PgConnectOptions::from_str(&url)
            .expect("ASYNC_QUERY_TEST_POSTGRES_URL is not a PostgreSQL URL");
        let name = format!("async_query_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin
            .connect()
            .await
            .expect("cannot connect to ASYNC_QUERY_TEST_POSTGRES_URL");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the test database");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(admin.clone().database(&name))
            .await
            .expect("connect to the test database");
        let dao = PostgresDao::from_pool(pool);
        dao.migrate().await.expect("migrate");
        let db_url = match url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("ASYNC_QUERY_TEST_POSTGRES_URL has no database part: {url}"),
        };
        Some(TestDb {
            admin,
            name,
            url: db_url,
            dao,
        })
    }

    impl TestDb {
        /// Drops the database now (a test that panics drops it in `Drop`).
        pub async fn drop_db(mut self) {
            self.dao.pool().close().await;
            drop_database(&self.admin, &self.name).await;
            self.name.clear();
        }
    }

    async fn drop_database(admin: &PgConnectOptions, name: &str) {
        if let Ok(mut conn) = admin.connect().await {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await;
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if self.name.is_empty() {
                return;
            }
            // Not dropped yet (the test panicked): do it on a thread of its
            // own, since this may run inside the test's runtime.
            let (admin, name) = (self.admin.clone(), std::mem::take(&mut self.name));
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(drop_database(&admin, &name));
                }
            })
            .join();
        }
    }
}

/// `service` behind the HTTP router (principal from `X-User`) on a free
/// port; posts `asyncQuery` submissions to it.
#[cfg(feature = "axum")]
pub struct HttpClient {
    base: String,
    client: reqwest::Client,
}

#[cfg(feature = "axum")]
impl HttpClient {
    pub async fn serve(service: AsyncQueryService) -> Self {
        use async_query::http::{self, HeaderPrincipal};
        let app = http::router(service, HeaderPrincipal);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        HttpClient {
            base,
            client: reqwest::Client::new(),
        }
    }

    /// Alice submits query `q` with `attributes` added, and `headers`.
    pub async fn submit(
        &self,
        attributes: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        parsed(self.submit_response(attributes, headers).await).await
    }

    /// As [`submit`](Self::submit), the response as it came (headers and
    /// all).
    pub async fn submit_response(
        &self,
        attributes: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut all = serde_json::json!({ "query": "q", "queryType": "SQL", "status": "QUEUED" });
        for (name, value) in attributes.as_object().expect("an object") {
            all[name] = value.clone();
        }
        let document = serde_json::json!({ "data": { "type": "asyncQuery", "attributes": all } });
        let mut request = self
            .client
            .post(format!("{}/asyncQuery", self.base))
            .header("X-User", "alice")
            .header("Content-Type", async_query::http::JSON_API)
            .body(document.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("an answer")
    }

    /// `user` gets `path`.
    pub async fn get(&self, path: &str, user: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.get_as(path, user, "").await
    }

    /// `user`, holding `roles` (comma-separated), gets `path`.
    pub async fn get_as(
        &self,
        path: &str,
        user: &str,
        roles: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header("X-User", user);
        if !roles.is_empty() {
            request = request.header("X-Roles", roles);
        }
        parsed(request.send().await.expect("an answer")).await
    }
}

/// A response's status and JSON body.
#[cfg(feature = "axum")]
pub async fn parsed(response: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

/// A job store that implements only what `AsyncApiDao` requires, over a
/// `MemoryDao`: every other method keeps the trait's default, as a host's
/// first DAO would. With `renews_every_lease` it also breaks one rule: it
/// extends leases whoever holds them.
pub struct RequiredOnly {
    pub inner: MemoryDao,
    pub renews_every_lease: bool,
}

#[async_trait::async_trait]
impl async_query::AsyncApiDao for RequiredOnly {
    async fn create(&self, job: &AsyncQuery) -> async_query::Result<()> {
        self.inner.create(job).await
    }
    async fn get(&self, id: uuid::Uuid) -> async_query::Result<Option<AsyncQuery>> {
        self.inner.get(id).await
    }
    async fn update_status(
        &self,
        id: uuid::Uuid,
        change: async_query::dao::StatusChange,
    ) -> async_query::Result<async_query::dao::CasOutcome> {
        self.inner.update_status(id, change).await
    }
    async fn claim(&self, claim: &async_query::dao::Claim) -> async_query::Result<Vec<AsyncQuery>> {
        self.inner.claim(claim).await
    }
    async fn renew_leases(
        &self,
        owner: uuid::Uuid,
        ids: &[uuid::Uuid],
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> async_query::Result<Vec<(uuid::Uuid, async_query::QueryStatus)>> {
        if !self.renews_every_lease {
            return self.inner.renew_leases(owner, ids, expires_at).await;
        }
        // The broken rule: renews whoever holds the lease.
        let mut statuses = Vec::new();
        for id in ids {
            let Some(job) = self.inner.get(*id).await? else {
                continue;
            };
            if let Some(lease) = &job.lease {
                self.inner
                    .renew_leases(lease.owner, &[*id], expires_at)
                    .await?;
            }
            statuses.push((*id, job.status));
        }
        Ok(statuses)
    }
    async fn list(
        &self,
        filter: &async_query::dao::ListFilter,
    ) -> async_query::Result<Vec<AsyncQuery>> {
        self.inner.list(filter).await
    }
    async fn delete(&self, ids: &[uuid::Uuid]) -> async_query::Result<u64> {
        self.inner.delete(ids).await
    }
}
