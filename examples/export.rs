//! Exports a generated table (10 columns) to CSV (or `format=<name>`: JSON,
//! NDJSON, XLSX with feature `xlsx`) in a directory and prints
//! where it is, how big, how fast, and the process's peak memory.
//!
//! ```text
//! cargo run --release --example export              # 1,000,000 rows
//! cargo run --release --example export -- 10000000  # any row count
//! cargo run --release --example export --features xlsx -- 1000000 format=xlsx
//! # to an S3-compatible server (bucket must exist) or to Redis:
//! cargo run --release --example export --features s3 -- 1000000 s3=http://127.0.0.1:9000/exports
//! cargo run --release --example export --features redis -- 1000000 redis=redis://127.0.0.1:6379
//! ```
//!
//! Memory stays flat whatever the row count: rows are encoded one at a time
//! and streamed to the file in 64 KiB chunks (see docs/BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, ExportFormat,
    FileSystemStorage, Principal, QueryExecutor, QueryOutput, QueryStatus, ResultStorageEngine,
    SubmitRequest,
};

#[path = "support/table.rs"]
mod table;

/// Streams `job.query` rows of the demo table.
struct DemoTable;

#[async_trait::async_trait]
impl QueryExecutor for DemoTable {
    fn validate(&self, request: &SubmitRequest) -> Result<(), String> {
        request
            .query
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| "the query is the number of rows to export".to_string())
    }

    async fn execute(
        &self,
        job: &AsyncQuery,
        _ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let rows: u64 = job.query.parse()?;
        let records = futures::stream::iter((0..rows).map(|i| Ok(table::row(i))));
        Ok(QueryOutput::records(table::columns(), records).with_column_types(table::types()))
    }
}

/// The result storage named by the second argument, and where it puts
/// objects (for the message).
async fn storage(
    arg: Option<&str>,
) -> Result<(Arc<dyn ResultStorageEngine>, String), Box<dyn std::error::Error>> {
    match arg.map(|a| a.split_once('=').unwrap_or((a, ""))) {
        None | Some(("fs", "")) => {
            let dir = std::env::temp_dir().join("async-query-export-example");
            let storage = FileSystemStorage::new(&dir).await?;
            Ok((Arc::new(storage), format!("{}/", dir.display())))
        }
        #[cfg(feature = "s3")]
        Some(("s3", url)) => {
            let (endpoint, bucket) = url
                .rsplit_once('/')
                .ok_or("s3=<endpoint>/<bucket>, e.g. s3=http://127.0.0.1:9000/exports")?;
            // Credentials and region from the AWS_* variables; without
            // them, the dummy ones a local test server (moto) accepts.
            let mut builder = async_query::object_store::aws::AmazonS3Builder::from_env()
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_bucket_name(bucket);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                builder = builder
                    .with_region("us-east-1")
                    .with_access_key_id("test")
                    .with_secret_access_key("test");
            }
            let store = builder.build()?;
            let storage = async_query::ObjectStoreStorage::new(Arc::new(store));
            Ok((Arc::new(storage), format!("{url}/")))
        }
        #[cfg(feature = "redis")]
        Some(("redis", url)) => {
            let storage = async_query::RedisStorage::connect(url).await?;
            Ok((Arc::new(storage), format!("Redis at {url}, object ")))
        }
        Some((kind, _)) => Err(format!(
            "unknown storage {kind:?}: fs, s3=<endpoint>/<bucket> (feature s3) or \
             redis=<url> (feature redis)"
        )
        .into()),
    }
}

/// Peak resident memory of this process (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: u64 = match args.first() {
        Some(arg) => arg.parse().map_err(|_| format!("not a row count: {arg}"))?,
        None => 1_000_000,
    };
    let format = match args.iter().find_map(|a| a.strip_prefix("format=")) {
        Some(name) => ExportFormat::new(name)?,
        None => ExportFormat::CSV,
    };
    let place_arg = args.iter().skip(1).find(|a| !a.starts_with("format="));
    let (storage, place) = storage(place_arg.map(String::as_str)).await?;
    let service = AsyncQueryService::builder()
        .config(Config {
            append_file_extension: true,
            max_async_after: Duration::from_secs(3600),
            ..Config::default()
        })
        .storage(Arc::clone(&storage))
        .executor(Arc::new(DemoTable))
        .build()?;

    let start = Instant::now();
    let request =
        SubmitRequest::export(rows.to_string(), format).with_async_after(Duration::from_secs(3600));
    let job = service.submit(&Principal::new("analyst"), request).await?;
    let elapsed = start.elapsed();
    let result = job.result.as_ref().ok_or("the export has no result")?;
    if job.status != QueryStatus::Complete {
        return Err(format!("export ended {}: {:?}", job.status, result.message).into());
    }
    let name = match &result.body {
        async_query::ResultBody::Stored(name) => name.clone(),
        other => return Err(format!("unexpected result body {other:?}").into()),
    };
    let bytes = result.content_length.unwrap_or(0);
    println!(
        "exported {} rows to {place}{name}",
        result.record_count.unwrap_or(0),
    );
    println!(
        "size {bytes} bytes ({:.1} MiB) in {:.2?}: {:.0} rows/s",
        bytes as f64 / (1024.0 * 1024.0),
        elapsed,
        rows as f64 / elapsed.as_secs_f64()
    );
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    storage.delete(&name).await?;
    Ok(())
}
