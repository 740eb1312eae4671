//! Export throughput: N rows × 10 columns to CSV (and XLSX, with feature
//! `xlsx`) in the filesystem storage, against a baseline in the same run
//! that writes the same rows with the same library's bare writer: a
//! `csv::Writer` into a `BufWriter<File>`; `rust_xlsxwriter` in constant
//! memory mode saving to a file.
//!
//! For ARROW_STREAM and PARQUET (feature `arrow`) the baseline builds the
//! same typed record batches of 8,192 rows with Arrow's builders and
//! writes them with `arrow_ipc`'s `StreamWriter` / `parquet`'s
//! `ArrowWriter` (Snappy, the same row groups) into a `BufWriter<File>`.
//!
//! `cargo bench --bench export --features xlsx,arrow`
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
        Ok(QueryOutput::records(table::columns(), records).with_column_types(table::types()))
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

/// The XLSX baseline: the same rows and cell types (numbers, text,
/// booleans, dates), a bare constant-memory workbook saved to a file.
#[cfg(feature = "xlsx")]
fn bare_xlsx(path: &std::path::Path, rows: u64) {
    use rust_xlsxwriter::{Format, Workbook};
    let mut workbook = Workbook::new();
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let sheet = workbook.add_worksheet_with_constant_memory();
    for (col, name) in table::columns().iter().enumerate() {
        sheet
            .write_string_with_format(0, col as u16, name, &bold)
            .expect("header");
    }
    for i in 0..rows {
        let row = u32::try_from(i + 1).expect("row");
        for (col, value) in table::row(i).into_iter().enumerate() {
            let col = col as u16;
            match value {
                Value::Null => continue,
                Value::Bool(b) => sheet.write_boolean(row, col, b),
                Value::Number(n) => sheet.write_number(row, col, n.as_f64().expect("number")),
                Value::String(s) if col == 8 => {
                    let day = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").expect("date");
                    let serial = day
                        .and_hms_opt(0, 0, 0)
                        .expect("midnight")
                        .and_utc()
                        .timestamp() as f64
                        / 86_400.0
                        + 25_569.0;
                    sheet.write_number_with_format(row, col, serial, &date)
                }
                Value::String(s) => sheet.write_string(row, col, s),
                other => sheet.write_string(row, col, other.to_string()),
            }
            .expect("cell");
        }
    }
    let file = std::fs::File::create(path).expect("create");
    let mut out = BufWriter::new(file);
    workbook.save_to_writer(&mut out).expect("save");
    out.flush().expect("flush");
    out.get_ref().sync_all().expect("sync");
}

/// The Arrow baseline's batches: the demo table's rows, 8,192 at a time,
/// typed as `table::types()` says.
#[cfg(feature = "arrow")]
fn bare_batches(rows: u64, mut write: impl FnMut(&arrow_array::RecordBatch)) {
    use arrow_array::builder::{
        BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    };
    use arrow_array::{ArrayRef, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use async_query::ColumnType;
    let types = table::types();
    let fields: Vec<Field> = table::columns()
        .iter()
        .zip(&types)
        .map(|(name, t)| {
            let dt = match t {
                ColumnType::Integer => DataType::Int64,
                ColumnType::Float => DataType::Float64,
                ColumnType::Boolean => DataType::Boolean,
                ColumnType::Date => DataType::Date32,
                _ => DataType::Utf8,
            };
            Field::new(name, dt, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    // Row by row into one builder per column, as a host would.
    enum B {
        I(Int64Builder),
        F(Float64Builder),
        Bo(BooleanBuilder),
        D(Date32Builder),
        S(StringBuilder),
    }
    let mut builders: Vec<B> = types
        .iter()
        .map(|t| match t {
            ColumnType::Integer => B::I(Int64Builder::with_capacity(8_192)),
            ColumnType::Float => B::F(Float64Builder::with_capacity(8_192)),
            ColumnType::Boolean => B::Bo(BooleanBuilder::with_capacity(8_192)),
            ColumnType::Date => B::D(Date32Builder::with_capacity(8_192)),
            _ => B::S(StringBuilder::with_capacity(8_192, 8_192 * 16)),
        })
        .collect();
    let mut in_batch = 0;
    for i in 0..rows {
        for (b, v) in builders.iter_mut().zip(table::row(i)) {
            match b {
                B::I(b) => b.append_option(v.as_i64()),
                B::F(b) => b.append_option(v.as_f64()),
                B::Bo(b) => b.append_option(v.as_bool()),
                B::D(b) => b.append_option(v.as_str().map(|s| {
                    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
                    (day - epoch).num_days() as i32
                })),
                B::S(b) => b.append_option(v.as_str()),
            }
        }
        in_batch += 1;
        if in_batch == 8_192 || i + 1 == rows {
            let columns: Vec<ArrayRef> = builders
                .iter_mut()
                .map(|b| -> ArrayRef {
                    match b {
                        B::I(b) => Arc::new(b.finish()),
                        B::F(b) => Arc::new(b.finish()),
                        B::Bo(b) => Arc::new(b.finish()),
                        B::D(b) => Arc::new(b.finish()),
                        B::S(b) => Arc::new(b.finish()),
                    }
                })
                .collect();
            write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch"));
            in_batch = 0;
        }
    }
}

/// The ARROW_STREAM baseline: `StreamWriter` into a file.
#[cfg(feature = "arrow")]
fn bare_arrow(path: &std::path::Path, rows: u64) {
    let mut writer = None;
    bare_batches(rows, |batch| {
        let w = writer.get_or_insert_with(|| {
            let file = BufWriter::new(std::fs::File::create(path).expect("create"));
            arrow_ipc::writer::StreamWriter::try_new(file, &batch.schema()).expect("writer")
        });
        w.write(batch).expect("write");
    });
    let mut w = writer.expect("a batch");
    w.finish().expect("finish");
    w.get_mut().flush().expect("flush");
    w.get_ref().get_ref().sync_all().expect("sync");
}

/// The PARQUET baseline: `ArrowWriter` (Snappy, 65,536-row groups) into a
/// file.
#[cfg(feature = "arrow")]
fn bare_parquet(path: &std::path::Path, rows: u64) {
    use parquet::file::properties::WriterProperties;
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_size(65_536)
        .build();
    let mut writer = None;
    bare_batches(rows, |batch| {
        let w = writer.get_or_insert_with(|| {
            let file = BufWriter::new(std::fs::File::create(path).expect("create"));
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props.clone()))
                .expect("writer")
        });
        w.write(batch).expect("write");
    });
    let mut w = writer.expect("a batch");
    w.finish().expect("close");
    let out = w.inner_mut();
    out.flush().expect("flush");
    out.get_ref().sync_all().expect("sync");
}

/// Submits an export of `ROWS` rows in `format` and deletes the file.
async fn service_export(
    service: &AsyncQueryService,
    storage: &FileSystemStorage,
    analyst: &Principal,
    format: ExportFormat,
) {
    let request =
        SubmitRequest::export(ROWS.to_string(), format).with_async_after(Duration::from_secs(60));
    let job = service.submit(analyst, request).await.expect("submit");
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    // Keep the directory small: results are not needed afterwards.
    if let Some(async_query::ResultBody::Stored(name)) = job.result.map(|r| r.body) {
        async_query::ResultStorageEngine::delete(storage, &name)
            .await
            .expect("delete");
    }
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
        b.to_async(&rt)
            .iter(|| service_export(&service, &storage, &analyst, ExportFormat::CSV))
    });
    group.finish();

    #[cfg(feature = "xlsx")]
    {
        let mut group = c.benchmark_group("export 200k rows x 10 columns, XLSX");
        group.sample_size(10);
        group.throughput(Throughput::Elements(ROWS));
        let baseline_path = dir.path().join("baseline.xlsx");
        group.bench_function(
            "baseline: rust_xlsxwriter constant memory + BufWriter<File>",
            |b| b.iter(|| bare_xlsx(&baseline_path, ROWS)),
        );
        group.bench_function("service: TableExport to FileSystemStorage", |b| {
            b.to_async(&rt)
                .iter(|| service_export(&service, &storage, &analyst, ExportFormat::XLSX))
        });
        group.finish();
    }

    #[cfg(feature = "arrow")]
    {
        type Bare = fn(&std::path::Path, u64);
        let cases: [(&str, ExportFormat, &str, Bare); 2] = [
            (
                "ARROW_STREAM",
                ExportFormat::ARROW_STREAM,
                "arrow_ipc StreamWriter",
                bare_arrow,
            ),
            (
                "PARQUET",
                ExportFormat::PARQUET,
                "parquet ArrowWriter (Snappy)",
                bare_parquet,
            ),
        ];
        for (name, format, bare_name, bare) in cases {
            let mut group = c.benchmark_group(format!("export 200k rows x 10 columns, {name}"));
            group.sample_size(10);
            group.throughput(Throughput::Elements(ROWS));
            let baseline_path = dir.path().join(format!("baseline.{name}"));
            group.bench_function(format!("baseline: {bare_name} + BufWriter<File>"), |b| {
                b.iter(|| bare(&baseline_path, ROWS))
            });
            group.bench_function("service: TableExport to FileSystemStorage", |b| {
                b.to_async(&rt)
                    .iter(|| service_export(&service, &storage, &analyst, format.clone()))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, export);
criterion_main!(benches);
