//! Submission paths: inline completion, detaching, async-after, queueing.

mod common;

use std::time::Duration;

use async_query::{Error, QueryStatus, ResultBody, SubmitRequest};
use common::*;

#[tokio::test(start_paused = true)]
async fn fast_job_returns_complete_inline() {
    let h = harness(config());
    let job = submit(
        &h.service,
        SubmitRequest::query("hello").with_query_type("SQL"),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete);
    let result = job.result.as_ref().unwrap();
    assert_eq!(result.body, ResultBody::Inline("hello".into()));
    assert_eq!(result.record_count, Some(1));
    assert_eq!(result.content_length, Some(5));
    assert_eq!(&*job.query_type, "SQL");
    assert_eq!(&*job.principal.name, "alice");
    assert_eq!(job.lease, None, "terminal jobs hold no lease");
    // The stored record is the same.
    assert_eq!(h.service.get(&alice(), job.id).await.unwrap(), job);
}

#[tokio::test(start_paused = true)]
async fn slow_job_returns_processing_then_completes() {
    let h = harness(config());
    let start = tokio::time::Instant::now();
    let request = SubmitRequest::query("sleep 5000").with_async_after(SECOND);
    let job = h.service.submit(&alice(), request).await.unwrap();
    assert_eq!(job.status, QueryStatus::Processing);
    assert!(job.result.is_none());
    assert_eq!(start.elapsed(), SECOND, "submit waits exactly async-after");
    assert_eq!(job.async_after, SECOND);

    let polled = h.service.get(&alice(), job.id).await.unwrap();
    assert_eq!(polled.status, QueryStatus::Processing);
    assert!(polled.lease.is_some(), "running jobs hold a lease");

    let done = h
        .service
        .wait(&alice(), job.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.status, QueryStatus::Complete);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(
        done.result.unwrap().inline_body(),
        Some("{\"slept_ms\":5000}")
    );
    assert!(
        done.updated_on > job.created_on,
        "timestamps follow Tokio's clock"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_with_the_unfinished_job() {
    let h = harness(config());
    let job = submit(
        &h.service,
        SubmitRequest::query("sleep 10000").with_async_after(Duration::ZERO),
    )
    .await;
    let start = tokio::time::Instant::now();
    let still = h
        .service
        .wait(&alice(), job.id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(still.status, QueryStatus::Processing);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn async_after_zero_returns_at_once() {
    let h = harness(config());
    let start = tokio::time::Instant::now();
    let job = submit(
        &h.service,
        SubmitRequest::query("sleep 10").with_async_after(Duration::ZERO),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(job.status, QueryStatus::Processing);
    let done = h.service.wait(&alice(), job.id, SECOND).await.unwrap();
    assert_eq!(done.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn async_after_above_the_cap_is_capped() {
    let h = harness(async_query::Config {
        max_async_after: Duration::from_secs(3),
        ..config()
    });
    let start = tokio::time::Instant::now();
    let request = SubmitRequest::query("sleep 60000").with_async_after(Duration::from_secs(3600));
    let job = h.service.submit(&alice(), request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(job.status, QueryStatus::Processing);
    assert_eq!(
        job.async_after,
        Duration::from_secs(3),
        "the record keeps the capped value"
    );
}

#[tokio::test(start_paused = true)]
async fn default_async_after_applies_when_the_request_is_silent() {
    let h = harness(async_query::Config {
        default_async_after: Duration::from_secs(2),
        ..config()
    });
    let start = tokio::time::Instant::now();
    let job = submit(&h.service, SubmitRequest::query("sleep 9000")).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(job.status, QueryStatus::Processing);
}

#[tokio::test(start_paused = true)]
async fn pool_saturation_queues_in_order() {
    let h = harness(config()); // pool of 2
    let mut ids = Vec::new();
    for i in 0..6 {
        let request =
            SubmitRequest::query(format!("sleep {}", 1000 + i)).with_async_after(Duration::ZERO);
        let job = h.service.submit(&alice(), request).await.unwrap();
        let expected = if i < 2 {
            QueryStatus::Processing
        } else {
            QueryStatus::Queued
        };
        assert_eq!(job.status, expected, "job {i}");
        ids.push(job.id);
    }
    for id in &ids {
        let done = h
            .service
            .wait(&alice(), *id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
    let started = h.executor.started();
    let expected: Vec<String> = (0..6).map(|i| format!("sleep {}", 1000 + i)).collect();
    assert_eq!(started, expected, "queued jobs start in submission order");
    assert_eq!(
        h.executor.max_running(),
        2,
        "never more than the pool size at once"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_bound_gives_a_typed_error_and_stores_nothing() {
    let h = harness(async_query::Config {
        pool_size: 1,
        max_queued: 2,
        ..config()
    });
    let zero = |q: &str| SubmitRequest::query(q).with_async_after(Duration::ZERO);
    h.service.submit(&alice(), zero("block")).await.unwrap();
    h.service.submit(&alice(), zero("block")).await.unwrap();
    h.service.submit(&alice(), zero("block")).await.unwrap();
    let id = uuid::Uuid::new_v4();
    match h.service.submit(&alice(), zero("block").with_id(id)).await {
        Err(Error::QueueFull { limit }) => assert_eq!(limit, 2),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert!(
        matches!(
            h.service.get(&alice(), id).await,
            Err(Error::NotFound { .. })
        ),
        "a refused job is not stored"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_ends_failure_with_the_message() {
    let h = harness(config());
    let job = submit(&h.service, SubmitRequest::query("fail table missing")).await;
    assert_eq!(job.status, QueryStatus::Failure);
    let result = job.result.unwrap();
    assert_eq!(result.message.as_deref(), Some("table missing"));
    assert_eq!(result.body, ResultBody::None);
}

#[tokio::test(start_paused = true)]
async fn panic_ends_failure_and_the_service_keeps_working() {
    let h = harness(async_query::Config {
        pool_size: 1,
        ..config()
    });
    let job = submit(&h.service, SubmitRequest::query("panic boom")).await;
    assert_eq!(job.status, QueryStatus::Failure);
    assert_eq!(
        job.result.unwrap().message.as_deref(),
        Some("the executor panicked: boom")
    );
    // The only slot was released.
    let next = submit(&h.service, SubmitRequest::query("ok")).await;
    assert_eq!(next.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn oversized_inline_result_is_a_failure_not_a_truncation() {
    let h = harness(async_query::Config {
        max_inline_result_bytes: 4,
        ..config()
    });
    let job = submit(&h.service, SubmitRequest::query("too long")).await;
    assert_eq!(job.status, QueryStatus::Failure);
    assert!(
        job.result
            .unwrap()
            .message
            .unwrap()
            .contains("inline limit of 4 bytes")
    );
}

#[tokio::test(start_paused = true)]
async fn max_run_time_times_out_and_requests_may_only_lower_it() {
    let h = harness(async_query::Config {
        max_run_time: Duration::from_secs(10),
        ..config()
    });
    let start = tokio::time::Instant::now();
    // Async-after 1 s: submit returns well before the limit (with the
    // default of 10 s both would fall on the same instant).
    let job = submit(
        &h.service,
        SubmitRequest::query("block")
            .with_max_run_time(Duration::from_secs(3600))
            .with_async_after(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(
        job.max_run_time,
        Duration::from_secs(10),
        "capped to the configured limit"
    );
    assert_eq!(job.status, QueryStatus::Processing);
    let done = h
        .service
        .wait(&alice(), job.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.status, QueryStatus::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(
        done.result
            .unwrap()
            .message
            .unwrap()
            .contains("maximum run time of 10s")
    );

    let lower = submit(
        &h.service,
        SubmitRequest::query("block").with_max_run_time(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(
        lower.status,
        QueryStatus::TimedOut,
        "a 2 s limit ends within the 10 s async-after"
    );
}

#[tokio::test(start_paused = true)]
async fn client_supplied_ids_are_used_once() {
    let h = harness(config());
    let id = uuid::Uuid::new_v4();
    let job = submit(&h.service, SubmitRequest::query("a").with_id(id)).await;
    assert_eq!(job.id, id);
    match h
        .service
        .submit(&bob(), SubmitRequest::query("b").with_id(id))
        .await
    {
        // Not bob's job: he learns only that the id cannot be used.
        Err(Error::IdUnavailable { id: dup }) => assert_eq!(dup, id),
        other => panic!("expected IdUnavailable, got {other:?}"),
    }
    assert!(matches!(
        h.service
            .submit(&alice(), SubmitRequest::query("b").with_id(id))
            .await,
        Err(Error::DuplicateId { id: dup }) if dup == id
    ));
    // The original is untouched.
    assert_eq!(&*h.service.get(&alice(), id).await.unwrap().query, "a");
    // Also while the first is still running (known to this instance only).
    let running = uuid::Uuid::new_v4();
    h.service
        .submit(
            &alice(),
            SubmitRequest::query("block")
                .with_id(running)
                .with_async_after(Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(matches!(
        h.service
            .submit(&alice(), SubmitRequest::query("x").with_id(running))
            .await,
        Err(Error::DuplicateId { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn malformed_requests_are_rejected_before_anything_is_stored() {
    let h = harness(config());
    assert!(matches!(
        h.service
            .submit(&alice(), SubmitRequest::query("   "))
            .await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        h.service
            .submit(
                &alice(),
                SubmitRequest::query("x").with_max_run_time(Duration::ZERO)
            )
            .await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(h.executor.started().is_empty());
}

#[tokio::test(start_paused = true)]
async fn unknown_id_is_not_found() {
    let h = harness(config());
    let id = uuid::Uuid::new_v4();
    assert!(matches!(h.service.get(&alice(), id).await, Err(Error::NotFound { id: i }) if i == id));
    assert!(matches!(
        h.service.wait(&alice(), id, SECOND).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        h.service.cancel(&alice(), id).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_status_change_of_their_jobs() {
    let h = harness(async_query::Config {
        pool_size: 1,
        ..config()
    });
    let mut events = h.service.subscribe(&alice());
    let zero = |q: &str| SubmitRequest::query(q).with_async_after(Duration::ZERO);
    let first = h.service.submit(&alice(), zero("sleep 100")).await.unwrap();
    let theirs = h.service.submit(&bob(), zero("sleep 100")).await.unwrap();
    let second = h.service.submit(&alice(), zero("sleep 100")).await.unwrap();
    h.service
        .wait(&alice(), second.id, Duration::from_secs(5))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = events.recv().await.unwrap();
        assert_ne!(event.id, theirs.id, "bob's job is invisible to alice");
        seen.push((event.id, event.from, event.to));
    }
    use QueryStatus::*;
    assert_eq!(
        seen,
        vec![
            (first.id, None, Processing),
            (second.id, None, Queued),
            (first.id, Some(Processing), Complete),
            (second.id, Some(Queued), Processing),
            (second.id, Some(Processing), Complete),
        ]
    );
}

#[tokio::test]
async fn building_without_an_executor_or_runtime_is_a_config_error() {
    assert!(matches!(
        async_query::AsyncQueryService::builder().build(),
        Err(Error::Config { .. })
    ));
    let bad = async_query::Config {
        event_capacity: 0,
        ..config()
    };
    assert!(matches!(
        async_query::AsyncQueryService::builder()
            .config(bad)
            .executor(std::sync::Arc::new(
                async_query::testing::ScriptedExecutor::new()
            ))
            .build(),
        Err(Error::Config { .. })
    ));
    let outside = std::thread::spawn(|| {
        async_query::AsyncQueryService::builder()
            .executor(std::sync::Arc::new(
                async_query::testing::ScriptedExecutor::new(),
            ))
            .build()
            .map(|_| ())
    })
    .join()
    .unwrap();
    assert!(matches!(outside, Err(Error::Config { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_is_told_it_lagged_and_then_continues() {
    let h = harness(async_query::Config {
        event_capacity: 2,
        ..config()
    });
    let mut events = h.service.subscribe(&alice());
    let mut last = None;
    for i in 0..3 {
        last = Some(
            h.service
                .submit(&alice(), SubmitRequest::query(format!("q{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    // Six events were sent into a buffer of two.
    match events.recv().await {
        Err(Error::EventsLagged { missed }) => assert_eq!(missed, 4),
        other => panic!("expected EventsLagged, got {other:?}"),
    }
    let next = events.recv().await.unwrap();
    assert_eq!(
        next.id,
        last.unwrap(),
        "continues with the oldest event still kept"
    );
}

#[tokio::test(start_paused = true)]
async fn subscriptions_end_when_the_service_is_gone() {
    let h = harness(config());
    let mut events = h.service.subscribe(&alice());
    drop(h);
    let ended = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap();
    assert!(matches!(ended, Err(Error::ShuttingDown)), "{ended:?}");
}

/// Rejects queries that are not `SELECT`s.
struct SelectOnly;

#[async_trait::async_trait]
impl async_query::QueryExecutor for SelectOnly {
    fn validate(&self, request: &SubmitRequest) -> Result<(), String> {
        if request.query.to_lowercase().starts_with("select") {
            Ok(())
        } else {
            Err("only SELECT is allowed".into())
        }
    }

    async fn execute(
        &self,
        _: &async_query::AsyncQuery,
        _: async_query::ExecutionContext,
    ) -> Result<async_query::QueryOutput, async_query::BoxError> {
        Ok(async_query::QueryOutput::body("[]", 0))
    }
}

#[tokio::test(start_paused = true)]
async fn the_executors_validation_rejects_before_anything_is_stored() {
    let dao = std::sync::Arc::new(async_query::MemoryDao::new());
    let service = async_query::AsyncQueryService::builder()
        .dao(dao.clone())
        .executor(std::sync::Arc::new(SelectOnly))
        .build()
        .unwrap();
    let id = uuid::Uuid::new_v4();
    match service
        .submit(&alice(), SubmitRequest::query("drop table t").with_id(id))
        .await
    {
        Err(Error::InvalidRequest { reason }) => assert_eq!(reason, "only SELECT is allowed"),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(
        async_query::AsyncApiDao::get(&*dao, id)
            .await
            .unwrap()
            .is_none()
    );
    let ok = service
        .submit(&alice(), SubmitRequest::query("select 1"))
        .await
        .unwrap();
    assert_eq!(ok.status, QueryStatus::Complete);
}

#[tokio::test(start_paused = true)]
async fn submit_many_queues_a_batch_in_order_all_or_nothing() {
    let h = harness(async_query::Config {
        max_queued: 8,
        ..config() // pool of 2
    });
    let batch = |n: usize| -> Vec<SubmitRequest> {
        (0..n)
            .map(|i| SubmitRequest::query(format!("sleep {}", 100 + i)))
            .collect()
    };
    // Refused batches store nothing: a bad request, a duplicate, too many.
    let mut bad = batch(3);
    bad[2].query = " ".into();
    match h.service.submit_many(&alice(), bad).await {
        Err(Error::InvalidRequest { reason }) => {
            assert!(reason.starts_with("request 2:"), "{reason}")
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    let id = uuid::Uuid::new_v4();
    let mut twice = batch(2);
    twice[0].id = Some(id);
    twice[1].id = Some(id);
    assert!(matches!(
        h.service.submit_many(&alice(), twice).await,
        Err(Error::DuplicateId { id: dup }) if dup == id
    ));
    assert!(matches!(
        h.service.submit_many(&alice(), batch(9)).await,
        Err(Error::QueueFull { limit: 8 })
    ));
    assert!(h.executor.started().is_empty());
    assert!(matches!(
        h.service.get(&alice(), id).await,
        Err(Error::NotFound { .. })
    ));

    let jobs = h.service.submit_many(&alice(), batch(6)).await.unwrap();
    assert_eq!(jobs.len(), 6);
    assert!(jobs.iter().all(|j| j.status == QueryStatus::Queued));
    for job in &jobs {
        let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
    let expected: Vec<String> = (0..6).map(|i| format!("sleep {}", 100 + i)).collect();
    assert_eq!(h.executor.started(), expected, "a batch runs in its order");
    assert_eq!(h.executor.max_running(), 2);
    // The queue places were given back: a full batch fits again.
    let again = h.service.submit_many(&alice(), batch(8)).await.unwrap();
    assert_eq!(again.len(), 8);
}

#[tokio::test(start_paused = true)]
async fn claim_batches_keep_order_pool_size_and_cancellation() {
    let h = harness(async_query::Config {
        claim_batch: 4,
        max_queued: 20,
        ..config() // pool of 2
    });
    let requests = (0..10)
        .map(|i| SubmitRequest::query(format!("sleep {}", 100 + i)))
        .collect();
    let jobs = h.service.submit_many(&alice(), requests).await.unwrap();
    for job in &jobs {
        let done = h.service.wait(&alice(), job.id, 60 * SECOND).await.unwrap();
        assert_eq!(done.status, QueryStatus::Complete);
    }
    let expected: Vec<String> = (0..10).map(|i| format!("sleep {}", 100 + i)).collect();
    assert_eq!(h.executor.started(), expected);
    assert_eq!(h.executor.max_running(), 2, "claimed ahead is not running");

    // A job claimed ahead and cancelled never starts and ends CANCEL_COMPLETE.
    let requests = ["block", "block", "sleep 1", "sleep 2"]
        .into_iter()
        .map(SubmitRequest::query)
        .collect();
    let jobs = h.service.submit_many(&alice(), requests).await.unwrap();
    tokio::time::sleep(SECOND).await;
    let waiting = h.service.get(&alice(), jobs[2].id).await.unwrap();
    assert_eq!(waiting.status, QueryStatus::Processing, "claimed ahead");
    h.service.cancel(&alice(), jobs[2].id).await.unwrap();
    h.service.cancel(&alice(), jobs[0].id).await.unwrap();
    h.service.cancel(&alice(), jobs[1].id).await.unwrap();
    let cancelled = h
        .service
        .wait(&alice(), jobs[2].id, 60 * SECOND)
        .await
        .unwrap();
    assert_eq!(cancelled.status, QueryStatus::CancelComplete);
    let last = h
        .service
        .wait(&alice(), jobs[3].id, 60 * SECOND)
        .await
        .unwrap();
    assert_eq!(last.status, QueryStatus::Complete);
    let started = h.executor.started();
    assert!(!started.contains(&"sleep 1".to_string()), "{started:?}");
    assert!(started.contains(&"sleep 2".to_string()));
}

/// `submit` runs a job that starts at once in the caller's own task. A
/// caller that goes away while it runs (an HTTP client that disconnects)
/// does not take the job with it: the job moves to a task of its own and
/// runs to its end.
#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_does_not_stop_its_job() {
    let h = harness(config());
    let id = uuid::Uuid::new_v4();
    let request = SubmitRequest::query("sleep 5000")
        .with_id(id)
        .with_async_after(Duration::from_secs(10));
    let gave_up = tokio::time::timeout(SECOND, h.service.submit(&alice(), request)).await;
    assert!(gave_up.is_err(), "the caller gave up while the job ran");
    let running = h.service.get(&alice(), id).await.unwrap();
    assert_eq!(running.status, QueryStatus::Processing);
    let done = h.service.wait(&alice(), id, 60 * SECOND).await.unwrap();
    assert_eq!(done.status, QueryStatus::Complete);
    assert_eq!(h.executor.started(), ["sleep 5000"]);
}

/// A duration that would overflow a background task's timer or a
/// timestamp is refused by name when the service is built; the longest
/// accepted one runs jobs.
#[tokio::test(start_paused = true)]
async fn durations_beyond_a_hundred_years_are_refused_at_build() {
    use async_query::config::MAX_DURATION;
    let build = |config: async_query::Config| {
        async_query::AsyncQueryService::builder()
            .config(config)
            .executor(std::sync::Arc::new(
                async_query::testing::ScriptedExecutor::new(),
            ))
            .build()
    };
    let too_long = MAX_DURATION + Duration::from_secs(1);
    let cases: [(&str, async_query::Config); 4] = [
        (
            "lease",
            async_query::Config {
                lease: Duration::MAX,
                ..config()
            },
        ),
        (
            "retention",
            async_query::Config {
                retention: too_long,
                ..config()
            },
        ),
        (
            "cleaner_interval",
            async_query::Config {
                cleaner_interval: too_long,
                ..config()
            },
        ),
        (
            "result_lifetime",
            async_query::Config {
                result_lifetime: Some(too_long),
                ..config()
            },
        ),
    ];
    for (name, bad) in cases {
        match build(bad) {
            Err(Error::Config { reason }) => assert!(reason.starts_with(name), "{reason}"),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
    let longest = async_query::Config {
        max_async_after: MAX_DURATION,
        default_async_after: MAX_DURATION,
        max_run_time: MAX_DURATION,
        retention: MAX_DURATION,
        result_lifetime: Some(MAX_DURATION),
        cleaner_interval: MAX_DURATION,
        cancellation_check_interval: MAX_DURATION,
        lease: MAX_DURATION,
        poll_interval: MAX_DURATION,
        cancel_grace: MAX_DURATION,
        ..config()
    };
    let service = build(longest).expect("100 years is accepted");
    let job = service
        .submit(&alice(), SubmitRequest::query("sleep 10"))
        .await
        .expect("submit");
    assert_eq!(job.status, QueryStatus::Complete);
}

/// Two instances over a store that pushes no changes (one `MemoryDao`):
/// a job queued on the busy instance and run by the idle one is seen
/// finished by the submitter's wait within a poll interval, not at its
/// next heartbeat (a third of the lease).
#[tokio::test(start_paused = true)]
async fn a_wait_sees_a_job_another_instance_ran_within_a_poll_interval() {
    use std::sync::Arc;
    let dao = Arc::new(async_query::MemoryDao::new());
    let instance = || {
        async_query::AsyncQueryService::builder()
            .config(async_query::Config {
                pool_size: 1,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                ..config()
            })
            .dao(dao.clone())
            .executor(Arc::new(async_query::testing::ScriptedExecutor::new()))
            .build()
            .expect("service builds")
    };
    let (busy, idle) = (instance(), instance());
    let blocker = submit(
        &busy,
        SubmitRequest::query("block").with_async_after(Duration::ZERO),
    )
    .await;
    let started = tokio::time::Instant::now();
    let job = submit(
        &busy,
        SubmitRequest::query("sleep 10").with_async_after(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(job.status, QueryStatus::Complete, "{job:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "seen {:?} after the submit",
        started.elapsed()
    );
    busy.cancel(&alice(), blocker.id).await.unwrap();
    for service in [busy, idle] {
        service.shutdown(Duration::from_secs(1)).await.unwrap();
    }
}
