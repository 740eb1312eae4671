//! SQL Lab: the whole async-query stack on real SQL, over HTTP.
//!
//! ```text
//! cargo run --example sql_lab --features axum,sqlite
//! ```
//!
//! Creates a demo SQLite database (`regions`, `customers`, and `orders` with
//! 1,000,000 rows, so some queries take seconds) under `target/sql_lab/`,
//! keeps job records in a SQLite file and exports in a directory next to
//! it, and serves the Elide-compatible routes of `async_query::http` on
//! 127.0.0.1:8080 (`SQL_LAB_ADDR` overrides; `SQL_LAB_ROWS` sets the
//! `orders` rows). The principal comes from the `X-User` header (admins:
//! `X-Roles: admin`) — a demo convenience, not authentication. The README
//! shows curl commands for the whole flow. Ctrl-C stops it gracefully.

#[path = "support/sql_lab.rs"]
mod lab;

use std::sync::Arc;
use std::time::Duration;

use async_query::dao::SqliteDao;
use async_query::http::{self, HeaderPrincipal};
use async_query::{AsyncQueryService, Config, FileSystemStorage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("SQL_LAB_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let rows: u64 = match std::env::var("SQL_LAB_ROWS") {
        Ok(rows) => rows.parse()?,
        Err(_) => 1_000_000,
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sql_lab");
    std::fs::create_dir_all(&dir)?;

    let demo = dir.join("demo.db");
    let started = std::time::Instant::now();
    let path = demo.clone();
    tokio::task::spawn_blocking(move || lab::create_demo_database(&path, rows)).await??;
    println!(
        "demo database {} ({rows} orders) built in {:.1?}",
        demo.display(),
        started.elapsed()
    );

    let dao = SqliteDao::connect(&format!("sqlite://{}", dir.join("jobs.db").display())).await?;
    dao.migrate().await?;
    let storage = FileSystemStorage::new(dir.join("exports")).await?;
    let config = Config {
        max_async_after: Duration::from_secs(10),
        append_file_extension: true,
        ..Config::default()
    };
    let executor = lab::SqlExecutor::new(&demo, config.max_inline_result_bytes);
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(Arc::new(dao))
        .storage(Arc::new(storage))
        .executor(Arc::new(executor))
        .build()?;

    let app = http::router(service.clone(), HeaderPrincipal);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("SQL Lab on http://{addr} — try:");
    println!(
        "  curl -s -H 'X-User: alice' -H 'Content-Type: application/vnd.api+json' \\\n    -d '{{\"data\":{{\"type\":\"asyncQuery\",\"attributes\":{{\"query\":\"SELECT count(*) AS n FROM orders\",\"queryType\":\"SQL\",\"status\":\"QUEUED\"}}}}}}' \\\n    http://{addr}/asyncQuery"
    );
    println!("Ctrl-C stops the server.");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = service.shutdown(Duration::from_secs(5)).await?;
    println!(
        "stopped; {} running job(s) ended TIMEDOUT",
        report.stopped.len()
    );
    Ok(())
}
