//! Export formats a host adds, the registry's refusals, and the CSV
//! formula guard, through the service and over HTTP.

mod common;

use std::sync::Arc;

use async_query::format::{ExportEncoding, ExportSpec, RecordEncoder, Tail};
use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, Error, ExecutionContext, ExportFormat,
    MemoryDao, MemoryStorage, QueryExecutor, QueryOutput, QueryStatus, Record, SubmitRequest,
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
        reason.contains("known formats: CSV, JSON, NDJSON") && reason.ends_with(", LINES"),
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
    use async_query::ColumnType;
    use calamine::{Data, Reader, Xlsx};

    /// Exports `rows` under `columns`, typed as `types`.
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
