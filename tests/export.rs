//! Table exports through the service: stored, downloadable, never partial.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::testing::ScriptedExecutor;
use async_query::{
    AsyncQueryService, Config, Error, ExportFormat, FileSystemStorage, QueryStatus, ResultBody,
    SubmitRequest,
};
use common::*;
use futures::TryStreamExt;

async fn fs_service(
    dir: &std::path::Path,
    config: Config,
) -> (AsyncQueryService, FileSystemStorage) {
    let storage = FileSystemStorage::new(dir).await.unwrap();
    let service = AsyncQueryService::builder()
        .config(config)
        .storage(Arc::new(storage.clone()))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .unwrap();
    (service, storage)
}

async fn body(download: async_query::Download) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = download.stream.body.try_collect().await.unwrap();
    chunks.concat()
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
            SubmitRequest::export("rows 1000", ExportFormat::Csv),
        )
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Complete, "{:?}", job.result);
    let result = job.result.clone().unwrap();
    assert_eq!(result.record_count, Some(1000));
    assert_eq!(result.body, ResultBody::Stored(format!("{}.csv", job.id)));

    let whole = body(service.download(&alice(), job.id, None).await.unwrap()).await;
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
    assert_eq!(body(download).await, whole[10..20]);
    let len = whole.len() as u64;
    assert_eq!(
        body(
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
    for format in [ExportFormat::Json, ExportFormat::Ndjson] {
        let job = h
            .service
            .submit(&alice(), SubmitRequest::export("rows 3", format))
            .await
            .unwrap();
        assert_eq!(job.status, QueryStatus::Complete);
        let bytes = body(h.service.download(&alice(), job.id, None).await.unwrap()).await;
        let rows: Vec<serde_json::Value> = match format {
            ExportFormat::Json => serde_json::from_slice(&bytes).unwrap(),
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
            SubmitRequest::export("rows 100000 fail 50000", ExportFormat::Ndjson),
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
            SubmitRequest::export("rows 100000000", ExportFormat::Csv)
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
    let query = h
        .service
        .submit(&alice(), SubmitRequest::query("rows 5"))
        .await
        .unwrap();
    assert_eq!(query.status, QueryStatus::Complete);
    assert!(matches!(
        h.service.download(&alice(), query.id, None).await,
        Err(Error::NoResult { .. })
    ));
    let export = h
        .service
        .submit(
            &alice(),
            SubmitRequest::export("plain text", ExportFormat::Csv),
        )
        .await
        .unwrap();
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
