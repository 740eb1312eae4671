//! What the service records through the `metrics` facade, read back from
//! `metrics-util`'s debugging recorder (installed for this whole test
//! binary, so the scenarios run one after another in one test, each
//! reading the deltas of its own steps).
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_query::metrics as m;
use async_query::model::Lease;
use async_query::{
    AsyncApiDao, AsyncQuery, AsyncQueryService, Config, ExportFormat, JobKind, MemoryDao,
    MemoryStorage, QueryStatus, SubmitRequest,
};
use chrono::Utc;
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One reading: counters since the last reading, gauges now, histogram
/// samples since the last reading; keyed `name{label=value,…}` with the
/// labels sorted.
struct Reading(HashMap<String, DebugValue>);

impl Reading {
    fn take(snapshotter: &Snapshotter) -> Self {
        let mut values = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            values.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
        }
        Reading(values)
    }

    fn counter(&self, key: &str) -> u64 {
        match self.0.get(key) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{key} is {other:?}"),
        }
    }

    fn gauge(&self, key: &str) -> f64 {
        match self.0.get(key) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{key} is {other:?}"),
        }
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        match self.0.get(key) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            None => Vec::new(),
            other => panic!("{key} is {other:?}"),
        }
    }
}

fn key(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

#[tokio::test(start_paused = true)]
async fn the_service_records_its_lifecycle_in_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    m::describe();

    let dao = Arc::new(MemoryDao::new());
    let storage = MemoryStorage::new();
    let executor = Arc::new(async_query::testing::ScriptedExecutor::new());
    let config = Config {
        pool_size: 1,
        cleaner_interval: Duration::from_secs(60),
        retention: Duration::from_secs(3600),
        ..config()
    };
    let service = AsyncQueryService::builder()
        .config(config)
        .dao(dao.clone())
        .storage(Arc::new(storage.clone()))
        .executor(executor)
        .build()
        .unwrap();
    let _ = Reading::take(&snapshotter);

    // An inline answer: submitted, started at once, finished.
    let job = submit(&service, SubmitRequest::query("sleep 20")).await;
    assert_eq!(job.status, QueryStatus::Complete);
    let r = Reading::take(&snapshotter);
    assert_eq!(r.counter(&key(m::JOBS_SUBMITTED, "kind=query")), 1);
    assert_eq!(r.counter(&key(m::SUBMIT_ANSWERS, "answer=inline")), 1);
    assert_eq!(r.counter(&key(m::SUBMIT_ANSWERS, "answer=detached")), 0);
    assert_eq!(
        r.counter(&key(m::JOBS_FINISHED, "kind=query,status=COMPLETE")),
        1
    );
    assert_eq!(r.samples(&key(m::QUEUE_WAIT, "kind=query")), vec![0.0]);
    let ran = r.samples(&key(m::RUN_TIME, "ending=finished,kind=query"));
    assert_eq!(ran.len(), 1);
    assert!((0.02..0.03).contains(&ran[0]), "{ran:?}");
    assert_eq!(r.gauge(&key(m::JOBS_RUNNING, "")), 0.0);
    assert_eq!(r.gauge(&key(m::JOBS_QUEUED, "")), 0.0);

    // Detached answers; with one slot the second job waits its turn.
    let detached = |q: &str| SubmitRequest::query(q).with_async_after(Duration::ZERO);
    let first = submit(&service, detached("sleep 1000")).await;
    let second = submit(&service, detached("fail on purpose")).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let r = Reading::take(&snapshotter);
    assert_eq!(r.counter(&key(m::SUBMIT_ANSWERS, "answer=detached")), 2);
    assert_eq!(r.gauge(&key(m::JOBS_RUNNING, "")), 1.0);
    assert_eq!(r.gauge(&key(m::JOBS_QUEUED, "")), 1.0);
    assert_eq!(r.samples(&key(m::QUEUE_WAIT, "kind=query")), vec![0.0]);
    for job in [&first, &second] {
        service
            .wait(&alice(), job.id, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let r = Reading::take(&snapshotter);
    assert_eq!(
        r.counter(&key(m::JOBS_FINISHED, "kind=query,status=FAILURE")),
        1
    );
    let waited = r.samples(&key(m::QUEUE_WAIT, "kind=query"));
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert!(
        (1.0..1.1).contains(&waited[0]),
        "the second job waited for the first: {waited:?}"
    );
    assert_eq!(
        r.samples(&key(m::RUN_TIME, "ending=failed,kind=query"))
            .len(),
        1
    );
    assert_eq!(r.gauge(&key(m::JOBS_RUNNING, "")), 0.0);
    assert_eq!(r.gauge(&key(m::JOBS_QUEUED, "")), 0.0);

    // An export: its rows and bytes.
    let export = submit(
        &service,
        SubmitRequest::export("rows 25", ExportFormat::NDJSON),
    )
    .await;
    assert_eq!(export.status, QueryStatus::Complete);
    let result = export.result.as_ref().unwrap();
    let r = Reading::take(&snapshotter);
    assert_eq!(r.counter(&key(m::JOBS_SUBMITTED, "kind=table_export")), 1);
    assert_eq!(r.counter(&key(m::EXPORT_ROWS, "format=ndjson")), 25);
    assert_eq!(
        r.counter(&key(m::EXPORT_BYTES, "format=ndjson")),
        result.content_length.unwrap()
    );

    // The cleaner: a job whose owner's lease expired, then retention.
    let now = Utc::now();
    let orphan = AsyncQuery {
        id: uuid::Uuid::new_v4(),
        kind: JobKind::Query,
        query: "remote".into(),
        query_type: "".into(),
        principal: alice(),
        status: QueryStatus::Processing,
        async_after: Duration::ZERO,
        max_run_time: Duration::from_secs(3600),
        created_on: now,
        updated_on: now,
        result: None,
        lease: Some(Lease {
            owner: uuid::Uuid::new_v4(),
            expires_at: now - chrono::TimeDelta::seconds(1),
        }),
        idempotency_key: None,
        progress: None,
        attempt: 1,
        retry_at: None,
    };
    dao.create(&orphan).await.unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let r = Reading::take(&snapshotter);
    assert_eq!(r.counter(&key(m::LEASES_EXPIRED, "")), 1);
    assert_eq!(
        r.counter(&key(m::JOBS_FINISHED, "kind=query,status=TIMEDOUT")),
        1
    );
    assert_eq!(r.counter(&key(m::CLEANER_DELETED, "what=records")), 0);

    let kept = dao.list(&Default::default()).await.unwrap().len() as u64;
    assert_eq!(kept, 5);
    tokio::time::sleep(Duration::from_secs(3600 + 120)).await;
    let r = Reading::take(&snapshotter);
    assert_eq!(r.counter(&key(m::CLEANER_DELETED, "what=records")), kept);
    assert!(storage.names().is_empty());
    service.shutdown(Duration::from_secs(1)).await.unwrap();
}
