//! A real S3-compatible server on 127.0.0.1 for the object-store tests:
//! `moto[server]` from PyPI, in a virtual environment this helper creates
//! (once, under `target/moto-venv`), started on a free port and stopped by
//! its pid when the test is done.
//!
//! - `ASYNC_QUERY_TEST_S3_ENDPOINT=http://127.0.0.1:PORT` uses a server that
//!   is already running instead (it must accept any credentials, as moto
//!   and MinIO in its default set-up do for path-style requests).
//! - Without Python or PyPI the tests are skipped, loudly, unless
//!   `ASYNC_QUERY_REQUIRE_S3=1` (set by `.ci/run`) makes that a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_query::object_store::ObjectStore;
use async_query::object_store::aws::{AmazonS3, AmazonS3Builder};

/// A running S3-compatible server; a started one is killed on drop.
pub struct S3Server {
    pub endpoint: String,
    child: Option<Child>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl S3Server {
    /// Creates a fresh bucket and a store for it.
    pub async fn bucket(&self) -> (String, Arc<dyn ObjectStore>) {
        let (bucket, store) = self.s3_bucket().await;
        (bucket, store)
    }

    /// [`bucket`](Self::bucket), with the S3 client itself (it can also
    /// sign URLs).
    pub async fn s3_bucket(&self) -> (String, Arc<AmazonS3>) {
        let bucket = format!("aq-{}", uuid::Uuid::new_v4().simple());
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            response.status().is_success(),
            "creating bucket {bucket}: {}",
            response.status()
        );
        let store: AmazonS3 = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("S3 client builds");
        (bucket, Arc::new(store))
    }

    /// The XML of `GET /<bucket>?<query>`.
    async fn listing(&self, bucket: &str, query: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}/{bucket}?{query}", self.endpoint))
            .send()
            .await
            .expect("the S3 server answers")
            .text()
            .await
            .expect("a listing")
    }

    /// The multipart uploads still open in `bucket` (S3's
    /// `ListMultipartUploads`), as their keys.
    pub async fn open_uploads(&self, bucket: &str) -> Vec<String> {
        self.listing(bucket, "uploads")
            .await
            .split("<Upload>")
            .skip(1)
            .filter_map(|upload| {
                let start = upload.find("<Key>")? + "<Key>".len();
                let end = upload.find("</Key>")?;
                Some(upload[start..end].to_owned())
            })
            .collect()
    }

    /// The keys of the objects in `bucket`.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        self.listing(bucket, "list-type=2")
            .await
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| Some(rest[..rest.find("</Key>")?].to_owned()))
            .collect()
    }
}

fn skip_or_fail(why: &str) -> Option<S3Server> {
    if std::env::var("ASYNC_QUERY_REQUIRE_S3").is_ok_and(|v| v == "1") {
        panic!("ASYNC_QUERY_REQUIRE_S3=1 but no S3-compatible server: {why}");
    }
    eprintln!(
        "\n*** SKIPPED: no S3-compatible server ({why}); set ASYNC_QUERY_TEST_S3_ENDPOINT \
         or make `python3 -m venv` and PyPI available ***\n"
    );
    None
}

/// An S3-compatible server for one test, or `None` (skipped, loudly).
pub fn start() -> Option<S3Server> {
    if let Ok(endpoint) = std::env::var("ASYNC_QUERY_TEST_S3_ENDPOINT") {
        return Some(S3Server {
            endpoint,
            child: None,
        });
    }
    let server = match super::venv::tool("moto-venv", "moto[server]", "moto_server") {
        Ok(server) => server,
        Err(why) => return skip_or_fail(&why),
    };
    let mut child = match Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return skip_or_fail(&format!("starting {}: {e}", server.display())),
    };
    // moto prints "Running on http://127.0.0.1:PORT" once it listens.
    let stderr = child.stderr.take().expect("piped");
    let (found, endpoint) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://127.0.0.1:") {
                if let Some(found) = found.take() {
                    let _ = found.send(line[at..].trim().to_owned());
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    match endpoint.recv_timeout(deadline - Instant::now()) {
        Ok(endpoint) => Some(S3Server {
            endpoint,
            child: Some(child),
        }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            skip_or_fail("moto_server did not start within 60 s")
        }
    }
}
