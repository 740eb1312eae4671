//! The SQL Lab server, shared by `examples/sql_lab.rs` and
//! `tests/two_instances.rs`: settings from `SQL_LAB_*` variables, a service
//! over the job store and result storage they name, and the HTTP routes.
//!
//! One instance runs on embedded SQLite and a local directory. Several
//! instances behind a load balancer share a PostgreSQL job store and an S3
//! bucket (or Redis) for results: each serves the whole API for every job,
//! whichever instance runs it.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_query::http::{
    self, AuthError, DownloadLinks, HeaderPrincipal, HttpOptions, PrincipalResolver,
};
use async_query::{AsyncApiDao, AsyncQueryService, Config, Principal, ResultStorageEngine};
use axum::http::request::Parts;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::lab;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long a signed download link is valid.
const LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What one SQL Lab instance serves, and on what.
pub struct LabSettings {
    /// Where to listen (`SQL_LAB_ADDR`, default `127.0.0.1:8080`; port 0
    /// picks a free one).
    pub addr: String,
    /// The demo SQLite database the queries read (`SQL_LAB_DEMO`, default
    /// `target/sql_lab/demo.db`); built if it is missing or has another
    /// size.
    pub demo: PathBuf,
    /// Rows of its `orders` table (`SQL_LAB_ROWS`, default 1,000,000).
    pub rows: u64,
    /// The job store (`SQL_LAB_JOBS`): a `sqlite://` URL (default
    /// `target/sql_lab/jobs.db`, one instance) or a `postgres://` URL
    /// (feature `postgres`, any number of instances).
    pub jobs: String,
    /// Where exports go (`SQL_LAB_RESULTS`): a directory (default
    /// `target/sql_lab/exports`), `s3://bucket[/prefix]` (feature `s3`;
    /// credentials, region and endpoint from the usual `AWS_*` variables)
    /// or a `redis://` URL (feature `redis`).
    pub results: String,
    /// Signs download links with this key (`SQL_LAB_LINK_KEY`, at least 32
    /// bytes, the same on every instance): finished exports' `url` is then
    /// a link valid for 15 minutes (presigned by S3 when results are
    /// there).
    pub link_key: Option<String>,
    /// The service's settings. `instance_id` comes from `SQL_LAB_INSTANCE`
    /// (a UUID; keep it across restarts so that a restarted instance ends
    /// its interrupted jobs at once), otherwise it is random.
    pub config: Config,
}

impl LabSettings {
    /// The settings from `SQL_LAB_*` variables, with defaults for one
    /// instance under `target/sql_lab/`.
    pub fn from_env() -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sql_lab");
        let rows = match var("SQL_LAB_ROWS") {
            Some(rows) => rows
                .parse()
                .map_err(|e| format!("SQL_LAB_ROWS={rows} is not a row count: {e}"))?,
            None => 1_000_000,
        };
        let instance_id = match var("SQL_LAB_INSTANCE") {
            Some(id) => id
                .parse()
                .map_err(|e| format!("SQL_LAB_INSTANCE={id} is not a UUID: {e}"))?,
            None => uuid::Uuid::new_v4(),
        };
        Ok(LabSettings {
            addr: var("SQL_LAB_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into()),
            demo: var("SQL_LAB_DEMO").map_or_else(|| dir.join("demo.db"), PathBuf::from),
            rows,
            jobs: var("SQL_LAB_JOBS")
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("jobs.db").display())),
            results: var("SQL_LAB_RESULTS")
                .unwrap_or_else(|| dir.join("exports").display().to_string()),
            link_key: var("SQL_LAB_LINK_KEY"),
            config: Config {
                max_async_after: Duration::from_secs(10),
                append_file_extension: true,
                instance_id,
                ..Config::default()
            },
        })
    }
}

/// A started SQL Lab instance: bound, not serving yet.
pub struct Lab {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its service.
    pub service: AsyncQueryService,
    /// Where its jobs and results are, for the start-up message.
    pub describe: String,
    listener: tokio::net::TcpListener,
    app: axum::Router,
}

impl Lab {
    /// Builds the demo database if needed, opens the job store and result
    /// storage, starts the service and binds the address.
    pub async fn start(settings: LabSettings) -> Result<Lab, BoxError> {
        if let Some(dir) = settings.demo.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (demo, rows) = (settings.demo.clone(), settings.rows);
        let started = std::time::Instant::now();
        if tokio::task::spawn_blocking(move || lab::ensure_demo_database(&demo, rows)).await?? {
            println!(
                "demo database {} ({rows} orders) built in {:.1?}",
                settings.demo.display(),
                started.elapsed()
            );
        }
        let dao = open_jobs(&settings.jobs).await?;
        let storage = open_results(&settings.results).await?;
        let executor =
            lab::SqlExecutor::new(&settings.demo, settings.config.max_inline_result_bytes);
        let service = AsyncQueryService::builder()
            .config(settings.config)
            .dao(dao)
            .storage(storage)
            .executor(Arc::new(executor))
            .build()?;
        let mut options = HttpOptions::default();
        if let Some(key) = &settings.link_key {
            options = options.with_download_links(DownloadLinks::new(key, LINK_LIFETIME)?);
        }
        let metrics = prometheus();
        let app = http::router_with_options(service.clone(), LabPrincipal, options)
            .route("/login", axum::routing::get(login))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = metrics.as_ref().map_or_else(
                        |e| format!("# metrics are off: {e}\n"),
                        |handle| {
                            // Drains histogram buckets; a scrape is often enough.
                            handle.run_upkeep();
                            handle.render()
                        },
                    );
                    std::future::ready(text)
                }),
            );
        let listener = tokio::net::TcpListener::bind(&settings.addr)
            .await
            .map_err(|e| format!("listening on {}: {e}", settings.addr))?;
        Ok(Lab {
            addr: listener.local_addr()?,
            service,
            describe: format!(
                "jobs in {}, results in {}",
                redact(&settings.jobs),
                redact(&settings.results)
            ),
            listener,
            app,
        })
    }

    /// Serves until `stop` resolves, then stops the service: jobs still
    /// running after 5 s end `TIMEDOUT`.
    pub async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), BoxError> {
        // The service shuts down first, while the server still answers:
        // that ends the open event streams, which the server's graceful
        // shutdown would otherwise wait for.
        let service = self.service.clone();
        let (report_tx, report_rx) = tokio::sync::oneshot::channel();
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(async move {
                stop.await;
                let _ = report_tx.send(service.shutdown(Duration::from_secs(5)).await);
            })
            .await?;
        let report = report_rx
            .await
            .map_err(|_| "the server stopped before its shutdown signal")??;
        println!(
            "stopped; {} running job(s) ended TIMEDOUT",
            report.stopped.len()
        );
        Ok(())
    }
}

/// This process's Prometheus recorder, installed by the first lab to
/// start; its text is served at `/metrics`.
fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            if !cfg!(feature = "metrics") {
                return Err("run the SQL Lab with --features metrics".into());
            }
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("installing the Prometheus recorder: {e}"))?;
            #[cfg(feature = "metrics")]
            async_query::metrics::describe();
            Ok(handle)
        })
        .clone()
}

/// `url` without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn open_jobs(url: &str) -> Result<Arc<dyn AsyncApiDao>, BoxError> {
    if url.starts_with("sqlite:") {
        let dao = async_query::dao::SqliteDao::connect(url).await?;
        dao.migrate().await?;
        return Ok(Arc::new(dao));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let dao = async_query::dao::PostgresDao::connect(url).await?;
            dao.migrate().await?;
            return Ok(Arc::new(dao));
        }
        #[cfg(not(feature = "postgres"))]
        return Err("SQL_LAB_JOBS is a PostgreSQL URL: run with --features postgres".into());
    }
    Err(format!("SQL_LAB_JOBS={url}: expected a sqlite:// or postgres:// URL").into())
}

async fn open_results(place: &str) -> Result<Arc<dyn ResultStorageEngine>, BoxError> {
    if let Some(bucket) = place.strip_prefix("s3://") {
        #[cfg(feature = "s3")]
        {
            use async_query::object_store::aws::AmazonS3Builder;
            use async_query::storage::ObjectStoreStorage;
            let (bucket, prefix) = bucket.split_once('/').unwrap_or((bucket, ""));
            let s3 = Arc::new(
                AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| format!("SQL_LAB_RESULTS={place}: {e}"))?,
            );
            let storage = ObjectStoreStorage::new(s3.clone())
                .with_prefix(prefix)
                .with_signer(s3);
            return Ok(Arc::new(storage));
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = bucket;
            return Err("SQL_LAB_RESULTS is an s3:// URL: run with --features s3".into());
        }
    }
    if place.starts_with("redis://") || place.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        return Ok(Arc::new(
            async_query::storage::RedisStorage::connect(place).await?,
        ));
        #[cfg(not(feature = "redis"))]
        return Err("SQL_LAB_RESULTS is a Redis URL: run with --features redis".into());
    }
    Ok(Arc::new(async_query::FileSystemStorage::new(place).await?))
}

/// Who a request is: `X-User` / `X-Roles` headers (curl, tests), or for a
/// browser the `sql_lab_user` / `sql_lab_roles` cookies `/login` sets. A
/// demo convenience, not authentication: the dashboard's requests pass
/// through this resolver exactly as the API's do.
#[derive(Debug, Clone, Copy)]
pub struct LabPrincipal;

#[async_trait::async_trait]
impl PrincipalResolver for LabPrincipal {
    async fn resolve(&self, request: &Parts) -> Result<Principal, AuthError> {
        if request.headers.contains_key(HeaderPrincipal::USER) {
            return HeaderPrincipal.resolve(request).await;
        }
        let cookie = |name: &str| {
            request
                .headers
                .get_all(axum::http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_owned())
        };
        let Some(name) = cookie("sql_lab_user").filter(|n| demo_name(n)) else {
            return Err(AuthError::unauthorized(
                "send X-User (and X-Roles), or open /login?user=NAME in a browser",
            ));
        };
        let mut principal = Principal::new(name);
        for role in cookie("sql_lab_roles").unwrap_or_default().split(',') {
            if demo_name(role) {
                principal = principal.with_role(role);
            }
        }
        Ok(principal)
    }
}

/// A name the demo login takes: 1-64 letters, digits, `-`, `_` or `.`.
fn demo_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `GET /login?user=NAME[&roles=admin]`: the demo's sign-in for a browser;
/// sets the cookies `LabPrincipal` reads and opens the dashboard.
async fn login(uri: axum::http::Uri) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let parameter = |name: &str| {
        uri.query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(|value| value.replace("%2C", ",").replace("%2c", ","))
            .unwrap_or_default()
    };
    let (user, roles) = (parameter("user"), parameter("roles"));
    let (user, roles) = (user.as_str(), roles.as_str());
    if !demo_name(user) || !roles.split(',').all(|r| r.is_empty() || demo_name(r)) {
        return (
            StatusCode::BAD_REQUEST,
            "open /login?user=NAME (and &roles=admin for the admin view); names are 1-64 \
             letters, digits, '-', '_' or '.'\n",
        )
            .into_response();
    }
    let cookie =
        |name: &str, value: &str| format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    for value in [cookie("sql_lab_user", user), cookie("sql_lab_roles", roles)] {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}
