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
//! 127.0.0.1:8080. The principal comes from the `X-User` header (admins:
//! `X-Roles: admin`) — a demo convenience, not authentication. The README
//! shows curl commands for the whole flow. Ctrl-C stops it gracefully.
//! With `--features axum,sqlite,dashboard` it also serves the dashboard
//! at `/ui`; `/login?user=alice` (add `&roles=admin` for the admin view)
//! signs a browser in with a cookie the same demo resolver reads.
//! `GET /metrics` answers in Prometheus' text format (add `--features
//! metrics` for the service's own series).
//!
//! # Two instances, one API
//!
//! With a PostgreSQL job store and shared result storage, any number of
//! instances serve one API: submit on one, poll, cancel, read events and
//! download on another.
//!
//! ```text
//! export SQL_LAB_JOBS=postgres://postgres@127.0.0.1:5432/test
//! export SQL_LAB_RESULTS=s3://exports/sql-lab   # or redis://127.0.0.1:6379
//! export AWS_ENDPOINT=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
//! export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…
//! cargo run --example sql_lab --features axum,sqlite,postgres,s3 &
//! SQL_LAB_ADDR=127.0.0.1:8081 cargo run --example sql_lab --features axum,sqlite,postgres,s3
//! ```
//!
//! Variables: `SQL_LAB_ADDR` (listen address), `SQL_LAB_ROWS` (`orders`
//! rows), `SQL_LAB_DEMO` (the demo database file), `SQL_LAB_JOBS` (a
//! `sqlite://` or `postgres://` URL), `SQL_LAB_RESULTS` (a directory,
//! `s3://bucket[/prefix]` or a `redis://` URL), `SQL_LAB_LINK_KEY`
//! (signs download links; the same on every instance) and
//! `SQL_LAB_INSTANCE` (the instance's id, a UUID; distinct per instance,
//! stable across its restarts).

#[path = "support/sql_lab.rs"]
mod lab;
#[path = "support/lab_server.rs"]
mod lab_server;

use lab_server::{Lab, LabSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let lab = Lab::start(LabSettings::from_env()?).await?;
    let addr = lab.addr;
    println!("SQL Lab on http://{addr} ({}) — try:", lab.describe);
    println!(
        "  curl -s -H 'X-User: alice' -H 'Content-Type: application/vnd.api+json' \\\n    -d '{{\"data\":{{\"type\":\"asyncQuery\",\"attributes\":{{\"query\":\"SELECT count(*) AS n FROM orders\",\"queryType\":\"SQL\",\"status\":\"QUEUED\"}}}}}}' \\\n    http://{addr}/asyncQuery"
    );
    if cfg!(feature = "dashboard") {
        println!(
            "Dashboard: open http://{addr}/login?user=alice (admin view: ?user=root&roles=admin)"
        );
    }
    println!("Ctrl-C stops the server.");
    lab.serve(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
