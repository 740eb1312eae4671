//! Export formats a host adds, the registry's refusals, and the CSV
//! formula guard, through the service and over HTTP.

mod common;

use std::sync::Arc;

use async_query::format::{ExportEncoding, ExportSpec, RecordEncoder, Tail};
use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, ColumnType, Config, Error, ExecutionContext,
    ExportFormat, MemoryDao, MemoryStorage, QueryExecutor, QueryOutput, QueryStatus, Record,
    SubmitRequest,
};
use bytes::Bytes;
use common::{alice, read_download};
use serde_json::{Value, json};

/// "Lines": each record's values joined by ` | `, one line per record.
#[derive(Debug)]
struct Lines;

struct LinesEncoder {
    pending: String,
    records: u64,
    emitted: u64,
}

impl ExportEncoding for Lines {
    fn format(&self) -> ExportFormat {
        ExportFormat::new("LINES").expect("name")
    }
    fn content_type(&self) -> &str {
        "text/x-lines; charset=utf-8"
    }
    fn extension(&self) -> &str {
        "lines"
    }
    fn encoder(&self, spec: ExportSpec) -> async_query::Result<Box<dyn RecordEncoder>> {
        Ok(Box::new(LinesEncoder {
            pending: spec.columns.join(" | ") + "\n",
            records: 0,
            emitted: 0,
        }))
    }
}

impl RecordEncoder for LinesEncoder {
    fn push(&mut self, record: &Record) -> async_query::Result<Option<Bytes>> {
        let cells: Vec<String> = record
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        self.pending.push_str(&cells.join(" | "));
        self.pending.push('\n');
        self.records += 1;
        if self.pending.len() < 64 {
            return Ok(None);
        }
        let chunk = std::mem::take(&mut self.pending);
        self.emitted += chunk.len() as u64;
        Ok(Some(Bytes::from(chunk)))
    }
    fn finish(self: Box<Self>) -> async_query::Result<Tail> {
        // As a reader, as a format written at the end would hand it over.
        Ok(Tail::reader(std::io::Cursor::new(
            self.pending.into_bytes(),
        )))
    }
    fn records(&self) -> u64 {
        self.records
    }
    fn len(&self) -> u64 {
        self.emitted + self.pending.len() as u64
    }
}

/// Exports the same rows for any query: a formula, a negative number, a
/// plain text and a null.
#[derive(Debug)]
struct Rows;

fn rows() -> Vec<Record> {
    vec![
        vec![json!("=HYPERLINK(\"http://evil\")"), json!(-5)],
        vec![json!("@SUM(A1)"), json!("plain")],
        vec![json!("ü ✓"), Value::Null],
    ]
}

#[async_trait::async_trait]
impl QueryExecutor for Rows {
    async fn execute(
        &self,
        _job: &AsyncQuery,
        _ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let rows = rows().into_iter().map(Ok);
        Ok(QueryOutput::records(
            vec!["a".into(), "b".into()],
            futures::stream::iter(rows),
        ))
    }
}

/// Exports `rows` under `columns` (typed as `types`, or untyped).
#[derive(Debug, Clone)]
struct Fixed {
    columns: Vec<String>,
    types: Vec<ColumnType>,
    rows: Vec<Record>,
}

#[async_trait::async_trait]
impl QueryExecutor for Fixed {
    async fn execute(
        &self,
        _job: &AsyncQuery,
        _ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let rows = self.rows.clone().into_iter().map(Ok);
        Ok(
            QueryOutput::records(self.columns.clone(), futures::stream::iter(rows))
                .with_column_types(self.types.clone()),
        )
    }
}

/// The export's status, result message and bytes.
async fn export_of(fixed: Fixed, format: ExportFormat) -> (AsyncQuery, Vec<u8>) {
    let service = AsyncQueryService::builder()
        .executor(Arc::new(fixed))
        .build()
        .expect("service");
    let job = service
        .submit(&alice(), SubmitRequest::export("any", format))
        .await
        .expect("submit");
    if job.status != QueryStatus::Complete {
        return (job, Vec::new());
    }
    let download = service
        .download(&alice(), job.id, None)
        .await
        .expect("download");
    (job, read_download(download).await)
}

fn service(config: Config) -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(config)
        .dao(Arc::new(MemoryDao::new()))
        .storage(Arc::new(MemoryStorage::new()))
        .executor(Arc::new(Rows))
        .format(Arc::new(Lines))
        .expect("register")
        .build()
        .expect("service")
}

#[tokio::test]
async fn a_registered_format_exports_and_downloads_with_its_own_type_and_extension() {
    let service = service(Config {
        append_file_extension: true,
        ..Config::default()
    });
    let lines = ExportFormat::new("lines").expect("name");
    let job = service
        .submit(&alice(), SubmitRequest::export("any", lines.clone()))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    assert_eq!(
        job.kind,
        async_query::JobKind::TableExport {
            format: lines.clone()
        }
    );
    let download = service
        .download(&alice(), job.id, None)
        .await
        .expect("download");
    assert_eq!(download.format, lines);
    assert_eq!(download.content_type, "text/x-lines; charset=utf-8");
    assert_eq!(download.extension, "lines");
    assert_eq!(download.file_name, format!("{}.lines", job.id));
    let text = String::from_utf8(read_download(download).await).expect("utf-8");
    assert_eq!(
        text,
        "a | b\n=HYPERLINK(\"http://evil\") | -5\n@SUM(A1) | plain\nü ✓ | null\n"
    );
    assert_eq!(job.result.and_then(|r| r.record_count), Some(3));
}

#[tokio::test]
async fn an_unknown_format_is_refused_before_anything_is_stored() {
    let service = service(Config::default());
    let pdf = ExportFormat::new("PDF").expect("name");
    let refused = service
        .submit(&alice(), SubmitRequest::export("any", pdf.clone()))
        .await;
    let Err(Error::InvalidRequest { reason }) = refused else {
        panic!("expected InvalidRequest, got {refused:?}");
    };
    assert!(reason.contains("PDF"), "{reason}");
    assert!(
        ["known formats: ", "CSV", "JSON", "NDJSON"]
            .iter()
            .all(|n| reason.contains(n))
            && reason.ends_with(", LINES"),
        "{reason}"
    );
    let many = service
        .submit_many(
            &alice(),
            vec![
                SubmitRequest::export("any", ExportFormat::CSV),
                SubmitRequest::export("any", pdf),
            ],
        )
        .await;
    assert!(
        matches!(&many, Err(Error::InvalidRequest { reason }) if reason.starts_with("request 1:")),
        "{many:?}"
    );
    let listed = service
        .list(&alice(), &async_query::history::HistoryQuery::new())
        .await
        .expect("list");
    assert!(listed.jobs.is_empty(), "nothing stored: {listed:?}");
}

#[derive(Debug)]
struct BadType;

impl ExportEncoding for BadType {
    fn format(&self) -> ExportFormat {
        ExportFormat::new("BAD").expect("name")
    }
    fn content_type(&self) -> &str {
        "text/plain\r\nX-Injected: 1"
    }
    fn extension(&self) -> &str {
        "bad"
    }
    fn encoder(&self, _: ExportSpec) -> async_query::Result<Box<dyn RecordEncoder>> {
        Err(Error::InvalidRequest {
            reason: "unused".into(),
        })
    }
}

#[tokio::test]
async fn a_format_whose_content_type_is_no_header_value_is_refused_at_build() {
    let refused = AsyncQueryService::builder().format(Arc::new(BadType));
    assert!(matches!(refused, Err(Error::Config { .. })));
}

/// An encoder that cannot start: the job fails with its message and
/// nothing is published.
#[derive(Debug)]
struct Refusing;

impl ExportEncoding for Refusing {
    fn format(&self) -> ExportFormat {
        ExportFormat::CSV
    }
    fn content_type(&self) -> &str {
        "text/csv"
    }
    fn extension(&self) -> &str {
        "csv"
    }
    fn encoder(&self, spec: ExportSpec) -> async_query::Result<Box<dyn RecordEncoder>> {
        Err(Error::InvalidRequest {
            reason: format!("this CSV takes one column, not {}", spec.columns.len()),
        })
    }
}

#[tokio::test]
async fn a_host_replaces_a_built_in_format_and_its_refusal_fails_the_job() {
    let storage = MemoryStorage::new();
    let service = AsyncQueryService::builder()
        .storage(Arc::new(storage.clone()))
        .executor(Arc::new(Rows))
        .format(Arc::new(Refusing))
        .expect("register")
        .build()
        .expect("service");
    let job = service
        .submit(&alice(), SubmitRequest::export("any", ExportFormat::CSV))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Failure);
    let message = job.result.and_then(|r| r.message).unwrap_or_default();
    assert!(message.contains("takes one column, not 2"), "{message}");
    assert!(storage.names().is_empty(), "nothing published");
}

async fn csv_cells(config: Config) -> Vec<Vec<String>> {
    let service = service(config);
    let job = service
        .submit(&alice(), SubmitRequest::export("any", ExportFormat::CSV))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let bytes = read_download(
        service
            .download(&alice(), job.id, None)
            .await
            .expect("download"),
    )
    .await;
    csv::Reader::from_reader(&bytes[..])
        .records()
        .map(|r| r.expect("csv").iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn the_csv_formula_guard_is_off_by_default_and_prefixes_formulas_when_on() {
    let exact = csv_cells(Config::default()).await;
    assert_eq!(
        exact,
        [
            ["=HYPERLINK(\"http://evil\")", "-5"],
            ["@SUM(A1)", "plain"],
            ["ü ✓", ""],
        ]
    );
    let guarded = csv_cells(Config {
        csv_formula_guard: true,
        ..Config::default()
    })
    .await;
    assert_eq!(
        guarded,
        [
            ["'=HYPERLINK(\"http://evil\")", "-5"],
            ["'@SUM(A1)", "plain"],
            ["ü ✓", ""],
        ]
    );
}

/// CSV, JSON and NDJSON read back by their own parsers for an empty result
/// and for rows 2,000 columns wide (unicode, nulls and awkward text are in
/// `tests/export.rs`).
#[tokio::test]
async fn text_formats_read_back_an_empty_result_and_very_wide_rows() {
    let columns: Vec<String> = vec!["a".into(), "b ü".into()];
    let empty = Fixed {
        columns: columns.clone(),
        types: Vec::new(),
        rows: Vec::new(),
    };
    let (job, bytes) = export_of(empty.clone(), ExportFormat::CSV).await;
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    assert_eq!(reader.headers().expect("header"), vec!["a", "b ü"]);
    assert_eq!(reader.records().count(), 0);
    let (job, bytes) = export_of(empty.clone(), ExportFormat::JSON).await;
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let parsed: Vec<Value> = serde_json::from_slice(&bytes).expect("a JSON array");
    assert!(parsed.is_empty());
    let (job, bytes) = export_of(empty, ExportFormat::NDJSON).await;
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    assert!(bytes.is_empty(), "no records, no lines: {bytes:?}");

    let width = 2_000;
    let columns: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
    let rows: Vec<Record> = (0..3)
        .map(|r| {
            (0..width)
                .map(|i| match i % 3 {
                    0 => json!(format!("v{r}.{i}")),
                    1 => json!(i * r),
                    _ => Value::Null,
                })
                .collect()
        })
        .collect();
    let wide = Fixed {
        columns: columns.clone(),
        types: Vec::new(),
        rows: rows.clone(),
    };
    let (_, bytes) = export_of(wide.clone(), ExportFormat::CSV).await;
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    assert_eq!(reader.headers().expect("header"), columns);
    let read: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(read.len(), rows.len());
    for (got, want) in read.iter().zip(&rows) {
        assert_eq!(got.len(), width);
        for (field, value) in got.iter().zip(want) {
            let want = match value {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(field, want);
        }
    }
    let objects = |bytes: Vec<u8>, format: &ExportFormat| -> Vec<serde_json::Map<String, Value>> {
        if *format == ExportFormat::JSON {
            serde_json::from_slice(&bytes).expect("a JSON array of objects")
        } else {
            std::str::from_utf8(&bytes)
                .expect("UTF-8")
                .lines()
                .map(|line| serde_json::from_str(line).expect("one object per line"))
                .collect()
        }
    };
    for format in [ExportFormat::JSON, ExportFormat::NDJSON] {
        let (job, bytes) = export_of(wide.clone(), format.clone()).await;
        assert_eq!(
            job.status,
            QueryStatus::Complete,
            "{format}: {:?}",
            job.result
        );
        let read = objects(bytes, &format);
        assert_eq!(read.len(), rows.len(), "{format}");
        for (object, want) in read.iter().zip(&rows) {
            assert_eq!(object.len(), width, "{format}");
            for (column, value) in columns.iter().zip(want) {
                assert_eq!(&object[column], value, "{format} {column}");
            }
        }
    }
}

#[cfg(feature = "axum")]
mod http {
    use super::*;
    use async_query::http::{HeaderPrincipal, JSON_API, router};

    async fn post(base: &str, result_type: &str) -> (reqwest::StatusCode, Value) {
        let document = json!({ "data": { "type": "tableExport", "attributes": {
            "query": "any", "queryType": "SQL", "resultType": result_type, "asyncAfterSeconds": 10
        } } });
        let response = reqwest::Client::new()
            .post(format!("{base}/tableExport"))
            .header("X-User", "alice")
            .header("Content-Type", JSON_API)
            .body(document.to_string())
            .send()
            .await
            .expect("post");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn http_takes_registered_names_and_answers_400_for_others() {
        let service = service(Config::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = router(service, HeaderPrincipal);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (status, created) = post(&base, "lines").await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{created}");
        let attributes = &created["data"]["attributes"];
        assert_eq!(attributes["resultType"], "LINES");
        assert_eq!(attributes["status"], "COMPLETE");
        let url = attributes["result"]["url"].as_str().expect("url");
        let response = reqwest::Client::new()
            .get(format!("{base}{url}"))
            .header("X-User", "alice")
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/x-lines; charset=utf-8"
        );
        let id = created["data"]["id"].as_str().expect("id");
        assert_eq!(
            response.headers()["content-disposition"],
            format!("attachment; filename=\"{id}.lines\"").as_str()
        );
        assert!(response.text().await.expect("body").starts_with("a | b\n"));

        for unknown in ["PDF", "not a name", ""] {
            let (status, refused) = post(&base, unknown).await;
            assert_eq!(
                status,
                reqwest::StatusCode::BAD_REQUEST,
                "{unknown:?}: {refused}"
            );
            let detail = refused["errors"][0]["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("format") || detail.contains("resultType"),
                "{unknown:?}: {detail}"
            );
        }
    }
}

/// XLSX exports read back by an independent reader (`calamine`) and
/// compared cell by cell with the rows the executor produced.
#[cfg(feature = "xlsx")]
mod xlsx {
    use super::*;
    use calamine::{Data, Reader, Xlsx};

    async fn export(fixed: Fixed) -> (async_query::Download, Vec<Vec<Data>>) {
        let service = AsyncQueryService::builder()
            .executor(Arc::new(fixed))
            .build()
            .expect("service");
        let job = service
            .submit(&alice(), SubmitRequest::export("any", ExportFormat::XLSX))
            .await
            .expect("submit");
        assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
        let download = service
            .download(&alice(), job.id, None)
            .await
            .expect("download");
        let bytes = read_download(
            service
                .download(&alice(), job.id, None)
                .await
                .expect("download"),
        )
        .await;
        let mut book: Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).expect("an XLSX file");
        assert_eq!(book.sheet_names(), ["Sheet1"]);
        let range = book.worksheet_range("Sheet1").expect("sheet");
        (download, range.rows().map(<[Data]>::to_vec).collect())
    }

    /// What `value` in a column of type `typed` reads back as.
    fn expected(value: &Value, typed: Option<ColumnType>) -> Data {
        match value {
            Value::Null => Data::Empty,
            Value::Bool(b) => Data::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) if i.unsigned_abs() > 1 << 53 => Data::String(i.to_string()),
                _ => Data::Float(n.as_f64().expect("a number")),
            },
            Value::String(s) => match (typed, chrono::DateTime::parse_from_rfc3339(s)) {
                (Some(ColumnType::Timestamp), Ok(at)) => Data::Float(
                    at.timestamp() as f64 / 86_400.0
                        + 25_569.0
                        + f64::from(at.timestamp_subsec_nanos()) / 86_400e9,
                ),
                // An empty string is an empty cell, as in CSV.
                _ if s.is_empty() => Data::Empty,
                _ => Data::String(s.clone()),
            },
            other => Data::String(other.to_string()),
        }
    }

    /// A read-back cell, with dates as their serial number (calamine
    /// reads date-formatted cells as `DateTime`) and integers as floats.
    fn plain(cell: &Data) -> Data {
        match cell {
            Data::DateTime(at) => Data::Float(at.as_f64()),
            Data::Int(i) => Data::Float(*i as f64),
            other => other.clone(),
        }
    }

    #[tokio::test]
    async fn typed_cells_unicode_nulls_and_awkward_values_read_back_cell_by_cell() {
        let columns = ["id", "name", "amount", "paid", "at", "tags", "big", "note"];
        let types = vec![
            ColumnType::Integer,
            ColumnType::Text,
            ColumnType::Float,
            ColumnType::Boolean,
            ColumnType::Timestamp,
            ColumnType::Json,
            ColumnType::Integer,
            ColumnType::Text,
        ];
        let rows: Vec<Record> = vec![
            vec![
                json!(1),
                json!("Zoë ✓ 東京"),
                json!(9.5),
                json!(true),
                json!("2026-12-07T10:30:00Z"),
                json!(["a", 1]),
                json!(9_007_199_254_740_993_i64),
                json!("=1+1"),
            ],
            vec![
                json!(2),
                json!(""),
                json!(-0.25),
                json!(false),
                json!("2026-12-07T12:00:00+02:00"),
                json!({"k": null}),
                json!(-3),
                Value::Null,
            ],
            vec![
                json!(3),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("not a date"),
                Value::Null,
                json!(0),
                json!("line\nbreak\ttab"),
            ],
        ];
        let fixed = Fixed {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            types: types.clone(),
            rows: rows.clone(),
        };
        let (download, cells) = export(fixed).await;
        assert_eq!(
            download.content_type,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        );
        assert_eq!(download.extension, "xlsx");
        let header: Vec<Data> = columns.iter().map(|c| Data::String((*c).into())).collect();
        assert_eq!(cells[0], header);
        assert_eq!(cells.len(), rows.len() + 1);
        for (r, (row, read)) in rows.iter().zip(&cells[1..]).enumerate() {
            for (c, value) in row.iter().enumerate() {
                let got = read.get(c).map(plain).unwrap_or(Data::Empty);
                let want = expected(value, types.get(c).copied());
                match (&got, &want) {
                    (Data::Float(a), Data::Float(b)) => {
                        assert!(
                            (a - b).abs() < 1e-9,
                            "row {r} column {c}: {got:?} != {want:?}"
                        )
                    }
                    _ => assert_eq!(got, want, "row {r} column {c} ({value})"),
                }
            }
        }
        // A timestamp column is formatted as a date-time: calamine sees a
        // date, not a bare number.
        assert!(
            matches!(cells[1][4], Data::DateTime(_)),
            "{:?}",
            cells[1][4]
        );
    }

    #[tokio::test]
    async fn an_empty_result_is_a_header_row_and_a_wide_row_keeps_every_column() {
        let (_, cells) = export(Fixed {
            columns: vec!["a".into(), "b".into()],
            types: Vec::new(),
            rows: Vec::new(),
        })
        .await;
        assert_eq!(
            cells,
            [vec![Data::String("a".into()), Data::String("b".into())]]
        );

        let width = 2_000;
        let columns: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
        let row: Record = (0..width).map(|i| json!(format!("v{i}"))).collect();
        let (_, cells) = export(Fixed {
            columns,
            types: Vec::new(),
            rows: vec![row.clone(), row],
        })
        .await;
        assert_eq!(cells.len(), 3);
        for read in &cells[1..] {
            assert_eq!(read.len(), width);
            assert_eq!(read[width - 1], Data::String(format!("v{}", width - 1)));
            assert_eq!(read[0], Data::String("v0".into()));
        }
    }
}

/// ARROW_STREAM and PARQUET exports read back with Arrow's own IPC reader
/// and the Parquet crate's reader, compared cell by cell.
#[cfg(feature = "arrow")]
mod columnar {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::{Array, RecordBatch};

    fn ipc_batches(bytes: Vec<u8>) -> Vec<RecordBatch> {
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("an Arrow IPC stream")
            .map(|b| b.expect("batch"))
            .collect()
    }

    fn parquet_batches(bytes: Vec<u8>) -> Vec<RecordBatch> {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(
            bytes,
        ))
        .expect("a Parquet file")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
    }

    /// Every cell as JSON: dates as days since the epoch, timestamps as
    /// microseconds.
    fn cells(batches: &[RecordBatch]) -> Vec<Vec<Value>> {
        let mut rows = Vec::new();
        for batch in batches {
            for r in 0..batch.num_rows() {
                let row = batch
                    .columns()
                    .iter()
                    .map(|column| {
                        if column.is_null(r) {
                            return Value::Null;
                        }
                        match column.data_type() {
                            arrow_schema::DataType::Int64 => {
                                json!(column.as_primitive::<Int64Type>().value(r))
                            }
                            arrow_schema::DataType::Float64 => {
                                json!(column.as_primitive::<Float64Type>().value(r))
                            }
                            arrow_schema::DataType::Boolean => json!(column.as_boolean().value(r)),
                            arrow_schema::DataType::Utf8 => {
                                json!(column.as_string::<i32>().value(r))
                            }
                            arrow_schema::DataType::Date32 => {
                                json!(column.as_primitive::<Date32Type>().value(r))
                            }
                            arrow_schema::DataType::Timestamp(..) => {
                                json!(column.as_primitive::<TimestampMicrosecondType>().value(r))
                            }
                            other => panic!("unexpected column type {other}"),
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        rows
    }

    /// What `value` in a column of type `t` reads back as.
    fn expected(value: &Value, t: ColumnType) -> Value {
        match (value, t) {
            (Value::Null, _) => Value::Null,
            (Value::String(s), ColumnType::Timestamp) => json!(
                chrono::DateTime::parse_from_rfc3339(s)
                    .expect("timestamp")
                    .timestamp_micros()
            ),
            (Value::String(s), ColumnType::Date) => {
                let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
                json!(
                    (day - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days()
                )
            }
            (Value::Number(n), ColumnType::Float) => json!(n.as_f64().expect("float")),
            (Value::String(_), _) => value.clone(),
            (other, ColumnType::Text | ColumnType::Json) => json!(other.to_string()),
            (other, _) => other.clone(),
        }
    }

    fn typed() -> Fixed {
        let types = vec![
            ColumnType::Integer,
            ColumnType::Text,
            ColumnType::Float,
            ColumnType::Boolean,
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Json,
        ];
        let columns = ["id", "name", "amount", "paid", "at", "day", "tags"];
        // Enough rows for several record batches and row groups.
        let rows = (0..20_000_i64)
            .map(|i| {
                vec![
                    json!(i),
                    if i % 7 == 0 {
                        Value::Null
                    } else {
                        json!(format!("Zoë ✓ 東京 {i}"))
                    },
                    if i % 5 == 0 {
                        json!(i)
                    } else {
                        json!(i as f64 / 4.0)
                    },
                    if i % 3 == 0 {
                        Value::Null
                    } else {
                        json!(i % 2 == 0)
                    },
                    json!(format!("2026-12-07T{:02}:30:00+02:00", i % 24)),
                    if i % 11 == 0 {
                        Value::Null
                    } else {
                        json!(format!("2026-{:02}-{:02}", i % 12 + 1, i % 28 + 1))
                    },
                    if i % 2 == 0 {
                        json!({"i": i, "x": [1, null]})
                    } else {
                        json!("plain")
                    },
                ]
            })
            .collect();
        Fixed {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            types,
            rows,
        }
    }

    fn compare(fixed: &Fixed, batches: &[RecordBatch]) {
        let got = cells(batches);
        assert_eq!(got.len(), fixed.rows.len());
        for (r, (row, read)) in fixed.rows.iter().zip(&got).enumerate() {
            let want: Vec<Value> = row
                .iter()
                .zip(&fixed.types)
                .map(|(v, t)| expected(v, *t))
                .collect();
            assert_eq!(read, &want, "row {r}");
        }
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, fixed.columns);
    }

    #[tokio::test]
    async fn typed_columns_read_back_cell_by_cell_in_both_formats() {
        let fixed = typed();
        let (job, bytes) = export_of(fixed.clone(), ExportFormat::ARROW_STREAM).await;
        assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
        let batches = ipc_batches(bytes);
        assert!(batches.len() >= 3, "{} batches", batches.len());
        assert!(batches.iter().all(|b| b.num_rows() <= 8_192));
        compare(&fixed, &batches);

        let (job, bytes) = export_of(fixed.clone(), ExportFormat::PARQUET).await;
        assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
        assert_eq!(&bytes[..4], b"PAR1");
        let metadata = parquet::file::reader::FileReader::metadata(
            &parquet::file::serialized_reader::SerializedFileReader::new(bytes::Bytes::from(
                bytes.clone(),
            ))
            .expect("parquet"),
        )
        .clone();
        let column = metadata.row_group(0).column(0);
        assert_eq!(column.compression(), parquet::basic::Compression::SNAPPY);
        compare(&fixed, &parquet_batches(bytes));
    }

    #[tokio::test]
    async fn without_types_the_first_batch_decides_and_a_misfit_fails_clearly() {
        let untyped = Fixed {
            columns: vec!["n".into(), "x".into(), "mixed".into(), "none".into()],
            types: Vec::new(),
            rows: vec![
                vec![json!(1), json!(1), json!(1), Value::Null],
                vec![json!(2), json!(2.5), json!("two"), Value::Null],
            ],
        };
        for format in [ExportFormat::ARROW_STREAM, ExportFormat::PARQUET] {
            let (job, bytes) = export_of(untyped.clone(), format.clone()).await;
            assert_eq!(
                job.status,
                QueryStatus::Complete,
                "{format}: {:?}",
                job.result
            );
            let batches = match format {
                ExportFormat::PARQUET => parquet_batches(bytes),
                _ => ipc_batches(bytes),
            };
            let schema = batches[0].schema();
            let types: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| f.data_type().to_string())
                .collect();
            assert_eq!(types, ["Int64", "Float64", "Utf8", "Utf8"], "{format}");
            assert_eq!(
                cells(&batches),
                [
                    vec![json!(1), json!(1.0), json!("1"), Value::Null],
                    vec![json!(2), json!(2.5), json!("two"), Value::Null],
                ]
            );
        }
        // A string after a first batch of whole numbers: the export fails,
        // naming the record and column, and nothing is published.
        let mut rows: Vec<Record> = (0..8_192).map(|i| vec![json!(i)]).collect();
        rows.push(vec![json!("oops")]);
        let (job, _) = export_of(
            Fixed {
                columns: vec!["n".into()],
                types: Vec::new(),
                rows,
            },
            ExportFormat::PARQUET,
        )
        .await;
        assert_eq!(job.status, QueryStatus::Failure);
        let message = job.result.and_then(|r| r.message).unwrap_or_default();
        assert!(message.contains("record 8193, column \"n\""), "{message}");
        assert!(message.contains("with_column_types"), "{message}");
    }

    #[tokio::test]
    async fn an_empty_result_has_its_schema_and_a_wide_row_every_column() {
        let empty = Fixed {
            columns: vec!["a".into(), "b".into()],
            types: vec![ColumnType::Integer, ColumnType::Text],
            rows: Vec::new(),
        };
        let (job, bytes) = export_of(empty.clone(), ExportFormat::ARROW_STREAM).await;
        assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .expect("stream");
        assert_eq!(
            reader.schema().field(0).data_type(),
            &arrow_schema::DataType::Int64
        );
        assert_eq!(reader.count(), 0);
        let (job, bytes) = export_of(empty, ExportFormat::PARQUET).await;
        assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
        assert!(parquet_batches(bytes).iter().all(|b| b.num_rows() == 0));

        let width = 2_000;
        let wide = Fixed {
            columns: (0..width).map(|i| format!("c{i}")).collect(),
            types: Vec::new(),
            rows: vec![(0..width).map(|i| json!(format!("v{i}"))).collect(); 3],
        };
        for format in [ExportFormat::ARROW_STREAM, ExportFormat::PARQUET] {
            let (job, bytes) = export_of(wide.clone(), format.clone()).await;
            assert_eq!(
                job.status,
                QueryStatus::Complete,
                "{format}: {:?}",
                job.result
            );
            let batches = match format {
                ExportFormat::PARQUET => parquet_batches(bytes),
                _ => ipc_batches(bytes),
            };
            assert_eq!(cells(&batches), wide.rows, "{format}");
        }
    }
}
