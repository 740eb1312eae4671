//! The axum adapter over real HTTP: every route and error code, downloads
//! byte for byte, ranges, cancelling a long SQL query, visibility between
//! principals, a fuzz-style test, and the OpenAPI description checked
//! against the router.
#![cfg(feature = "axum")]

#[path = "../examples/support/sql_lab.rs"]
mod lab;

use std::sync::Arc;
use std::time::Duration;

use async_query::http::{self, AuthError, HeaderPrincipal, JSON_API, PrincipalResolver};
use async_query::testing::{FaultyDao, ScriptedExecutor};
use async_query::{
    AsyncApiDao, AsyncQueryService, Config, ExportFormat, FileSystemStorage, MemoryDao, Principal,
    QueryExecutor, QueryStatus, SubmitRequest,
};
use futures::TryStreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A router on 127.0.0.1:0 over a service, as a client sees it.
struct Server {
    base: String,
    client: reqwest::Client,
    service: AsyncQueryService,
    _dir: tempfile::TempDir,
}

/// Rows in the test's `orders` table: enough for a cross join that runs
/// for minutes, small enough to build in well under a second.
const ORDERS: u64 = 20_000;

async fn serve(
    config: Config,
    executor: impl FnOnce(&std::path::Path) -> Arc<dyn QueryExecutor>,
) -> Server {
    let dao: Arc<dyn AsyncApiDao> = Arc::new(MemoryDao::new());
    serve_with(config, executor, dao, HeaderPrincipal).await
}

/// [`serve`] with a given DAO and principal resolver.
async fn serve_with<R: PrincipalResolver>(
    config: Config,
    executor: impl FnOnce(&std::path::Path) -> Arc<dyn QueryExecutor>,
    dao: Arc<dyn AsyncApiDao>,
    resolver: R,
) -> Server {
    serve_nested("", config, executor, dao, resolver).await
}

/// [`serve_with`], the router nested under `prefix` in a host app (the
/// server's base URL includes the prefix).
async fn serve_nested<R: PrincipalResolver>(
    prefix: &str,
    config: Config,
    executor: impl FnOnce(&std::path::Path) -> Arc<dyn QueryExecutor>,
    dao: Arc<dyn AsyncApiDao>,
    resolver: R,
) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let executor = executor(dir.path());
    let storage = FileSystemStorage::new(dir.path().join("exports"))
        .await
        .expect("storage");
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(dao)
        .storage(Arc::new(storage))
        .executor(executor)
        .build()
        .expect("service");
    let mut app = http::router(service.clone(), resolver);
    if !prefix.is_empty() {
        app = axum::Router::new().nest(prefix, app);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base: format!("http://{addr}{prefix}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        service,
        _dir: dir,
    }
}

/// A server over a demo SQLite database and the SQL Lab's executor.
async fn sql_server() -> (Server, Arc<lab::SqlExecutor>) {
    let mut executor = None;
    let server = serve(
        Config {
            max_async_after: Duration::from_secs(30),
            append_file_extension: true,
            ..Config::default()
        },
        |dir| {
            let db = dir.join("demo.db");
            lab::create_demo_database(&db, ORDERS).expect("demo database");
            let e = Arc::new(lab::SqlExecutor::new(db, 1 << 20));
            executor = Some(Arc::clone(&e));
            e
        },
    )
    .await;
    (server, executor.expect("executor"))
}

impl Server {
    fn request(&self, method: Method, path: &str, user: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            request = request.header("X-User", user);
        }
        request
    }

    /// Submits a `kind` job (`asyncQuery` or `tableExport`) for `user`.
    async fn post(
        &self,
        kind: &str,
        user: &str,
        query: &str,
        attributes: Value,
    ) -> (StatusCode, Value) {
        let document = submission(kind, query, attributes);
        self.send(Method::POST, &format!("/{kind}"), user, Some(document))
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        user: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path, Some(user));
        if user == "root" {
            request = request.header("X-Roles", "admin");
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", JSON_API)
                .body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        assert_eq!(
            content_type.as_deref(),
            Some(JSON_API),
            "{status} for {path}"
        );
        let text = response.text().await.expect("body");
        let document = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, document)
    }
}

fn submission(kind: &str, query: &str, attributes: Value) -> Value {
    let mut attrs = json!({ "query": query, "queryType": "SQL", "status": "QUEUED" });
    if let (Some(a), Some(extra)) = (attrs.as_object_mut(), attributes.as_object()) {
        a.extend(extra.clone());
    }
    json!({ "data": { "type": kind, "attributes": attrs } })
}

fn attr<'a>(document: &'a Value, name: &str) -> &'a Value {
    &document["data"]["attributes"][name]
}

fn error_code(document: &Value) -> &str {
    document["errors"][0]["code"].as_str().unwrap_or_default()
}

/// `answer` is a JSON:API error with `status` and `code`.
#[track_caller]
fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(
        (answer.0, error_code(&answer.1)),
        (status, code),
        "{}",
        answer.1
    );
}

/// SQLite statements running once `want` are, or after 5 s of real time
/// (real SQLite work on real threads: the paused clock cannot drive it).
async fn running_after_a_while(executor: &lab::SqlExecutor, want: usize) -> usize {
    for _ in 0..500 {
        if executor.running() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    executor.running()
}

const SLOW: &str = "SELECT count(*) FROM orders a JOIN orders b ON a.amount < b.amount";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_answered_inline_and_read_back() {
    let (server, _) = sql_server().await;
    let (status, created) = server
        .post(
            "asyncQuery",
            "alice",
            "SELECT count(*) AS n, max(id) AS top FROM orders",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(attr(&created, "status"), "COMPLETE");
    assert_eq!(attr(&created, "principalName"), "alice");
    assert_eq!(attr(&created, "queryType"), "SQL");
    let result = attr(&created, "result");
    assert_eq!(result["recordCount"], 1);
    assert_eq!(result["httpStatus"], 200);
    let body: Value =
        serde_json::from_str(result["responseBody"].as_str().expect("body")).expect("json");
    assert_eq!(body, json!([{ "n": ORDERS, "top": ORDERS }]));
    assert_eq!(
        result["contentLength"],
        result["responseBody"]
            .as_str()
            .map(str::len)
            .unwrap_or_default()
    );

    let id = created["data"]["id"].as_str().expect("id");
    let (status, read) = server
        .send(Method::GET, &format!("/asyncQuery/{id}"), "alice", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["data"], created["data"]);
    // It is not a table export.
    let answer = server
        .send(Method::GET, &format!("/tableExport/{id}"), "alice", None)
        .await;
    refused(&answer, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_kept_and_duplicates_conflict() {
    let (server, _) = sql_server().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut doc = submission("asyncQuery", "SELECT 1 AS one", json!({}));
    doc["data"]["id"] = json!(id);
    let (status, created) = server
        .send(Method::POST, "/asyncQuery", "alice", Some(doc.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["data"]["id"], json!(id));
    let answer = server
        .send(Method::POST, "/asyncQuery", "alice", Some(doc.clone()))
        .await;
    refused(&answer, StatusCode::CONFLICT, "duplicate_id");
    // Anyone else learns only that the id cannot be used, not whose it is.
    let answer = server
        .send(Method::POST, "/asyncQuery", "bob", Some(doc.clone()))
        .await;
    refused(&answer, StatusCode::CONFLICT, "id_unavailable");
    assert!(!answer.1.to_string().contains("alice"), "{}", answer.1);
    let answer = server
        .send(Method::POST, "/asyncQuery", "root", Some(doc))
        .await;
    refused(&answer, StatusCode::CONFLICT, "duplicate_id");
    let mut bad = submission("asyncQuery", "SELECT 1", json!({}));
    bad["data"]["id"] = json!("not-a-uuid");
    let answer = server
        .send(Method::POST, "/asyncQuery", "alice", Some(bad))
        .await;
    refused(&answer, StatusCode::BAD_REQUEST, "invalid_id");
}

async fn direct_export(server: &Server, query: &str, format: ExportFormat) -> Vec<u8> {
    let alice = async_query::Principal::new("alice");
    let job = server
        .service
        .submit(
            &alice,
            SubmitRequest::export(query, format).with_async_after(Duration::from_secs(30)),
        )
        .await
        .expect("direct export");
    assert_eq!(job.status, QueryStatus::Complete, "{job:?}");
    let download = server
        .service
        .download(&alice, job.id, None)
        .await
        .expect("download");
    let chunks: Vec<bytes::Bytes> = download.stream.body.try_collect().await.expect("read");
    chunks.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_download_byte_for_byte_in_every_format() {
    let (server, _) = sql_server().await;
    let query = "SELECT o.*, c.name AS customer FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id";
    for (name, format, content_type) in [
        ("CSV", ExportFormat::CSV, "text/csv"),
        ("JSON", ExportFormat::JSON, "application/json"),
        ("NDJSON", ExportFormat::NDJSON, "application/x-ndjson"),
    ] {
        let (status, created) = server
            .post(
                "tableExport",
                "alice",
                query,
                json!({ "resultType": name, "asyncAfterSeconds": 30 }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(attr(&created, "status"), "COMPLETE", "{created}");
        assert_eq!(attr(&created, "resultType"), name);
        let result = attr(&created, "result");
        assert_eq!(result["recordCount"], ORDERS);
        let id = created["data"]["id"].as_str().expect("id");
        let url = result["url"].as_str().expect("url");
        assert!(url.starts_with(&format!("/export/{id}.")), "{url}");

        let response = server
            .request(Method::GET, url, Some("alice"))
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap_or_default()
                .starts_with(content_type)
        );
        assert_eq!(headers["accept-ranges"], "bytes");
        let disposition = headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            disposition.starts_with("attachment; filename=\""),
            "{disposition}"
        );
        let bytes = response.bytes().await.expect("bytes");
        assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
        assert_eq!(result["contentLength"], bytes.len());
        let direct = direct_export(&server, query, format.clone()).await;
        assert!(
            bytes.as_ref() == direct.as_slice(),
            "{name}: HTTP download differs from the direct export"
        );
        // And the data is really there.
        match format {
            ExportFormat::CSV => {
                let rows = csv::Reader::from_reader(bytes.as_ref()).records().count();
                assert_eq!(rows as u64, ORDERS);
            }
            ExportFormat::JSON => {
                let rows: Vec<Value> = serde_json::from_slice(&bytes).expect("json array");
                assert_eq!(rows.len() as u64, ORDERS);
                assert_eq!(rows[0]["customer"], "customer-07920");
            }
            _ => assert_eq!(bytes.iter().filter(|b| **b == b'\n').count() as u64, ORDERS),
        }
    }
}

/// The SQL Lab's orders as an Excel workbook over HTTP, read back with
/// `calamine` (not byte for byte: a workbook records when it was made).
#[cfg(feature = "xlsx")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_lab_exports_an_xlsx_workbook() {
    use calamine::{Data, Reader};
    let (server, _) = sql_server().await;
    let (status, created) = server
        .post(
            "tableExport",
            "alice",
            "SELECT o.id, o.amount, c.name AS customer FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id",
            json!({ "resultType": "xlsx", "asyncAfterSeconds": 60 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(attr(&created, "resultType"), "XLSX");
    assert_eq!(attr(&created, "status"), "COMPLETE", "{created}");
    let url = attr(&created, "result")["url"].as_str().expect("url");
    assert!(url.ends_with(".xlsx"), "{url}");
    let response = server
        .request(Method::GET, url, Some("alice"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    let bytes = response.bytes().await.expect("bytes");
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("xlsx");
    let range = book.worksheet_range("Sheet1").expect("sheet");
    let rows: Vec<&[Data]> = range.rows().collect();
    assert_eq!(rows.len() as u64, ORDERS + 1);
    assert_eq!(
        rows[0],
        [
            Data::String("id".into()),
            Data::String("amount".into()),
            Data::String("customer".into())
        ]
    );
    assert!(
        matches!(rows[1][0], Data::Float(f) if f == 1.0),
        "{:?}",
        rows[1]
    );
    assert_eq!(rows[1][2], Data::String("customer-07920".into()));
}

/// The SQL Lab's orders as Parquet over HTTP, read back with the
/// `parquet` crate's reader.
#[cfg(feature = "arrow")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_lab_exports_parquet() {
    let (server, _) = sql_server().await;
    let (status, created) = server
        .post(
            "tableExport",
            "alice",
            "SELECT o.id, c.name AS customer FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id",
            json!({ "resultType": "parquet", "asyncAfterSeconds": 60 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(attr(&created, "resultType"), "PARQUET");
    assert_eq!(attr(&created, "status"), "COMPLETE", "{created}");
    let url = attr(&created, "result")["url"].as_str().expect("url");
    assert!(url.ends_with(".parquet"), "{url}");
    let response = server
        .request(Method::GET, url, Some("alice"))
        .send()
        .await
        .expect("download");
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    let bytes = response.bytes().await.expect("bytes");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("a Parquet file")
        .build()
        .expect("reader");
    let mut rows = 0;
    let mut first = None;
    for batch in reader {
        let batch = batch.expect("batch");
        if first.is_none() {
            use arrow_array::cast::AsArray;
            let customer = batch.column(1).as_string::<i32>().value(0).to_owned();
            first = Some((batch.schema().field(0).data_type().clone(), customer));
        }
        rows += batch.num_rows() as u64;
    }
    assert_eq!(rows, ORDERS);
    assert_eq!(
        first,
        Some((arrow_schema::DataType::Int64, "customer-07920".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_answer_206_and_416() {
    let (server, _) = sql_server().await;
    let (_, created) = server
        .post(
            "tableExport",
            "alice",
            "SELECT * FROM customers",
            json!({ "asyncAfterSeconds": 30 }),
        )
        .await;
    let url = attr(&created, "result")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let whole = server
        .request(Method::GET, &url, Some("alice"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let len = whole.len();
    assert!(len > 1000);
    let get = |range: String| {
        let request = server
            .request(Method::GET, &url, Some("alice"))
            .header("Range", range);
        async move {
            let response = request.send().await.expect("get");
            let status = response.status();
            let content_range = response
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (
                status,
                content_range,
                response.bytes().await.expect("bytes"),
            )
        }
    };
    let (status, range, body) = get("bytes=0-9".into()).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.as_deref(), Some(format!("bytes 0-9/{len}").as_str()));
    assert_eq!(body, whole.slice(0..10));
    let (status, range, body) = get("bytes=-7".into()).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range, Some(format!("bytes {}-{}/{len}", len - 7, len - 1)));
    assert_eq!(body, whole.slice(len - 7..));
    let (status, _, body) = get(format!("bytes=100-{}", len + 500)).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, whole.slice(100..));
    let (status, _, body) = get(format!("bytes={}-", len - 1)).await;
    assert_eq!(
        (status, body),
        (StatusCode::PARTIAL_CONTENT, whole.slice(len - 1..))
    );
    for unsatisfiable in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 9),
        "bytes=-0".into(),
    ] {
        let (status, range, body) = get(unsatisfiable.clone()).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{unsatisfiable}");
        assert_eq!(range, Some(format!("bytes */{len}")));
        let error: Value = serde_json::from_slice(&body).expect("error document");
        assert_eq!(error_code(&error), "range_not_satisfiable");
    }
    // Ranges a server may ignore: the whole file.
    for ignored in ["bytes=9-2", "bytes=0-1,5-6", "lines=1-2", "bytes=x-y"] {
        let (status, range, body) = get(ignored.into()).await;
        assert_eq!(
            (status, range, body.len()),
            (StatusCode::OK, None, len),
            "{ignored}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_long_sql_query_interrupts_sqlite() {
    let (server, executor) = sql_server().await;
    let (status, created) = server
        .post(
            "asyncQuery",
            "alice",
            SLOW,
            json!({ "asyncAfterSeconds": 0 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(attr(&created, "status"), "PROCESSING");
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    // Real SQLite work on a real thread: wait (bounded) for it to start.
    assert_eq!(
        running_after_a_while(&executor, 1).await,
        1,
        "the statement never started"
    );
    let cancel = json!({ "data": { "type": "asyncQuery", "id": id, "attributes": { "status": "CANCELLED" } } });
    let (status, cancelled) = server
        .send(
            Method::PATCH,
            &format!("/asyncQuery/{id}"),
            "alice",
            Some(cancel.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(attr(&cancelled, "status"), "CANCEL_COMPLETE");
    assert_eq!(cancelled["meta"]["cancelled"], true);
    // The statement itself stops: SQLite was interrupted (the cross join
    // would otherwise run for minutes).
    assert_eq!(
        running_after_a_while(&executor, 0).await,
        0,
        "the SQLite statement kept running"
    );
    // Cancelling again is a no-op that says so.
    let (status, again) = server
        .send(
            Method::PATCH,
            &format!("/asyncQuery/{id}"),
            "alice",
            Some(cancel),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["meta"]["cancelled"], false);
    assert_eq!(attr(&again, "status"), "CANCEL_COMPLETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_see_only_their_own_jobs_and_admins_see_all() {
    let (server, _) = sql_server().await;
    let (_, created) = server
        .post("tableExport", "alice", "SELECT * FROM regions", json!({}))
        .await;
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    let url = attr(&created, "result")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let (_, bobs) = server
        .post("asyncQuery", "bob", "SELECT 2 AS two", json!({}))
        .await;
    let bob_id = bobs["data"]["id"].as_str().expect("id").to_owned();

    let answer = server
        .send(Method::GET, &format!("/tableExport/{id}"), "bob", None)
        .await;
    refused(&answer, StatusCode::NOT_FOUND, "not_found");
    let cancel = json!({ "data": { "type": "tableExport", "id": id, "attributes": { "status": "CANCELLED" } } });
    let (status, _) = server
        .send(
            Method::PATCH,
            &format!("/tableExport/{id}"),
            "bob",
            Some(cancel),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.send(Method::GET, &url, "bob", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An unknown id gets exactly the same answer.
    let unknown = uuid::Uuid::new_v4();
    let answer = server
        .send(Method::GET, &format!("/tableExport/{unknown}"), "bob", None)
        .await;
    refused(&answer, StatusCode::NOT_FOUND, "not_found");

    let (status, _) = server
        .send(Method::GET, &format!("/tableExport/{id}"), "root", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = server
        .request(Method::GET, &url, Some("root"))
        .header("X-Roles", "admin")
        .send()
        .await
        .expect("admin download");
    assert_eq!(response.status(), StatusCode::OK);

    // Events: each sees their own, the admin everything.
    let jobs_in = |events: &Value| -> Vec<String> {
        let mut ids: Vec<String> = events["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        e["attributes"]["jobId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.dedup();
        ids
    };
    let (_, alices) = server
        .send(Method::GET, "/asyncEvents", "alice", None)
        .await;
    let (_, bobs) = server.send(Method::GET, "/asyncEvents", "bob", None).await;
    let (_, roots) = server.send(Method::GET, "/asyncEvents", "root", None).await;
    assert_eq!(jobs_in(&alices), std::slice::from_ref(&id));
    assert_eq!(jobs_in(&bobs), std::slice::from_ref(&bob_id));
    assert_eq!(jobs_in(&roots), [id, bob_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_polled_by_cursor() {
    let (server, _) = sql_server().await;
    let (_, first) = server
        .send(Method::GET, "/asyncEvents", "alice", None)
        .await;
    assert_eq!(first["data"], json!([]));
    let cursor = first["meta"]["lastId"].as_str().expect("cursor").to_owned();
    let (_, created) = server
        .post("asyncQuery", "alice", "SELECT 1 AS one", json!({}))
        .await;
    let id = created["data"]["id"].as_str().expect("id");
    let (_, page) = server
        .send(
            Method::GET,
            &format!("/asyncEvents?last_id={cursor}&limit=1"),
            "alice",
            None,
        )
        .await;
    let events = page["data"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["attributes"]["jobId"], id);
    assert_eq!(events[0]["attributes"]["status"], "PROCESSING");
    let next = page["meta"]["lastId"].as_str().expect("cursor");
    let (_, page) = server
        .send(
            Method::GET,
            &format!("/asyncEvents?last_id={next}"),
            "alice",
            None,
        )
        .await;
    let statuses: Vec<&Value> = page["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["attributes"]["status"])
        .collect();
    assert_eq!(statuses, [&json!("COMPLETE")]);
    assert_eq!(page["meta"]["missed"], false);
    let caught_up = page["meta"]["lastId"].clone();
    assert_eq!(page["meta"]["newest"], caught_up);
    // Bob's job neither appears in alice's stream nor moves her cursor.
    server
        .post("asyncQuery", "bob", "SELECT 2 AS two", json!({}))
        .await;
    let (_, after_bob) = server
        .send(
            Method::GET,
            &format!(
                "/asyncEvents?last_id={}",
                caught_up.as_str().expect("cursor")
            ),
            "alice",
            None,
        )
        .await;
    assert_eq!(after_bob["data"], json!([]));
    assert_eq!(after_bob["meta"]["lastId"], caught_up);
    assert_eq!(after_bob["meta"]["newest"], caught_up);
    for bad in [
        "last_id=abc",
        "last_id=-1",
        "last_id=",
        "limit=x",
        "limit=0",
    ] {
        let (status, answer) = server
            .send(Method::GET, &format!("/asyncEvents?{bad}"), "alice", None)
            .await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_parameter"),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_json_api_error_with_the_right_status() {
    let (server, _) = sql_server().await;
    let id = uuid::Uuid::new_v4();
    let good = submission("asyncQuery", "SELECT 1", json!({}));
    let raw = |method: Method, path: &str, content_type: Option<&str>, body: &str| {
        let mut request = server.request(method, path, Some("alice"));
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        let request = request.body(body.to_owned());
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let ct = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            // A refusal that leaves the body unread must close the
            // connection, or the client would reuse a closing one.
            let unread = [
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ];
            if unread.contains(&status) {
                let connection = response.headers().get("connection");
                assert_eq!(connection.and_then(|v| v.to_str().ok()), Some("close"));
            }
            let body: Value =
                serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body");
            assert_eq!(ct.as_deref(), Some(JSON_API));
            assert_eq!(body["errors"][0]["status"], status.as_str(), "{body}");
            (status, error_code(&body).to_owned(), allow)
        }
    };
    /// Method, path, content type, body, expected status and error code.
    type Case<'a> = (Method, String, Option<&'a str>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), "{not json".into(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), "[]".into(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), r#"{"data":{"type":"asyncQuery"}}"#.into(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELECT 1", json!({"colour": 1})).to_string(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELECT 1", json!({"asyncAfterSeconds": -1})).to_string(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELECT 1", json!({"status": "COMPLETE"})).to_string(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/tableExport".into(), Some(JSON_API), submission("tableExport", "SELECT 1", json!({"resultType": "PDF"})).to_string(), StatusCode::BAD_REQUEST, "invalid_document"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "DROP TABLE orders", json!({})).to_string(), StatusCode::BAD_REQUEST, "invalid_query"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELECT 1; SELECT 2", json!({})).to_string(), StatusCode::BAD_REQUEST, "invalid_query"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELEKT", json!({})).to_string(), StatusCode::BAD_REQUEST, "invalid_query"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("asyncQuery", "SELECT 1", json!({"principalName": "bob"})).to_string(), StatusCode::FORBIDDEN, "forbidden_change"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), submission("tableExport", "SELECT 1", json!({})).to_string(), StatusCode::CONFLICT, "conflict"),
        (Method::PATCH, format!("/asyncQuery/{id}"), Some(JSON_API), json!({"data":{"type":"asyncQuery","id":id,"attributes":{"query":"SELECT 2"}}}).to_string(), StatusCode::FORBIDDEN, "forbidden_change"),
        (Method::PATCH, format!("/asyncQuery/{id}"), Some(JSON_API), json!({"data":{"type":"asyncQuery","id":id,"attributes":{"status":"COMPLETE"}}}).to_string(), StatusCode::FORBIDDEN, "forbidden_change"),
        (Method::PATCH, format!("/asyncQuery/{id}"), Some(JSON_API), json!({"data":{"type":"asyncQuery","id":uuid::Uuid::new_v4(),"attributes":{"status":"CANCELLED"}}}).to_string(), StatusCode::CONFLICT, "conflict"),
        (Method::PATCH, format!("/asyncQuery/{id}"), Some(JSON_API), json!({"data":{"type":"asyncQuery","id":id,"attributes":{"status":"CANCELLED"}}}).to_string(), StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/asyncQuery/123".into(), None, String::new(), StatusCode::BAD_REQUEST, "invalid_id"),
        (Method::GET, format!("/asyncQuery/{id}"), None, String::new(), StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, format!("/export/{id}.csv"), None, String::new(), StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/export/..%2F..%2Fetc%2Fpasswd".into(), None, String::new(), StatusCode::BAD_REQUEST, "invalid_id"),
        (Method::GET, "/nowhere".into(), None, String::new(), StatusCode::NOT_FOUND, "no_route"),
        (Method::DELETE, format!("/asyncQuery/{id}"), None, String::new(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::PUT, "/asyncQuery".into(), None, String::new(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::POST, "/asyncQuery".into(), Some("text/plain"), good.to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (Method::POST, "/asyncQuery".into(), None, good.to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (Method::POST, "/asyncQuery".into(), Some(JSON_API), "x".repeat(2 << 20), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ];
    for (method, path, ct, body, want, code) in cases {
        let (status, got, allow) = raw(method.clone(), &path, ct, &body).await;
        assert_eq!(
            (status, got.as_str()),
            (want, code),
            "{method} {path} {}",
            &body[..body.len().min(200)]
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(allow.is_some(), "405 without Allow");
        }
    }
    // `application/json` is accepted too.
    let (status, _, _) = raw(
        Method::POST,
        "/asyncQuery",
        Some("application/json"),
        &json!({"data":{"type":"asyncQuery","attributes":{"query":"SELEKT"}}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // No principal.
    let response = server
        .request(Method::GET, "/asyncEvents", None)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Exports not finished yet, and queries, have nothing to download.
    let (_, running) = server
        .post(
            "tableExport",
            "alice",
            SLOW,
            json!({"asyncAfterSeconds": 0}),
        )
        .await;
    let running = running["data"]["id"].as_str().expect("id").to_owned();
    let answer = server
        .send(Method::GET, &format!("/export/{running}"), "alice", None)
        .await;
    refused(&answer, StatusCode::NOT_FOUND, "no_result");
    server
        .service
        .cancel(
            &async_query::Principal::new("alice"),
            running.parse().expect("uuid"),
        )
        .await
        .expect("cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_stopping_service_503() {
    let server = serve(
        Config {
            pool_size: 1,
            max_queued: 1,
            ..Config::default()
        },
        |_| Arc::new(ScriptedExecutor::new()),
    )
    .await;
    let block = || submission("asyncQuery", "block", json!({"asyncAfterSeconds": 0}));
    for _ in 0..2 {
        let (status, _) = server
            .send(Method::POST, "/asyncQuery", "alice", Some(block()))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let response = server
        .request(Method::POST, "/asyncQuery", Some("alice"))
        .header("Content-Type", JSON_API)
        .body(block().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    server
        .service
        .shutdown(Duration::ZERO)
        .await
        .expect("shutdown");
    let answer = server
        .send(Method::POST, "/asyncQuery", "alice", Some(block()))
        .await;
    refused(&answer, StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
}

/// A host's own resolver (a closure over the request): its 401 and 403 are
/// JSON:API errors, and the principal it returns is the one jobs belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_resolver_decides_who_the_caller_is() {
    let bearer = |request: &axum::http::request::Parts| {
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AuthError::unauthorized("send a bearer token"))?;
        match token {
            "mallory" => Err(AuthError::forbidden("mallory is banned")),
            // A host bug: a principal without a name.
            "anonymous" => Ok(Principal::new("")),
            name => Ok(Principal::new(name)),
        }
    };
    let dao: Arc<dyn AsyncApiDao> = Arc::new(MemoryDao::new());
    let server = serve_with(
        Config::default(),
        |_| Arc::new(ScriptedExecutor::new()),
        dao,
        bearer,
    )
    .await;
    let post = |token: Option<&str>| {
        let mut request = server
            .request(Method::POST, "/asyncQuery", None)
            .header("Content-Type", JSON_API)
            .body(submission("asyncQuery", "sleep 1", json!({})).to_string());
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let body: Value = response.json_or_null().await;
            (status, body)
        }
    };
    let (status, created) = post(Some("carol")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(attr(&created, "principalName"), "carol");
    refused(
        &post(Some("mallory")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    refused(&post(None).await, StatusCode::UNAUTHORIZED, "unauthorized");
    // The service refuses a nameless principal, whatever the resolver says.
    refused(
        &post(Some("anonymous")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

/// A database that fails answers 503 with a JSON:API error, and the
/// service answers again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_answers_503() {
    let (dao, faults) = FaultyDao::new(Arc::new(MemoryDao::new()));
    let dao: Arc<dyn AsyncApiDao> = Arc::new(dao);
    let server = serve_with(
        Config::default(),
        |_| Arc::new(ScriptedExecutor::new()),
        dao,
        HeaderPrincipal,
    )
    .await;
    let (status, created) = server
        .post("asyncQuery", "alice", "sleep 1", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    faults.fail_always(true);
    let answer = server
        .send(Method::GET, &format!("/asyncQuery/{id}"), "alice", None)
        .await;
    refused(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let answer = server
        .post("asyncQuery", "alice", "sleep 1", json!({}))
        .await;
    refused(&answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    faults.fail_always(false);
    let (status, read) = server
        .send(Method::GET, &format!("/asyncQuery/{id}"), "alice", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(attr(&read, "status"), "COMPLETE");
}

/// An export whose result lifetime ended answers 410 Gone, and its record
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_export_answers_410() {
    use futures::FutureExt;
    let dao = Arc::new(MemoryDao::new());
    let server = serve_with(
        Config::default(),
        |_| Arc::new(ScriptedExecutor::new()),
        Arc::clone(&dao) as Arc<dyn AsyncApiDao>,
        HeaderPrincipal,
    )
    .await;
    let (status, created) = server
        .post(
            "tableExport",
            "alice",
            "rows 3",
            json!({ "resultType": "CSV" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(attr(&created, "status"), "COMPLETE");
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    let url = attr(&created, "result")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let download = server
        .request(Method::GET, &url, Some("alice"))
        .send()
        .await;
    assert_eq!(download.expect("download").status(), StatusCode::OK);

    // What the cleaner does when the lifetime ends (the result's object
    // stays in storage here: the record alone decides).
    let mut keep_none = |records: Vec<async_query::dao::ExpiredRecord>| {
        futures::future::ready(records.iter().map(|r| r.id).collect()).boxed()
    };
    let message = "result expired: kept for 1h";
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let purged = dao
        .expire_results(later, 10, message, &mut keep_none)
        .await
        .expect("expire");
    assert_eq!(purged.deleted, 1);

    let answer = server.send(Method::GET, &url, "alice", None).await;
    refused(&answer, StatusCode::GONE, "result_expired");
    let (status, read) = server
        .send(Method::GET, &format!("/tableExport/{id}"), "alice", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(attr(&read, "status"), "COMPLETE");
    assert_eq!(attr(&read, "result")["url"], Value::Null);
    assert_eq!(attr(&read, "result")["message"], message);
    // Another principal still learns nothing.
    let answer = server.send(Method::GET, &url, "bob", None).await;
    refused(&answer, StatusCode::NOT_FOUND, "not_found");
}

/// With download links, a finished export's `url` downloads without a
/// principal until it expires; a changed or expired link is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_download_links_are_bearer_secrets_that_expire() {
    let links = http::DownloadLinks::new([42u8; 32], Duration::from_secs(600)).expect("links");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FileSystemStorage::new(dir.path()).await.expect("storage");
    let service = AsyncQueryService::builder()
        .storage(Arc::new(storage))
        .executor(Arc::new(ScriptedExecutor::new()))
        .build()
        .expect("service");
    let options = http::HttpOptions::default().with_download_links(links.clone());
    let app = http::router_with_options(service.clone(), HeaderPrincipal, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let created: Value = client
        .post(format!("{base}/tableExport"))
        .header("X-User", "alice")
        .header("Content-Type", JSON_API)
        .body(submission("tableExport", "rows 3", json!({ "resultType": "CSV" })).to_string())
        .send()
        .await
        .expect("post")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("json"))
        .expect("body");
    let id: uuid::Uuid = created["data"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let url = attr(&created, "result")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert!(url.starts_with(&format!("/export/{id}?expires=")), "{url}");
    assert!(url.contains("&signature="), "{url}");

    // No principal needed: the link is the credential.
    let download = client
        .get(format!("{base}{url}"))
        .send()
        .await
        .expect("get");
    assert_eq!(download.status(), StatusCode::OK);
    let body = download.text().await.expect("body");
    assert!(
        body.starts_with("id,name,note") && body.contains("2,name 2"),
        "{body}"
    );
    // Ranges work through a link too, suffix ranges included.
    for (range, want) in [
        ("bytes=0-1", &body[..2]),
        ("bytes=-3", &body[body.len() - 3..]),
    ] {
        let part = client
            .get(format!("{base}{url}"))
            .header("Range", range)
            .send()
            .await
            .expect("get");
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(part.text().await.expect("body"), want, "{range}");
    }
    // Without the link, the principal rules as before.
    let bare = client
        .get(format!("{base}/export/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    let code = |response: Value| error_code(&response).to_owned();
    let get = |path: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let response = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("get");
            let status = response.status();
            let body = response.bytes().await.expect("body");
            (
                status,
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };
    // A changed signature, another job, a later expiry.
    let (path, query) = url.split_once('?').expect("query");
    let (expires, signature) = query.split_once('&').expect("two values");
    let flipped = match signature.as_bytes()[signature.len() - 1] {
        b'0' => format!("{}1", &signature[..signature.len() - 1]),
        _ => format!("{}0", &signature[..signature.len() - 1]),
    };
    let other = AsyncQueryService::clone(&service)
        .submit(
            &Principal::new("bob"),
            SubmitRequest::export("rows 1", ExportFormat::CSV),
        )
        .await
        .expect("bob's export");
    for tampered in [
        format!("{path}?{expires}&{flipped}"),
        format!("/export/{}?{query}", other.id),
        format!("{path}?expires=99999999999&{signature}"),
    ] {
        let (status, answer) = get(tampered.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{tampered}");
        assert_eq!(code(answer), "link_invalid", "{tampered}");
    }
    // Expired: signed as if handed out an hour ago.
    let old = links.sign(id, chrono::Utc::now() - chrono::TimeDelta::hours(1));
    let (status, answer) = get(format!("{path}?{old}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(answer), "link_expired");
    // Half a link is not a valid one.
    let (status, answer) = get(format!("{path}?{expires}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(answer), "link_invalid");
}

/// `docs/openapi.json` describes exactly the router's routes and methods,
/// and each of them answers (not "no route", not 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_matches_the_router() {
    let spec: Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).expect("openapi.json is JSON");
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let mut described: Vec<(String, Vec<String>)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let mut methods: Vec<String> = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| ["get", "post", "patch", "put", "delete"].contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            methods.sort();
            (path.clone(), methods)
        })
        .collect();
    described.sort();
    let mut routed: Vec<(String, Vec<String>)> = http::ROUTES
        .iter()
        .map(|(path, methods)| {
            let mut methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            methods.sort();
            (path.to_string(), methods)
        })
        .collect();
    routed.sort();
    assert_eq!(
        described, routed,
        "docs/openapi.json and http::ROUTES differ"
    );

    // ROUTES is what the router really serves.
    let server = serve(Config::default(), |_| Arc::new(ScriptedExecutor::new())).await;
    for (path, methods) in routed {
        let path = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        for method in methods {
            let method: Method = method.parse().expect("method");
            let response = server
                .request(method.clone(), &path, Some("alice"))
                .header("Content-Type", JSON_API)
                .body("{}")
                .send()
                .await
                .expect("send");
            let status = response.status();
            let streams = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            // An event stream stays open: its answer is its status.
            let body: Value = if streams {
                Value::Null
            } else {
                response.json_or_null().await
            };
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && error_code(&body) != "no_route",
                "{method} {path} is described but not routed ({status})"
            );
        }
    }
}

trait JsonOrNull {
    async fn json_or_null(self) -> Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> Value {
        let bytes = self.bytes().await.unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

mod fuzz {
    //! Random requests: every answer is a well-formed JSON:API document
    //! (or a download), never a 5xx, never a hang.

    use super::*;
    use proptest::prelude::*;

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::PATCH),
            Just(Method::DELETE),
            Just(Method::PUT),
            Just(Method::HEAD),
            Just(Method::OPTIONS),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(uuid::Uuid::nil().to_string()),
            Just("00000000-0000-0000-0000-000000000001.csv".to_string()),
            "[a-zA-Z0-9%._~-]{0,40}",
            "\\PC{0,8}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just("/asyncQuery"),
                Just("/tableExport"),
                Just("/export"),
                Just("/asyncEvents"),
                Just(""),
                Just("/asyncQuery/x/y"),
            ],
            proptest::option::of(segment()),
            proptest::option::of("[a-z_]{1,8}=[-0-9a-z%]{0,25}"),
        )
            .prop_map(|(base, segment, query)| {
                let mut path = base.to_string();
                if let Some(s) = segment {
                    path.push('/');
                    path.push_str(&s);
                }
                if path.is_empty() {
                    path.push('/');
                }
                if let Some(q) = query {
                    path.push('?');
                    path.push_str(&q);
                }
                path
            })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,20}".prop_map(Value::from),
            prop_oneof![
                Just("QUEUED"),
                Just("CANCELLED"),
                Just("asyncQuery"),
                Just("tableExport"),
                Just("sleep 1"),
                Just("rows 3"),
                Just("CSV"),
                Just("00000000-0000-0000-0000-000000000000"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("data".to_string()),
                        Just("type".to_string()),
                        Just("id".to_string()),
                        Just("attributes".to_string()),
                        Just("query".to_string()),
                        Just("status".to_string()),
                        Just("asyncAfterSeconds".to_string()),
                        Just("resultType".to_string()),
                        "[a-zA-Z]{1,8}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            json_value().prop_map(|v| json!({ "data": v }).to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(JSON_API.to_string()),
            Just("application/json".to_string()),
            Just("bytes=0-3".to_string()),
            Just("bytes=-2".to_string()),
            "[ -~]{0,30}",
        ]
    }

    #[test]
    fn random_requests_get_well_formed_answers() {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(300);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime.block_on(serve(
            Config {
                max_async_after: Duration::from_secs(1),
                ..Config::default()
            },
            |_| Arc::new(ScriptedExecutor::new()),
        ));
        // Something to download, so export paths reach the storage too.
        runtime.block_on(async {
            let alice = async_query::Principal::new("alice");
            server
                .service
                .submit(
                    &alice,
                    SubmitRequest::export("rows 5", ExportFormat::CSV)
                        .with_id(uuid::Uuid::from_u128(1)),
                )
                .await
                .expect("export");
        });
        let config = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(
            method in method(),
            path in path(),
            body in body(),
            user in proptest::option::of(prop_oneof![Just("alice".to_string()), "[ -~]{0,12}"]),
            content_type in proptest::option::of(header_value()),
            range in proptest::option::of(header_value()),
        )| {
            runtime.block_on(async {
                let mut request = server.request(method.clone(), &path, None).body(body);
                if let Some(user) = &user {
                    request = request.header("X-User", user.as_str());
                }
                if let Some(ct) = &content_type {
                    request = request.header("Content-Type", ct.as_str());
                }
                if let Some(range) = &range {
                    request = request.header("Range", range.as_str());
                }
                let response = tokio::time::timeout(Duration::from_secs(10), request.send())
                    .await
                    .expect("the router hung")
                    .expect("transport");
                let status = response.status();
                prop_assert!(!status.is_server_error(), "{method} {path}: {status}");
                let is_download = status.is_success()
                    && response.headers().get("content-disposition").is_some();
                let bytes = response.bytes().await.expect("body");
                if method != Method::HEAD && !is_download {
                    let document: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| TestCaseError::fail(format!("{method} {path}: {status}, not JSON: {e}")))?;
                    let well_formed = if status.is_success() {
                        document.get("data").is_some()
                    } else {
                        document["errors"][0]["status"] == status.as_str()
                    };
                    prop_assert!(well_formed, "{method} {path}: {status} {document}");
                }
                Ok(())
            })?;
        });
    }
}

/// A 201 says where the new job is (JSON:API: `Location`), as the client
/// addressed the router: at the root, and nested under a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_jobs_have_a_location_that_reads_them_back() {
    for prefix in ["", "/api/v1"] {
        let server = serve_nested(
            prefix,
            Config::default(),
            |_| Arc::new(ScriptedExecutor::new()),
            Arc::new(MemoryDao::new()),
            HeaderPrincipal,
        )
        .await;
        for kind in ["asyncQuery", "tableExport"] {
            let response = server
                .request(Method::POST, &format!("/{kind}"), Some("alice"))
                .header("Content-Type", JSON_API)
                .body(submission(kind, "sleep 1", json!({})).to_string())
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), StatusCode::CREATED);
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .expect("a Location header");
            let text = response.text().await.expect("body");
            let created: Value = serde_json::from_str(&text).expect("document");
            let id = created["data"]["id"].as_str().expect("id");
            assert_eq!(location, format!("{prefix}/{kind}/{id}"));
            let path = location.strip_prefix(prefix).expect("under the prefix");
            let (status, read) = server.send(Method::GET, path, "alice", None).await;
            assert_eq!(status, StatusCode::OK, "{location}");
            assert_eq!(read["data"]["id"], created["data"]["id"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_listed_by_collection_filtered_and_paged_by_cursor() {
    let (server, _) = sql_server().await;
    let mut queries = Vec::new();
    for n in 1..=3 {
        let (status, created) = server
            .post(
                "asyncQuery",
                "alice",
                &format!("SELECT {n} AS n"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        queries.push(created["data"]["id"].as_str().expect("id").to_owned());
    }
    let (_, export) = server
        .post(
            "tableExport",
            "alice",
            "SELECT 1 AS one",
            json!({ "resultType": "CSV", "asyncAfterSeconds": 10 }),
        )
        .await;
    let export = export["data"]["id"].as_str().expect("id").to_owned();
    let (_, bobs) = server
        .post("asyncQuery", "bob", "SELECT 4 AS n", json!({}))
        .await;
    let bobs = bobs["data"]["id"].as_str().expect("id").to_owned();
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|job| job["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let get = |path: String, user: &'static str| {
        let server = &server;
        async move { server.send(Method::GET, &path, user, None).await }
    };

    // Alice's queries, newest first, two per page, following links.next.
    let newest_first: Vec<String> = queries.iter().rev().cloned().collect();
    let (status, first) = get("/asyncQuery?page[size]=2".into(), "alice").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(ids(&first), newest_first[..2]);
    assert_eq!(first["meta"]["pageSize"], 2);
    let (_, default) = get("/asyncQuery".into(), "alice").await;
    assert_eq!(default["meta"]["pageSize"], 100, "the default page size");
    let (_, huge) = get("/asyncQuery?page[size]=5000".into(), "alice").await;
    assert_eq!(huge["meta"]["pageSize"], 1000, "lowered to the largest");
    assert_eq!(first["data"][0]["attributes"]["status"], "COMPLETE");
    let next = first["links"]["next"]
        .as_str()
        .expect("a next page")
        .to_owned();
    assert!(next.starts_with("/asyncQuery?"), "{next}");
    let (_, second) = get(next, "alice").await;
    assert_eq!(ids(&second), newest_first[2..]);
    assert_eq!(second["links"]["next"], Value::Null, "the last page");
    let (_, oldest) = get("/asyncQuery?sort=createdOn".into(), "alice").await;
    assert_eq!(ids(&oldest), queries);

    // Each collection lists its own kind; bob sees his; an admin everyone's.
    let (_, exports) = get("/tableExport".into(), "alice").await;
    assert_eq!(ids(&exports), [export]);
    let (_, of_bob) = get("/asyncQuery".into(), "bob").await;
    assert_eq!(ids(&of_bob), std::slice::from_ref(&bobs));
    let (_, everyone) = get("/asyncQuery".into(), "root").await;
    assert_eq!(ids(&everyone).len(), 4);
    let (_, only_bob) = get("/asyncQuery?filter[principalName]=bob".into(), "root").await;
    assert_eq!(ids(&only_bob), [bobs]);
    let (_, not_for_alice) = get("/asyncQuery?filter[principalName]=bob".into(), "alice").await;
    assert_eq!(
        ids(&not_for_alice),
        newest_first,
        "only admins choose whose jobs"
    );
    let (_, failed) = get(
        "/asyncQuery?filter[status]=FAILURE,TIMEDOUT".into(),
        "alice",
    )
    .await;
    assert_eq!(failed["data"], json!([]));
    let (_, done) = get("/asyncQuery?filter%5Bstatus%5D=COMPLETE".into(), "alice").await;
    assert_eq!(ids(&done), newest_first, "percent-encoded names work too");
    let (_, none_yet) = get(
        "/asyncQuery?filter[createdBefore]=2000-01-01T00:00:00Z".into(),
        "alice",
    )
    .await;
    assert_eq!(none_yet["data"], json!([]));

    for bad in [
        "filter[status]=NOPE",
        "sort=name",
        "page[size]=0",
        "filter[createdFrom]=yesterday",
        "filter[colour]=red",
    ] {
        let answer = get(format!("/asyncQuery?{bad}"), "alice").await;
        refused(&answer, StatusCode::BAD_REQUEST, "invalid_parameter");
    }
    let forged = get("/asyncQuery?page[cursor]=forged".into(), "alice").await;
    refused(&forged, StatusCode::BAD_REQUEST, "invalid_parameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_wait_timeout_cancel_ends_a_query_still_running_after_its_wait() {
    let (server, executor) = sql_server().await;
    let (status, answer) = server
        .post(
            "asyncQuery",
            "alice",
            SLOW,
            json!({ "asyncAfterSeconds": 0.5, "onWaitTimeout": "CANCEL" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(attr(&answer, "status"), "CANCEL_COMPLETE");
    assert_eq!(
        running_after_a_while(&executor, 0).await,
        0,
        "the SQLite statement was interrupted"
    );
    let (status, answer) = server
        .post(
            "asyncQuery",
            "alice",
            "SELECT 1 AS one",
            json!({ "asyncAfterSeconds": 5, "onWaitTimeout": "CANCEL" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(attr(&answer, "status"), "COMPLETE", "finished in time");
    for (attributes, code) in [
        (json!({ "onWaitTimeout": "LATER" }), "invalid_document"),
        (
            json!({ "asyncAfterSeconds": 0, "onWaitTimeout": "CANCEL" }),
            "invalid_query",
        ),
    ] {
        let answer = server
            .post("asyncQuery", "alice", "SELECT 1", attributes)
            .await;
        refused(&answer, StatusCode::BAD_REQUEST, code);
    }
}

/// What `docs/openapi.json` states as patterns is what the router accepts:
/// ids only in their hyphenated form, download names with a known
/// extension or none, cursors and status lists exactly as handed out, and
/// a `data.id` that is a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_exactly_what_the_openapi_description_says() {
    let (server, _) = sql_server().await;
    let id = uuid::Uuid::new_v4();
    let malformed = [
        (format!("/asyncQuery/{}", id.simple()), "invalid_id"),
        (format!("/asyncQuery/{{{id}}}"), "invalid_id"),
        (format!("/export/{id}.txt"), "invalid_id"),
        (
            format!("/asyncQuery?page[cursor]=%2B1_{}", id.simple()),
            "invalid_parameter",
        ),
        (
            format!("/asyncQuery?page[cursor]=1_{id}"),
            "invalid_parameter",
        ),
        (
            "/asyncQuery?filter[status]=%20QUEUED".to_owned(),
            "invalid_parameter",
        ),
    ];
    for (path, code) in malformed {
        let answer = server.send(Method::GET, &path, "alice", None).await;
        refused(&answer, StatusCode::BAD_REQUEST, code);
    }
    for path in [format!("/asyncQuery/{id}"), format!("/export/{id}.csv")] {
        let answer = server.send(Method::GET, &path, "alice", None).await;
        assert_eq!(answer.0, StatusCode::NOT_FOUND, "{path}: {}", answer.1);
    }
    let cursor = format!("/asyncQuery?page[cursor]=1_{}", id.simple());
    let answer = server.send(Method::GET, &cursor, "alice", None).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    let mut null_id = submission("asyncQuery", "SELECT 1", json!({}));
    null_id["data"]["id"] = Value::Null;
    let answer = server
        .send(Method::POST, "/asyncQuery", "alice", Some(null_id))
        .await;
    refused(&answer, StatusCode::BAD_REQUEST, "invalid_document");
}
