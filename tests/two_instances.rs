//! Two SQL Lab instances (`examples/support/lab_server.rs`) as two real
//! processes over HTTP, sharing a PostgreSQL job store and an
//! S3-compatible bucket (moto): jobs submitted on A are polled, cancelled,
//! followed through `/asyncEvents` and downloaded on B; A is killed with
//! SIGKILL in the middle of an export, which then ends `TIMEDOUT` through B
//! while no object, partial or not, ever appears under its key.
//!
//! Needs `ASYNC_QUERY_TEST_POSTGRES_URL` and an S3-compatible server (see
//! `tests/common/moto.rs`); skipped loudly without them.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "s3"
))]

#[path = "../examples/support/sql_lab.rs"]
mod lab;
#[path = "../examples/support/lab_server.rs"]
mod lab_server;

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_query::http::JSON_API;
use async_query::{AsyncApiDao, Config};
use lab_server::{Lab, LabSettings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// Rows of the demo `orders` table: a second to build, and a cross join of
/// it streams for far longer than the test runs.
const ORDERS: u64 = 20_000;
/// The instances' lease and sweep interval: a dead instance's jobs end
/// within about their sum.
const LEASE: Duration = Duration::from_secs(2);
const SWEEP: Duration = Duration::from_millis(250);
/// Signs download links on both instances.
const LINK_KEY: &str = "two-instances-test-key-0123456789abcdef";

/// An instance: `LabSettings::from_env`, as the example reads them, with a
/// short lease and sweep so that the crash test is quick.
#[test]
#[ignore = "run by two_instances_serve_one_api as a separate process"]
fn lab_instance() {
    let mut settings = LabSettings::from_env().expect("SQL_LAB_* settings");
    let instance: Uuid = std::env::var("AQ_LAB_INSTANCE")
        .expect("AQ_LAB_INSTANCE")
        .parse()
        .expect("an instance id");
    settings.config = Config {
        instance_id: instance,
        lease: LEASE,
        cleaner_interval: SWEEP,
        ..settings.config
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let lab = Lab::start(settings).await.expect("the lab starts");
        println!("listening on http://{} ({})", lab.addr, lab.describe);
        lab.serve(std::future::pending())
            .await
            .expect("the lab serves");
    });
}

/// A running instance process, killed on drop.
struct Instance {
    base: String,
    id: Uuid,
    child: Child,
}

impl Instance {
    fn start(env: &[(&str, String)]) -> Instance {
        let id = Uuid::new_v4();
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "lab_instance",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("AQ_LAB_INSTANCE", id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn an instance");
        let stdout = child.stdout.take().expect("piped");
        let (found, base) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have written "test lab_instance ... " first.
                if let Some((_, rest)) = line.split_once("listening on ")
                    && let Some(found) = found.take()
                {
                    let base = rest.split_whitespace().next().unwrap_or_default();
                    let _ = found.send(base.to_owned());
                }
            }
        });
        match base.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => Instance { base, id, child },
            Err(_) => {
                let _ = child.kill();
                panic!("the instance did not start listening within 120 s");
            }
        }
    }

    /// SIGKILL, no clean-up of any kind.
    fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON:API over HTTP, as `user`.
struct Api {
    http: reqwest::Client,
}

impl Api {
    async fn send(
        &self,
        method: Method,
        url: &str,
        user: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url).header("X-User", user);
        if let Some(body) = body {
            request = request
                .header("Content-Type", JSON_API)
                .body(body.to_string());
        }
        let response = request.send().await.expect("the instance answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let document = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, document)
    }

    /// Submits a `kind` job on `on` for alice; answers its document.
    async fn submit(&self, on: &Instance, kind: &str, query: &str, extra: Value) -> Value {
        let mut attributes = json!({ "query": query, "queryType": "SQL", "asyncAfterSeconds": 0 });
        if let (Some(a), Some(extra)) = (attributes.as_object_mut(), extra.as_object()) {
            a.extend(extra.clone());
        }
        let document = json!({ "data": { "type": kind, "attributes": attributes } });
        let (status, created) = self
            .send(
                Method::POST,
                &format!("{}/{kind}", on.base),
                "alice",
                Some(document),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    async fn read(&self, on: &Instance, kind: &str, id: &str) -> Value {
        let (status, document) = self
            .send(
                Method::GET,
                &format!("{}/{kind}/{id}", on.base),
                "alice",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{document}");
        document
    }

    /// Polls the job on `on` until its status is `want`; fails on any
    /// other final status, or after a minute.
    async fn poll_until(&self, on: &Instance, kind: &str, id: &str, want: &str) -> Value {
        let start = Instant::now();
        loop {
            let document = self.read(on, kind, id).await;
            let status = status_of(&document);
            if status == want {
                return document;
            }
            assert!(
                matches!(status, "QUEUED" | "PROCESSING" | "CANCELLED"),
                "{id} ended {status}, not {want}: {document}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id} still {status} after a minute"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event alice (or `user`) may see on `on`, from the start.
    async fn events(&self, on: &Instance, user: &str) -> Value {
        let (status, page) = self
            .send(
                Method::GET,
                &format!("{}/asyncEvents?last_id=0", on.base),
                user,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    async fn bytes(&self, url: &str, user: Option<&str>) -> (StatusCode, bytes::Bytes) {
        let mut request = self.http.get(url);
        if let Some(user) = user {
            request = request.header("X-User", user);
        }
        let response = request.send().await.expect("the download answers");
        (response.status(), response.bytes().await.expect("a body"))
    }
}

/// The value of `series` in a Prometheus text page (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn status_of(document: &Value) -> &str {
    document["data"]["attributes"]["status"]
        .as_str()
        .unwrap_or_default()
}

fn id(document: &Value) -> String {
    document["data"]["id"].as_str().expect("an id").to_owned()
}

/// The statuses `page` lists for `job`, in order.
/// The status changes of `job` in an event page; progress events (the
/// SQL Lab's exports report their rows) are left out, after checking that
/// they go from and to `PROCESSING`.
fn statuses_of<'a>(page: &'a Value, job: &str) -> Vec<&'a str> {
    let events = page["data"].as_array().expect("events").iter();
    let (progress, changes): (Vec<&Value>, Vec<&Value>) = events
        .filter(|e| e["attributes"]["jobId"] == job)
        .partition(|e| !e["attributes"]["progress"].is_null());
    for event in progress {
        let attributes = &event["attributes"];
        assert_eq!(attributes["status"], "PROCESSING", "{event}");
        assert_eq!(attributes["previousStatus"], "PROCESSING", "{event}");
    }
    changes
        .into_iter()
        .filter_map(|e| e["attributes"]["status"].as_str())
        .collect()
}

async fn lease_owner(dao: &dyn AsyncApiDao, id: &str) -> Option<Uuid> {
    let job = dao
        .get(id.parse().expect("a uuid"))
        .await
        .expect("read the record")
        .expect("the record exists");
    job.lease.map(|l| l.owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_serve_one_api() {
    let Some(db) = common::pg::fresh().await else {
        return;
    };
    let Some(s3) = common::moto::start() else {
        return;
    };
    let s3 = Arc::new(s3);
    let (bucket, _) = s3.s3_bucket().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo.db");
    lab::ensure_demo_database(&demo, ORDERS).expect("the demo database");
    let env = [
        ("SQL_LAB_ADDR", "127.0.0.1:0".to_owned()),
        ("SQL_LAB_DEMO", demo.display().to_string()),
        ("SQL_LAB_ROWS", ORDERS.to_string()),
        ("SQL_LAB_JOBS", db.url.clone()),
        ("SQL_LAB_RESULTS", format!("s3://{bucket}/sql-lab")),
        ("SQL_LAB_LINK_KEY", LINK_KEY.to_owned()),
        ("AWS_ENDPOINT", s3.endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ];
    let mut a = Instance::start(&env);
    let b = Instance::start(&env);
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
    };

    // A query submitted on A runs there and is read, finished, on B.
    let started = Instant::now();
    let query = api
        .submit(
            &a,
            "asyncQuery",
            "SELECT count(*) AS n FROM orders",
            json!({}),
        )
        .await;
    let query_id = id(&query);
    let done = api
        .poll_until(&b, "asyncQuery", &query_id, "COMPLETE")
        .await;
    let query_seen = started.elapsed();
    let body = done["data"]["attributes"]["result"]["responseBody"]
        .as_str()
        .expect("an inline result");
    assert_eq!(
        serde_json::from_str::<Value>(body).expect("JSON rows"),
        json!([{ "n": ORDERS }])
    );
    // Each instance serves its own metrics: A stored the query, and the
    // instance that ran it counted it finished, once between them.
    let mut finished = 0;
    for (instance, submitted) in [(&a, 1), (&b, 0)] {
        let (status, text) = api.bytes(&format!("{}/metrics", instance.base), None).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8_lossy(&text);
        let value = |series: &str| metric(&text, series);
        assert_eq!(
            value(r#"async_query_jobs_submitted{kind="query"}"#),
            submitted,
            "{text}"
        );
        finished += value(r#"async_query_jobs_finished{kind="query",status="COMPLETE"}"#);
    }
    assert_eq!(finished, 1);
    // The floor the figures below are compared with: one read on B.
    let mut reads = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        api.read(&b, "asyncQuery", &query_id).await;
        reads.push(start.elapsed());
    }
    reads.sort();
    let read = reads[reads.len() / 2];

    // An export written by A is downloaded through B, and through the link
    // B hands out (presigned by S3), byte for byte the same.
    let export = api
        .submit(
            &a,
            "tableExport",
            "SELECT * FROM orders ORDER BY id",
            json!({ "resultType": "CSV" }),
        )
        .await;
    let export_id = id(&export);
    assert_eq!(
        lease_owner(&db.dao, &export_id).await,
        Some(a.id),
        "submitted with a free slot, the export runs on A"
    );
    let finished = api
        .poll_until(&b, "tableExport", &export_id, "COMPLETE")
        .await;
    let (status, through_b) = api
        .bytes(&format!("{}/export/{export_id}", b.base), Some("alice"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let rows = common::csv_rows(&through_b);
    assert_eq!(rows.len() as u64, ORDERS);
    assert_eq!(&rows[0][0], "1");
    let link = finished["data"]["attributes"]["result"]["url"]
        .as_str()
        .expect("a download link");
    assert!(
        link.starts_with(&s3.endpoint),
        "the link is presigned by the store: {link}"
    );
    let (status, through_link) = api.bytes(link, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(through_link, through_b);
    let (status, _) = api
        .bytes(&format!("{}/export/{export_id}", b.base), Some("bob"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "bob cannot see alice's export"
    );

    // A long query runs on A and is cancelled through B: A hears of it and
    // interrupts SQLite.
    let slow = api
        .submit(
            &a,
            "asyncQuery",
            "SELECT count(*) FROM orders a JOIN orders b ON a.amount < b.amount",
            json!({}),
        )
        .await;
    let slow_id = id(&slow);
    assert_eq!(status_of(&slow), "PROCESSING");
    assert_eq!(lease_owner(&db.dao, &slow_id).await, Some(a.id));
    let cancel = json!({ "data": { "type": "asyncQuery", "id": slow_id, "attributes": { "status": "CANCELLED" } } });
    let cancelled_at = Instant::now();
    let (status_code, answer) = api
        .send(
            Method::PATCH,
            &format!("{}/asyncQuery/{slow_id}", b.base),
            "alice",
            Some(cancel),
        )
        .await;
    assert_eq!(status_code, StatusCode::OK, "{answer}");
    assert_eq!(answer["meta"]["cancelled"], true);
    api.poll_until(&b, "asyncQuery", &slow_id, "CANCEL_COMPLETE")
        .await;
    let cancel_took = cancelled_at.elapsed();

    // Both instances list the same events, from the one stream in the
    // database; bob sees none of them.
    let (on_a, on_b) = (api.events(&a, "alice").await, api.events(&b, "alice").await);
    assert_eq!(on_a, on_b, "both instances answer the same");
    assert_eq!(statuses_of(&on_b, &query_id), ["PROCESSING", "COMPLETE"]);
    assert_eq!(statuses_of(&on_b, &export_id), ["PROCESSING", "COMPLETE"]);
    assert_eq!(
        statuses_of(&on_b, &slow_id),
        ["PROCESSING", "CANCELLED", "CANCEL_COMPLETE"]
    );
    let for_bob = api.events(&b, "bob").await;
    assert_eq!(for_bob["data"], json!([]));
    assert_eq!(for_bob["meta"]["lastId"], "0");

    // An endless export on A; a watcher lists the bucket all along.
    let endless = api
        .submit(
            &a,
            "tableExport",
            "SELECT a.id, a.product, a.note, b.id AS other FROM orders a, orders b",
            json!({ "resultType": "CSV" }),
        )
        .await;
    let endless_id = id(&endless);
    assert_eq!(lease_owner(&db.dao, &endless_id).await, Some(a.id));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (s3, bucket, stop, endless_id) = (
            Arc::clone(&s3),
            bucket.clone(),
            Arc::clone(&stop),
            endless_id.clone(),
        );
        async move {
            let (mut listings, mut seen) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                seen.extend(
                    s3.keys(&bucket)
                        .await
                        .into_iter()
                        .filter(|k| k.contains(&endless_id)),
                );
                listings += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (listings, seen)
        }
    });
    // Kill A once a part of the export is uploaded: the multipart upload
    // is open, and the export far from done.
    let start = Instant::now();
    while !s3
        .open_uploads(&bucket)
        .await
        .iter()
        .any(|k| k.contains(&endless_id))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the export never started uploading"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&api.read(&b, "tableExport", &endless_id).await),
        "PROCESSING"
    );
    a.kill_9();
    let killed_at = Instant::now();
    let timed_out = api
        .poll_until(&b, "tableExport", &endless_id, "TIMEDOUT")
        .await;
    let recovery = killed_at.elapsed();
    let message = timed_out["data"]["attributes"]["result"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("lease"), "{message}");
    // A sweep or two more, then stop watching.
    tokio::time::sleep(4 * SWEEP).await;
    stop.store(true, Ordering::SeqCst);
    let (listings, seen) = watcher.await.expect("the watcher");
    assert!(listings > 10, "the bucket was listed {listings} times");
    assert_eq!(
        seen,
        Vec::<String>::new(),
        "a partial export became visible"
    );
    assert!(
        !s3.keys(&bucket)
            .await
            .iter()
            .any(|k| k.contains(&endless_id)),
        "no object under the killed export's key"
    );
    // B says there is no result, and still serves A's finished export.
    let (status_code, _) = api
        .bytes(&format!("{}/export/{endless_id}", b.base), Some("alice"))
        .await;
    assert_eq!(status_code, StatusCode::NOT_FOUND);
    let (status_code, again) = api
        .bytes(&format!("{}/export/{export_id}", b.base), Some("alice"))
        .await;
    assert_eq!((status_code, again), (StatusCode::OK, through_b));
    let after = api.events(&b, "alice").await;
    assert_eq!(statuses_of(&after, &endless_id), ["PROCESSING", "TIMEDOUT"]);
    let ratio = |d: Duration| d.as_secs_f64() / read.as_secs_f64();
    println!(
        "two instances (one read on B, the floor: {read:?}): a query on A seen COMPLETE on B \
         after {query_seen:?} ({:.0}x); a cancel on B ended A's query in {cancel_took:?} \
         ({:.0}x); kill -9 of A → TIMEDOUT on B after {recovery:?} ({:.2} of lease {LEASE:?} \
         + sweep {SWEEP:?}); the bucket was listed {listings} times, the killed export's key \
         never seen",
        ratio(query_seen),
        ratio(cancel_took),
        recovery.as_secs_f64() / (LEASE + SWEEP).as_secs_f64(),
    );
}
