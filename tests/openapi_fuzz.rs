//! `docs/openapi.json` says exactly what the router accepts: schemathesis
//! (from PyPI, in `target/schemathesis-venv`) generates requests from it,
//! valid and invalid, follows its links from `POST` to `GET`, `PATCH` and
//! the download, and checks every answer: no 5xx, valid requests accepted,
//! invalid ones refused, status codes, content types and bodies as
//! described.
//!
//! Without Python or PyPI it is skipped, loudly, unless
//! `ASYNC_QUERY_REQUIRE_SCHEMATHESIS=1` (set by `.ci/run`).
#![cfg(feature = "axum")]

mod common;

use std::sync::Arc;

use async_query::http::{self, HeaderPrincipal};
use async_query::{AsyncQuery, AsyncQueryService, JobKind, MemoryStorage};
use async_query::{BoxError, ExecutionContext, QueryExecutor, QueryOutput, RecordStream};

/// Answers every query at once: the fuzzer's queries are random text, and
/// what is checked here is the HTTP contract, not an engine.
struct Echo;

#[async_trait::async_trait]
impl QueryExecutor for Echo {
    async fn execute(
        &self,
        job: &AsyncQuery,
        _: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        Ok(match job.kind {
            JobKind::Query => QueryOutput::body("[]", 0),
            JobKind::TableExport { .. } => QueryOutput::Records(RecordStream {
                columns: vec!["n".into()],
                column_types: Vec::new(),
                records: Box::pin(futures::stream::iter(
                    (0..3).map(|n| Ok(vec![serde_json::json!(n)])),
                )),
            }),
        })
    }
}

/// The seed schemathesis draws from: a run is repeatable. Change it (or
/// set `ASYNC_QUERY_SCHEMATHESIS_SEED`) to explore further.
const SEED: &str = "20261125";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_mismatch_and_no_server_error() {
    let schemathesis = match common::venv::tool("schemathesis-venv", "schemathesis", "schemathesis")
    {
        Ok(tool) => tool,
        Err(why) => {
            if std::env::var("ASYNC_QUERY_REQUIRE_SCHEMATHESIS").is_ok_and(|v| v == "1") {
                panic!("ASYNC_QUERY_REQUIRE_SCHEMATHESIS=1 but schemathesis is missing: {why}");
            }
            eprintln!("\n*** SKIPPED: schemathesis is not available ({why}) ***\n");
            return;
        }
    };
    let service = AsyncQueryService::builder()
        .storage(Arc::new(MemoryStorage::new()))
        .executor(Arc::new(Echo))
        .build()
        .expect("service builds");
    let app = http::router(service.clone(), HeaderPrincipal);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let seed = std::env::var("ASYNC_QUERY_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    // Its cache (`.schemathesis/`) goes under `target/`, not the tree.
    let scratch = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
    let run = tokio::process::Command::new(&schemathesis)
        .current_dir(scratch)
        .args([
            "--config-file",
            config,
            "run",
            schema,
            "--url",
            &base,
            "--checks",
            "all",
        ])
        .args(["--max-examples", "40", "--seed", &seed, "--no-color"])
        .args(["-H", "X-User: alice"])
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found problems (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // It did test every operation, and the links between them.
    assert!(report.contains("Tested: 11"), "{report}");
    service
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .expect("shutdown");
}
