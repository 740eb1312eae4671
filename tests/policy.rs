//! A host's submit policy: requests refused (400 or 403) or adjusted
//! before anything is stored.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::policy::{Refusal, SubmitPolicy};
use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQueryService, Error, JobKind, Principal, QueryStatus, SubmitRequest};
use common::*;

/// `sleep`, `block` and `rows` queries only; exports for admins only; every job at
/// most a minute.
struct Rules;

#[async_trait::async_trait]
impl SubmitPolicy for Rules {
    async fn review(
        &self,
        principal: &Principal,
        request: &mut SubmitRequest,
    ) -> Result<(), Refusal> {
        if !["sleep", "block", "rows"]
            .iter()
            .any(|allowed| request.query.starts_with(allowed))
        {
            return Err(Refusal::Invalid(format!(
                "only sleep, block and rows run here, not {:?}",
                request.query
            )));
        }
        if matches!(request.kind, JobKind::TableExport { .. }) && !principal.has_role("admin") {
            return Err(Refusal::Forbidden("exports are for admins".into()));
        }
        let limit = Duration::from_secs(60);
        request.max_run_time = Some(request.max_run_time.map_or(limit, |d| d.min(limit)));
        Ok(())
    }
}

fn service() -> AsyncQueryService {
    AsyncQueryService::builder()
        .config(config())
        .executor(Arc::new(ScriptedExecutor::new()))
        .policy(Arc::new(Rules))
        .build()
        .expect("service")
}

#[tokio::test(start_paused = true)]
async fn a_policy_refuses_or_adjusts_before_anything_is_stored() {
    let service = service();
    let history = async_query::history::HistoryQuery::new();
    let job = service
        .submit(&alice(), SubmitRequest::query("sleep 10"))
        .await
        .unwrap();
    assert_eq!(job.status, QueryStatus::Complete);
    assert_eq!(job.max_run_time, Duration::from_secs(60), "adjusted");

    let invalid = service
        .submit(&alice(), SubmitRequest::query("DROP TABLE x"))
        .await;
    assert!(
        matches!(&invalid, Err(Error::InvalidRequest { reason }) if reason.contains("not \"DROP")),
        "{invalid:?}"
    );
    let export = SubmitRequest::export("rows 3", async_query::ExportFormat::CSV);
    let forbidden = service.submit(&alice(), export.clone()).await;
    assert!(
        matches!(&forbidden, Err(Error::Forbidden { reason }) if reason == "exports are for admins"),
        "{forbidden:?}"
    );
    let admins = service.submit(&admin(), export).await.unwrap();
    assert_eq!(admins.status, QueryStatus::Complete);

    // In a batch the refusal names the request; nothing of it is stored.
    let batch = vec![
        SubmitRequest::query("sleep 1"),
        SubmitRequest::query("rm -rf"),
    ];
    let refused = service.submit_many(&alice(), batch).await;
    assert!(
        matches!(&refused, Err(Error::InvalidRequest { reason }) if reason.starts_with("request 1:")),
        "{refused:?}"
    );
    let all = service.list(&admin(), &history).await.unwrap();
    assert_eq!(all.jobs.len(), 2, "only the two accepted jobs exist");
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_400_and_403_for_refusals() {
    use async_query::http::{self, HeaderPrincipal, JSON_API};
    use serde_json::{Value, json};
    let app = http::router(service(), HeaderPrincipal);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let post = |kind: &str, query: &str| {
        let document = json!({ "data": { "type": kind, "attributes": { "query": query } } });
        client
            .post(format!("{base}/{kind}"))
            .header("X-User", "alice")
            .header("Content-Type", JSON_API)
            .body(document.to_string())
            .send()
    };
    for (kind, query, status, code) in [
        ("asyncQuery", "DROP TABLE x", 400, "invalid_query"),
        ("tableExport", "rows 3", 403, "forbidden"),
        ("asyncQuery", "sleep 1", 201, ""),
    ] {
        let response = post(kind, query).await.expect("answer");
        assert_eq!(response.status().as_u16(), status, "{query}");
        let bytes = response.bytes().await.expect("a body");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        if !code.is_empty() {
            assert_eq!(body["errors"][0]["code"], code, "{body}");
        }
    }
}
