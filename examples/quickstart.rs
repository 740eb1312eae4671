//! Quickstart: one fast query answered inline, one slow query detached and
//! polled to completion, one cancelled. Prints every status change.
//!
//! ```text
//! cargo run --example quickstart                      # job records in memory
//! cargo run --example quickstart --features sqlite    # durable: an embedded SQLite file
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_query::{
    AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, Principal, QueryExecutor,
    QueryOutput, QueryStatus, SubmitRequest,
};

/// A toy engine: the query is "<milliseconds to think> <answer>".
struct ToyEngine;

#[async_trait::async_trait]
impl QueryExecutor for ToyEngine {
    fn validate(&self, request: &SubmitRequest) -> Result<(), String> {
        match request.query.split_once(' ') {
            Some((ms, _)) if ms.parse::<u64>().is_ok() => Ok(()),
            _ => Err("expected \"<milliseconds> <answer>\"".into()),
        }
    }

    async fn execute(
        &self,
        job: &AsyncQuery,
        _ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        let (ms, answer) = job.query.split_once(' ').ok_or("malformed query")?;
        tokio::time::sleep(Duration::from_millis(ms.parse()?)).await;
        Ok(QueryOutput::body(format!("{{\"answer\":{answer:?}}}"), 1))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = AsyncQueryService::builder()
        .config(Config {
            max_async_after: Duration::from_secs(2),
            ..Config::default()
        })
        .executor(Arc::new(ToyEngine));
    // The durable embedded default: one SQLite file, no server.
    #[cfg(feature = "sqlite")]
    let builder = {
        let path = std::env::temp_dir().join("async-query-quickstart.db");
        let dao =
            async_query::dao::SqliteDao::connect(&format!("sqlite://{}", path.display())).await?;
        dao.migrate().await?;
        println!("job records in {}", path.display());
        builder.dao(Arc::new(dao))
    };
    #[cfg(not(feature = "sqlite"))]
    println!("job records in memory (run with --features sqlite to keep them in a SQLite file)");
    let service = builder.build()?;
    let alice = Principal::new("alice");

    // Print every status change of alice's jobs as it happens.
    let mut events = service.subscribe(&alice);
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let from = event.from.map_or("(new)".to_string(), |s| s.to_string());
            println!(
                "  event  {}  {from} -> {}",
                &event.id.to_string()[..8],
                event.to
            );
        }
    });

    println!("1. a fast query, answered inline within async-after:");
    let fast = service
        .submit(&alice, SubmitRequest::query("20 forty-two"))
        .await?;
    println!(
        "  submit returned {} with body {}",
        fast.status,
        fast.result
            .as_ref()
            .and_then(|r| r.inline_body())
            .unwrap_or("-")
    );

    println!("2. a slow query: detached after 200 ms, then polled:");
    let slow = service
        .submit(
            &alice,
            SubmitRequest::query("1500 slow answer").with_async_after(Duration::from_millis(200)),
        )
        .await?;
    println!("  submit returned {} (the job runs on)", slow.status);
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let polled = service.get(&alice, slow.id).await?;
        println!("  poll: {}", polled.status);
        if polled.status.is_terminal() {
            break polled;
        }
    };
    println!(
        "  finished with body {}",
        finished
            .result
            .as_ref()
            .and_then(|r| r.inline_body())
            .unwrap_or("-")
    );

    println!("3. a query cancelled while it runs:");
    let doomed = service
        .submit(
            &alice,
            SubmitRequest::query("60000 never").with_async_after(Duration::ZERO),
        )
        .await?;
    let cancelled = service.cancel(&alice, doomed.id).await?.into_record();
    println!("  cancel returned {}", cancelled.status);

    println!("4. a malformed query is refused before anything is stored:");
    match service
        .submit(&alice, SubmitRequest::query("soon please"))
        .await
    {
        Err(e) => println!("  error: {e}"),
        Ok(job) => println!("  unexpectedly accepted: {}", job.id),
    }

    // Let the printer catch up, then stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    printer.abort();
    assert_eq!(fast.status, QueryStatus::Complete);
    assert_eq!(finished.status, QueryStatus::Complete);
    assert_eq!(cancelled.status, QueryStatus::CancelComplete);
    Ok(())
}
