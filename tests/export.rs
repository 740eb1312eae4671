//! Table exports through the service: stored, downloadable, never partial.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::{
    AsyncQueryService, Config, Error, ExportFormat, FileSystemStorage, QueryStatus, ResultBody,
    SubmitRequest,
};
use common::*;

async fn fs_service(
    dir: &std::path::Path,
    config: Config,
) -> (AsyncQueryService, FileSystemStorage) {
    let storage = FileSystemStorage::new(dir).await.unwrap();
    (storage_service(config, Arc::new(storage.clone())), storage)
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn csv_export_is_stored_and_downloadable_in_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = fs_service(
        dir.path(),
        Config {
            append_file_extension: true,
            ..config()
        },
    )
    .await;
    let job = service
        .submit(
            &alice(),
            SubmitRequest::export("rows 1000", ExportFormat::CSV),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let result = job.result.clone().unwrap();
    assert_eq!(result.record_count, Some(1000));
    assert_eq!(result.body, ResultBody::Stored(format!("{}.csv", job.id)));

    let whole = read_download(service.download(&alice(), job.id, None).await.unwrap()).await;
    assert_eq!(Some(whole.len() as u64), result.content_length);
    let mut reader = csv::Reader::from_reader(&whole[..]);
    assert_eq!(reader.headers().unwrap(), vec!["id", "name", "note"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1000);
    assert_eq!(&rows[0][2], "", "null is an empty field");
    assert_eq!(
        &rows[1][2], "a,\"b\"\nc",
        "quotes, commas and newlines survive"
    );

    let download = service
        .download(&alice(), job.id, Some(10..20))
        .await
        .unwrap();
    assert_eq!(download.content_type, "text/csv; charset=utf-8");
    assert_eq!(download.stream.total_len, whole.len() as u64);
    assert_eq!(read_download(download).await, whole[10..20]);
    let len = whole.len() as u64;
    assert_eq!(
        read_download(
            service
                .download(&alice(), job.id, Some(len - 1..len + 5))
                .await
                .unwrap()
        )
        .await,
        whole[whole.len() - 1..]
    );
    assert!(matches!(
        service.download(&alice(), job.id, Some(len..len + 1)).await,
        Err(Error::RangeNotSatisfiable { .. })
    ));
}

#[tokio::test]
async fn json_and_ndjson_exports_parse_back() {
    let h = harness(config());
    for format in [ExportFormat::JSON, ExportFormat::NDJSON] {
        let job = submit(&h.service, SubmitRequest::export("rows 3", format.clone())).await;
        assert_eq!(job.status, QueryStatus::Complete);
        let bytes = read_download(h.service.download(&alice(), job.id, None).await.unwrap()).await;
        let rows: Vec<serde_json::Value> = match format {
            ExportFormat::JSON => serde_json::from_slice(&bytes).unwrap(),
            _ => bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect(),
        };
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["note"], "a,\"b\"\nc");
        assert_eq!(rows[0]["note"], serde_json::Value::Null);
    }
}

#[tokio::test]
async fn failure_half_way_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = fs_service(dir.path(), config()).await;
    let job = service
        .submit(
            &alice(),
            SubmitRequest::export("rows 100000 fail 50000", ExportFormat::NDJSON),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Failure);
    assert_eq!(
        job.result.unwrap().message.as_deref(),
        Some("row source failed at row 50000")
    );
    assert!(
        files(dir.path()).is_empty(),
        "partial export left: {:?}",
        files(dir.path())
    );
    assert!(matches!(
        service.download(&alice(), job.id, None).await,
        Err(Error::NoResult { .. })
    ));
}

#[tokio::test]
async fn cancel_half_way_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = fs_service(dir.path(), config()).await;
    let job = service
        .submit(
            &alice(),
            SubmitRequest::export("rows 100000000", ExportFormat::CSV)
                .with_async_after(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Processing);
    assert_eq!(
        files(dir.path()).len(),
        1,
        "the export is being written to a temporary file"
    );
    match service.download(&alice(), job.id, None).await {
        Err(Error::NoResult { reason, .. }) => assert_eq!(reason, "its status is PROCESSING"),
        other => panic!("a running export has nothing to download yet, got {other:?}"),
    }
    let record = service
        .cancel(&alice(), job.id)
        .await
        .unwrap()
        .into_record();
    assert_eq!(record.status, QueryStatus::CancelComplete);
    assert!(
        files(dir.path()).is_empty(),
        "partial export left: {:?}",
        files(dir.path())
    );
}

#[tokio::test]
async fn queries_and_exports_do_not_mix_up_their_outputs() {
    let h = harness(config());
    let query = submit(&h.service, SubmitRequest::query("rows 5")).await;
    assert_eq!(query.status, QueryStatus::Complete);
    assert!(matches!(
        h.service.download(&alice(), query.id, None).await,
        Err(Error::NoResult { .. })
    ));
    let export = submit(
        &h.service,
        SubmitRequest::export("plain text", ExportFormat::CSV),
    )
    .await;
    assert_eq!(export.status, QueryStatus::Failure);
    assert!(
        export
            .result
            .unwrap()
            .message
            .unwrap()
            .contains("return QueryOutput::Records")
    );
}

/// Rows full of values that break naive encoders.
struct Tricky;

fn tricky_rows() -> Vec<async_query::Record> {
    use serde_json::{Value, json};
    vec![
        vec![json!("plain"), json!(""), Value::Null, json!(0)],
        vec![
            json!("comma, \"quote\"\nnew line\r\nCRLF"),
            json!("  padded  "),
            json!(true),
            json!(-1.5e-7),
        ],
        vec![
            json!("ünïcödé 🦀 עברית e\u{301}"),
            json!("tab\there"),
            json!({"nested": [1, {"a": null}]}),
            json!([]),
        ],
        vec![
            json!("nul \u{0} bell \u{7}"),
            json!("=cmd|' /C calc'!A0"),
            json!("\""),
            json!(u64::MAX),
        ],
    ]
}

#[async_trait::async_trait]
impl async_query::QueryExecutor for Tricky {
    async fn execute(
        &self,
        _: &async_query::AsyncQuery,
        _: async_query::ExecutionContext,
    ) -> Result<async_query::QueryOutput, async_query::BoxError> {
        let rows = tricky_rows().into_iter().map(Ok);
        Ok(async_query::QueryOutput::records(
            vec![
                "text".into(),
                "empty or padded".into(),
                "mixed".into(),
                "number".into(),
            ],
            futures::stream::iter(rows),
        ))
    }
}

#[tokio::test]
async fn tricky_values_round_trip_through_real_parsers() {
    use serde_json::Value;
    let service = AsyncQueryService::builder()
        .executor(Arc::new(Tricky))
        .build()
        .unwrap();
    let expected = tricky_rows();
    for format in [ExportFormat::CSV, ExportFormat::JSON, ExportFormat::NDJSON] {
        let job = service
            .submit(&alice(), SubmitRequest::export("tricky", format.clone()))
            .await
            .unwrap();
        assert_eq!(
            job.status,
            QueryStatus::Complete,
            "{format:?}: {:?}",
            job.result
        );
        let bytes = read_download(service.download(&alice(), job.id, None).await.unwrap()).await;
        match format {
            ExportFormat::CSV => {
                let mut reader = csv::Reader::from_reader(&bytes[..]);
                assert_eq!(
                    reader.headers().unwrap(),
                    vec!["text", "empty or padded", "mixed", "number"]
                );
                let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
                assert_eq!(rows.len(), expected.len());
                for (row, want) in rows.iter().zip(&expected) {
                    for (field, value) in row.iter().zip(want) {
                        let want = match value {
                            Value::Null => String::new(),
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        assert_eq!(field, want, "CSV field");
                    }
                }
            }
            _ => {
                let objects: Vec<serde_json::Map<String, Value>> = if format == ExportFormat::JSON {
                    serde_json::from_slice(&bytes).unwrap()
                } else {
                    let text = std::str::from_utf8(&bytes).unwrap();
                    assert!(text.ends_with('\n'));
                    text.lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect()
                };
                assert_eq!(objects.len(), expected.len());
                for (object, want) in objects.iter().zip(&expected) {
                    let got: Vec<&Value> = ["text", "empty or padded", "mixed", "number"]
                        .iter()
                        .map(|c| &object[*c])
                        .collect();
                    let want: Vec<&Value> = want.iter().collect();
                    assert_eq!(
                        got, want,
                        "JSON keeps nulls, empty strings and nesting distinct"
                    );
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn record_limit_fails_or_truncates_but_never_silently() {
    let limited = |action| Config {
        export_max_records: Some(10),
        export_limit_action: action,
        ..config()
    };
    let fail = harness(limited(async_query::config::ExportLimitAction::Fail));
    let job = submit(
        &fail.service,
        SubmitRequest::export("rows 11", ExportFormat::CSV),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Failure);
    assert!(
        job.result
            .unwrap()
            .message
            .unwrap()
            .contains("10 records (export_max_records)")
    );
    let exact = submit(
        &fail.service,
        SubmitRequest::export("rows 10", ExportFormat::CSV),
    )
    .await;
    assert_eq!(
        exact.status,
        QueryStatus::Complete,
        "exactly at the limit is fine"
    );
    assert!(!exact.result.unwrap().truncated);

    let truncate = harness(limited(async_query::config::ExportLimitAction::Truncate));
    let job = submit(
        &truncate.service,
        SubmitRequest::export("rows 1000", ExportFormat::NDJSON),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete);
    let result = job.result.clone().unwrap();
    assert!(result.truncated);
    assert_eq!(result.record_count, Some(10));
    assert!(result.message.unwrap().starts_with("truncated"));
    let bytes = read_download(
        truncate
            .service
            .download(&alice(), job.id, None)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 10);
}

#[tokio::test(start_paused = true)]
async fn byte_limit_stops_at_the_first_record_that_reaches_it() {
    let h = harness(Config {
        export_max_bytes: Some(1_000),
        export_limit_action: async_query::config::ExportLimitAction::Truncate,
        ..config()
    });
    let job = submit(
        &h.service,
        SubmitRequest::export("rows 1000", ExportFormat::JSON),
    )
    .await;
    let result = job.result.unwrap();
    assert!(result.truncated);
    let len = result.content_length.unwrap();
    assert!((1_000..1_100).contains(&len), "{len} bytes");
    let bytes = read_download(h.service.download(&alice(), job.id, None).await.unwrap()).await;
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&bytes).expect("a truncated JSON export is still valid JSON");
    assert_eq!(rows.len() as u64, result.record_count.unwrap());
}

#[tokio::test]
async fn a_million_rows_through_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let (service, storage) = fs_service(dir.path(), config()).await;
    let job = service
        .submit(
            &alice(),
            SubmitRequest::export("rows 1000000", ExportFormat::CSV)
                .with_async_after(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let result = job.result.unwrap();
    assert_eq!(result.record_count, Some(1_000_000));
    let path = storage.root().join(job.id.to_string());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        result.content_length.unwrap()
    );
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let mut count = 0u64;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).unwrap() {
        assert_eq!(record[0].parse::<u64>().unwrap(), count, "rows in order");
        count += 1;
    }
    assert_eq!(count, 1_000_000);
}

/// The in-memory storage's byte limit ends an export that would pass it
/// `FAILURE`, says why, and keeps nothing of it; smaller exports go on.
#[tokio::test]
async fn memory_storage_refuses_an_export_past_its_limit() {
    let storage = async_query::MemoryStorage::new().with_max_bytes(64 * 1024);
    let service = storage_service(config(), Arc::new(storage.clone()));
    let big = export_csv(&service, "rows 100000").await;
    assert_eq!(big.status, QueryStatus::Failure);
    let message = big.result.and_then(|r| r.message).unwrap_or_default();
    assert!(message.contains("storage"), "{message}");
    assert_eq!(storage.used_bytes(), 0, "nothing of it is kept");
    let small = export_csv(&service, "rows 100").await;
    assert_eq!(small.status, QueryStatus::Complete);
    assert!(storage.used_bytes() > 0);
}
