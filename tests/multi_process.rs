//! Crash tests with real OS processes: instances are this test binary
//! re-executed in "child" mode (`child_instance`, ignored in normal runs),
//! killed with SIGKILL mid-run.
//!
//! - SQLite: one process submits and runs jobs, is killed, and a new
//!   instance on the same file finishes the work; nothing is lost.
//! - PostgreSQL (needs `ASYNC_QUERY_TEST_POSTGRES_URL`): three worker
//!   processes and a submit-only instance share one database; 2,000 jobs of
//!   mixed length; one worker is killed; cancels reach jobs on other
//!   processes; every job ends exactly once and none runs twice.
#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_query::dao::ListFilter;
use async_query::{
    AsyncApiDao, AsyncQuery, AsyncQueryService, BoxError, Config, ExecutionContext, QueryExecutor,
    QueryOutput, QueryStatus, SubmitRequest,
};
use common::*;

/// Runs queries ("sleep <ms>" or "block") and logs "start <id>" / "end <id>"
/// lines to a file, flushed at once, so the parent can see what ran where.
struct LoggingExecutor {
    log: Mutex<std::fs::File>,
}

impl LoggingExecutor {
    fn line(&self, what: &str, id: uuid::Uuid) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(log, "{what} {id}");
        let _ = log.flush();
    }
}

#[async_trait::async_trait]
impl QueryExecutor for LoggingExecutor {
    async fn execute(
        &self,
        job: &AsyncQuery,
        _: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        self.line("start", job.id);
        match job.query.split_once(' ') {
            Some(("sleep", ms)) => tokio::time::sleep(Duration::from_millis(ms.parse()?)).await,
            _ => futures::future::pending::<()>().await,
        }
        self.line("end", job.id);
        Ok(QueryOutput::body("ok", 1))
    }
}

fn instance_config(instance_id: uuid::Uuid, pool_size: usize) -> Config {
    Config {
        instance_id,
        pool_size,
        max_queued: 10_000,
        lease: Duration::from_secs(2),
        cleaner_interval: Duration::from_millis(500),
        poll_interval: Duration::from_millis(20),
        ..Config::default()
    }
}

async fn open_dao(url: &str) -> Arc<dyn AsyncApiDao> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        let dao = async_query::dao::SqliteDao::connect(url)
            .await
            .expect("open SQLite");
        dao.migrate().await.expect("migrate");
        return Arc::new(dao);
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") {
        let dao = async_query::dao::PostgresDao::connect(url)
            .await
            .expect("connect");
        dao.migrate().await.expect("migrate");
        return Arc::new(dao);
    }
    panic!("unsupported DAO URL {url}");
}

/// The child process: an instance configured by environment variables.
#[test]
#[ignore = "run by the crash tests as a separate process"]
fn child_instance() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let url = var("AQ_CHILD_DAO");
    let instance: uuid::Uuid = var("AQ_CHILD_INSTANCE").parse().expect("instance id");
    let log = PathBuf::from(var("AQ_CHILD_LOG"));
    let submit: usize = std::env::var("AQ_CHILD_SUBMIT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let claim_batch: usize = std::env::var("AQ_CHILD_CLAIM_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let executor = Arc::new(LoggingExecutor {
            log: Mutex::new(file),
        });
        let service = AsyncQueryService::builder()
            .config(Config {
                claim_batch,
                ..instance_config(instance, 4)
            })
            .dao(open_dao(&url).await)
            .executor(executor.clone())
            .build()
            .expect("service");
        for i in 0..submit {
            let request = SubmitRequest::query(format!("sleep {}", 20 + (i % 5) * 20))
                .with_async_after(Duration::ZERO);
            let job = service.submit(&alice(), request).await.expect("submit");
            executor.line("submitted", job.id);
        }
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

fn spawn_child(url: &str, instance: uuid::Uuid, log: &Path, submit: usize) -> Child {
    spawn_child_batching(url, instance, log, submit, 1)
}

/// A child instance with `Config::claim_batch = claim_batch`.
fn spawn_child_batching(
    url: &str,
    instance: uuid::Uuid,
    log: &Path,
    submit: usize,
    claim_batch: usize,
) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_instance",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AQ_CHILD_DAO", url)
        .env("AQ_CHILD_INSTANCE", instance.to_string())
        .env("AQ_CHILD_LOG", log)
        .env("AQ_CHILD_SUBMIT", submit.to_string())
        .env("AQ_CHILD_CLAIM_BATCH", claim_batch.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child instance")
}

/// `(what, id)` lines of a child's log.
fn read_log(log: &Path) -> Vec<(String, uuid::Uuid)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (what, id) = l.split_once(' ')?;
            Some((what.to_owned(), id.parse().ok()?))
        })
        .collect()
}

async fn all_records(dao: &dyn AsyncApiDao) -> Vec<AsyncQuery> {
    dao.list(&ListFilter::default()).await.expect("list")
}

async fn wait_all_terminal(
    dao: &dyn AsyncApiDao,
    expected: usize,
    limit: Duration,
) -> Vec<AsyncQuery> {
    let start = std::time::Instant::now();
    loop {
        let records = all_records(dao).await;
        if records.len() >= expected && records.iter().all(|j| j.status.is_terminal()) {
            return records;
        }
        assert!(
            start.elapsed() < limit,
            "jobs still running after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_mid_run_then_restart_on_the_same_file_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let log = dir.path().join("child.log");
    let instance = uuid::Uuid::new_v4();
    let total = 300;
    let mut child = spawn_child(&url, instance, &log, total);
    // Kill it once it has submitted everything and finished some, mid-run.
    let start = std::time::Instant::now();
    loop {
        let lines = read_log(&log);
        let submitted = lines.iter().filter(|(w, _)| w == "submitted").count();
        let ended = lines.iter().filter(|(w, _)| w == "end").count();
        if submitted == total && ended >= 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child made no progress: {submitted} submitted, {ended} ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let lines = read_log(&log);
    let ended_before: Vec<uuid::Uuid> = lines
        .iter()
        .filter(|(w, _)| w == "end")
        .map(|(_, id)| *id)
        .collect();

    // What the file says was running when the process died. A job can be
    // PROCESSING without a "start" line (claimed, killed before the executor
    // began) or with an "end" line (killed before COMPLETE was committed):
    // both are interrupted jobs, and only these may end TIMEDOUT.
    let dao = open_dao(&url).await;
    let mut running_at_kill: Vec<uuid::Uuid> = dao
        .list(&ListFilter::statuses([QueryStatus::Processing]))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    running_at_kill.sort();
    assert!(
        running_at_kill.len() <= 4,
        "more jobs running than worker slots: {}",
        running_at_kill.len()
    );

    // Start again on the same file, as the same instance.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("restart.log"))
        .unwrap();
    let _service = AsyncQueryService::builder()
        .config(instance_config(instance, 4))
        .dao(dao.clone())
        .executor(Arc::new(LoggingExecutor {
            log: Mutex::new(file),
        }))
        .build()
        .unwrap();
    let records = wait_all_terminal(&*dao, total, Duration::from_secs(60)).await;
    assert_eq!(records.len(), total, "every submitted job is still there");
    let by_status = count_statuses(&records);
    println!(
        "SQLite crash test: {} jobs ended before the kill; after restart: {by_status:?}",
        ended_before.len()
    );
    for record in &records {
        match record.status {
            QueryStatus::Complete => {}
            QueryStatus::TimedOut => {
                let message = record
                    .result
                    .as_ref()
                    .and_then(|r| r.message.clone())
                    .unwrap_or_default();
                assert!(message.contains("restarted"), "{message}");
            }
            other => panic!("{} ended {other}", record.id),
        }
    }
    // Exactly the jobs that were running when the process died end
    // TIMEDOUT; every other job, queued or not yet submitted to a worker,
    // ran to COMPLETE after the restart.
    let mut interrupted: Vec<uuid::Uuid> = records
        .iter()
        .filter(|r| r.status == QueryStatus::TimedOut)
        .map(|r| r.id)
        .collect();
    interrupted.sort();
    assert_eq!(interrupted, running_at_kill);
}

fn count_statuses(records: &[AsyncQuery]) -> HashMap<QueryStatus, usize> {
    let mut counts = HashMap::new();
    for record in records {
        *counts.entry(record.status).or_insert(0) += 1;
    }
    counts
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_worker_processes_one_killed_every_job_ends_exactly_once() {
    let Some(db) = common::pg::fresh().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let logs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("worker-{i}.log")))
        .collect();
    // Workers 0 (the one killed) and 1 claim ahead and write behind
    // (`claim_batch` 8); worker 2 claims one job at a time.
    let mut children: Vec<Child> = workers
        .iter()
        .zip(&logs)
        .zip([8, 8, 1])
        .map(|((id, log), batch)| spawn_child_batching(&db.url, *id, log, 0, batch))
        .collect();

    // This process only submits and cancels (no worker slots).
    let submitter = AsyncQueryService::builder()
        .config(instance_config(uuid::Uuid::new_v4(), 0))
        .dao(Arc::new(db.dao.clone()))
        .executor(Arc::new(async_query::testing::ScriptedExecutor::new()))
        .build()
        .unwrap();
    let total = 2_000;
    let mut blocks = Vec::new();
    for i in 0..total {
        let query = if i % 100 == 7 {
            "block".to_string()
        } else {
            format!("sleep {}", [5, 20, 50, 100][i % 4])
        };
        let job = submitter
            .submit(
                &alice(),
                SubmitRequest::query(query.clone()).with_async_after(Duration::ZERO),
            )
            .await
            .unwrap();
        assert_eq!(
            job.status,
            QueryStatus::Queued,
            "a submit-only instance never runs jobs"
        );
        if query == "block" {
            blocks.push(job.id);
        }
    }

    // Let the workers get going, then kill one of them mid-run.
    let start = std::time::Instant::now();
    while read_log(&logs[0])
        .iter()
        .filter(|(w, _)| w == "end")
        .count()
        < 50
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "worker 0 made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    children[0].kill().expect("kill -9");
    children[0].wait().expect("reap");
    let killed_at = std::time::Instant::now();

    // Cancel every blocking job from here, wherever it runs or waits.
    let cancel_start = std::time::Instant::now();
    for id in &blocks {
        submitter.cancel(&alice(), *id).await.unwrap();
    }
    let cancels_took = cancel_start.elapsed();

    // The dead worker's unfinished jobs end within lease + cleaner interval.
    let dead_log = read_log(&logs[0]);
    let dead_unfinished: Vec<uuid::Uuid> = dead_log
        .iter()
        .filter(|(w, id)| w == "start" && !dead_log.contains(&("end".to_string(), *id)))
        .map(|(_, id)| *id)
        .collect();
    loop {
        let mut pending = 0;
        for id in &dead_unfinished {
            if !db.dao.get(*id).await.unwrap().unwrap().status.is_terminal() {
                pending += 1;
            }
        }
        if pending == 0 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(4),
            "{pending} jobs of the dead worker still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_after = killed_at.elapsed();

    let records = wait_all_terminal(&db.dao, total, Duration::from_secs(120)).await;
    let finished_after = killed_at.elapsed();
    for child in &mut children[1..] {
        let _ = child.kill();
        let _ = child.wait();
    }

    // Nothing ran twice: each job started in at most one process.
    let mut starts: HashMap<uuid::Uuid, usize> = HashMap::new();
    for log in &logs {
        for (what, id) in read_log(log) {
            if what == "start" {
                *starts.entry(id).or_insert(0) += 1;
            }
        }
    }
    assert!(starts.values().all(|n| *n == 1), "a job started twice");
    let dead = workers[0].to_string();
    for record in &records {
        let message = record
            .result
            .as_ref()
            .and_then(|r| r.message.clone())
            .unwrap_or_default();
        match record.status {
            QueryStatus::Complete => assert!(!blocks.contains(&record.id)),
            QueryStatus::CancelComplete => {
                assert!(blocks.contains(&record.id), "{} cancelled", record.id)
            }
            QueryStatus::TimedOut => assert!(
                message.contains(&dead),
                "timed out but not on the dead worker: {message}"
            ),
            other => panic!("{} ended {other}: {message}", record.id),
        }
    }
    let counts = count_statuses(&records);
    assert_eq!(
        counts.get(&QueryStatus::CancelComplete),
        Some(&blocks.len()),
        "{counts:?}"
    );
    println!(
        "PostgreSQL crash test: {total} jobs over 3 worker processes, one killed after {} jobs; \
         its {} unfinished jobs ended {recovered_after:?} after the kill; all ended {finished_after:?} after; \
         {} cancels took {cancels_took:?}; {counts:?}",
        dead_log.iter().filter(|(w, _)| w == "end").count(),
        dead_unfinished.len(),
        blocks.len()
    );
    db.drop_db().await;
}
