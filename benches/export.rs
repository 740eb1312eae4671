//! Export throughput: N rows × 10 columns to CSV in the filesystem storage,
//! against a baseline in the same run that writes the same rows with a bare
//! `csv::Writer` into a `BufWriter<File>`.
//!
//! `cargo bench --bench export`
//!
//! Peak memory is measured with the `export` example instead (see
//! docs/BENCHMARKS.md): `/usr/bin/time -v target/release/examples/export N`.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::Duration;

use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, ExecutionContext, ExportFormat, FileSystemStorage,
    Principal, QueryExecutor, QueryOutput, QueryStatus, SubmitRequest,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

#[path = "../examples/support/table.rs"]
mod table;

const ROWS: u64 = 200_000;

struct DemoTable;

#[async_trait::async_trait]
impl QueryExecutor for DemoTable {
    async fn execute(
        &self,
        job: &AsyncQuery,
        _: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let rows: u64 = job.query.parse()?;
        let records = futures::stream::iter((0..rows).map(|i| Ok(table::row(i))));
        Ok(QueryOutput::records(table::columns(), records))
    }
}

/// The baseline: the same rows, the same field rendering, a bare writer.
fn bare_csv(path: &std::path::Path, rows: u64) {
    let file = std::fs::File::create(path).expect("create");
    let mut writer = csv::Writer::from_writer(BufWriter::new(file));
    writer.write_record(table::columns()).expect("header");
    let mut text = Vec::new();
    for i in 0..rows {
        for value in table::row(i) {
            match value {
                Value::Null => writer.write_field([]),
                Value::String(s) => writer.write_field(s),
                other => {
                    text.clear();
                    serde_json::to_writer(&mut text, &other).expect("render");
                    writer.write_field(&text)
                }
            }
            .expect("field");
        }
        writer.write_record(None::<&[u8]>).expect("row");
    }
    let mut inner = writer.into_inner().expect("flush");
    inner.flush().expect("flush");
    inner.get_ref().sync_all().expect("sync");
}

fn export(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = rt
        .block_on(FileSystemStorage::new(dir.path().join("results")))
        .expect("storage");
    let service = rt.block_on(async {
        AsyncQueryService::builder()
            .storage(Arc::new(storage.clone()))
            .executor(Arc::new(DemoTable))
            .build()
            .expect("service")
    });
    let analyst = Principal::new("analyst");

    let mut group = c.benchmark_group("export 200k rows x 10 columns, CSV");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS));
    let baseline_path = dir.path().join("baseline.csv");
    group.bench_function("baseline: csv::Writer + BufWriter<File>", |b| {
        b.iter(|| bare_csv(&baseline_path, ROWS))
    });
    group.bench_function("service: TableExport to FileSystemStorage", |b| {
        b.to_async(&rt).iter(|| async {
            let request = SubmitRequest::export(ROWS.to_string(), ExportFormat::CSV)
                .with_async_after(Duration::from_secs(10));
            let job = service.submit(&analyst, request).await.expect("submit");
            assert_eq!(job.status, QueryStatus::Complete);
            // Keep the directory small: results are not needed afterwards.
            if let Some(async_query::ResultBody::Stored(name)) = job.result.map(|r| r.body) {
                async_query::ResultStorageEngine::delete(&storage, &name)
                    .await
                    .expect("delete");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
