//! `AsyncQueryService::overview` and `GET /asyncOverview`: what an admin
//! sees of the queue across instances, on Tokio's paused clock.

mod common;

use std::time::Duration;

use async_query::model::Lease;
use async_query::{
    AsyncApiDao, AsyncQuery, Config, Error, JobKind, Principal, QueryStatus, SubmitRequest,
};
use chrono::{TimeDelta, Utc};
use common::*;

const MINUTE: Duration = Duration::from_secs(60);

fn one_slot() -> Config {
    Config {
        pool_size: 1,
        cleaner_interval: MINUTE,
        max_run_time: Duration::from_secs(3600),
        ..config()
    }
}

/// A record as another instance would have left it, `age` old.
fn foreign(owner: &str, status: QueryStatus, lease: Option<Lease>, age: TimeDelta) -> AsyncQuery {
    let at = Utc::now() - age;
    AsyncQuery {
        id: uuid::Uuid::new_v4(),
        kind: JobKind::Query,
        query: "remote".into(),
        query_type: "".into(),
        principal: Principal::new(owner),
        status,
        async_after: Duration::ZERO,
        max_run_time: Duration::from_secs(3600),
        created_on: at,
        updated_on: at,
        result: None,
        lease,
        idempotency_key: None,
        progress: None,
        attempt: 1,
        retry_at: None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_overview_counts_per_instance_and_principal_and_follows_a_dead_lease() {
    let h = harness(one_slot());
    let own = h.service.config().instance_id;
    // Alice's job takes the only slot here.
    let running = submit(
        &h.service,
        SubmitRequest::query("block").with_async_after(Duration::ZERO),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        h.service.get(&alice(), running.id).await.unwrap().status,
        QueryStatus::Processing
    );
    // Another instance runs Carol's job and will stop renewing in 30 s;
    // Bob has waited 10 minutes, and waits again now.
    let dead = uuid::Uuid::new_v4();
    let elsewhere = foreign(
        "carol",
        QueryStatus::Processing,
        Some(Lease {
            owner: dead,
            expires_at: Utc::now() + TimeDelta::seconds(30),
        }),
        TimeDelta::zero(),
    );
    let waiting = foreign("bob", QueryStatus::Queued, None, TimeDelta::minutes(10));
    h.dao.create(&elsewhere).await.unwrap();
    h.dao.create(&waiting).await.unwrap();
    let later = h
        .service
        .submit(
            &bob(),
            SubmitRequest::query("sleep 1").with_async_after(Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(later.status, QueryStatus::Queued);

    let overview = h.service.overview(&admin()).await.unwrap();
    assert_eq!((overview.queued, overview.running), (2, 2));
    let instances: Vec<_> = overview
        .instances
        .iter()
        .map(|i| (i.instance, i.running, i.expired_leases))
        .collect();
    let mut want = vec![(own, 1, 0), (dead, 1, 0)];
    want.sort();
    assert_eq!(instances, want);
    let principals: Vec<_> = overview
        .principals
        .iter()
        .map(|p| (p.principal.as_str(), p.queued, p.running))
        .collect();
    assert_eq!(
        principals,
        [("alice", 0, 1), ("bob", 2, 0), ("carol", 0, 1)]
    );
    let oldest = overview.oldest_queued.expect("a queued job");
    assert_eq!((oldest.id, oldest.principal.as_str()), (waiting.id, "bob"));
    assert_eq!(oldest.kind, JobKind::Query);
    assert!(
        oldest.waited >= Duration::from_secs(600),
        "{:?}",
        oldest.waited
    );
    assert_eq!(overview.expired_lease_count, 0);
    assert!(overview.cleaner.is_empty(), "no sweep yet");

    // The lease runs out before the cleaner's next sweep: it shows.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let overview = h.service.overview(&admin()).await.unwrap();
    assert_eq!(overview.expired_lease_count, 1);
    let expired = &overview.expired_leases[0];
    assert_eq!((expired.id, expired.instance), (elsewhere.id, dead));
    assert_eq!(expired.principal, "carol");
    let of_dead = overview.instances.iter().find(|i| i.instance == dead);
    assert_eq!(of_dead.map(|i| i.expired_leases), Some(1));

    // The sweep ends it, and the overview says what the cleaner did.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.service.get(&admin(), elsewhere.id).await.unwrap().status,
        QueryStatus::TimedOut
    );
    let overview = h.service.overview(&admin()).await.unwrap();
    assert_eq!(overview.expired_lease_count, 0);
    assert_eq!(overview.running, 1);
    assert_eq!(overview.cleaner.len(), 1, "{:?}", overview.cleaner);
    let sweep = &overview.cleaner[0];
    assert_eq!((sweep.leases_expired, sweep.timed_out), (1, 1));
    assert!(sweep.at > overview.at - TimeDelta::seconds(60));
}

#[tokio::test(start_paused = true)]
async fn only_admins_get_the_overview() {
    let h = harness(one_slot());
    let refused = h.service.overview(&alice()).await;
    assert!(
        matches!(refused, Err(Error::Forbidden { .. })),
        "{refused:?}"
    );
    let overview = h.service.overview(&admin()).await.unwrap();
    assert_eq!((overview.queued, overview.running), (0, 0));
    assert!(overview.oldest_queued.is_none());
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn the_http_overview_is_for_admins() {
    let h = harness(one_slot());
    let client = HttpClient::serve(h.service.clone()).await;
    let (status, body) = client
        .submit(
            serde_json::json!({ "query": "block", "asyncAfterSeconds": 0 }),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = client.get("/asyncOverview", "alice").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errors"][0]["code"], "forbidden");
    let (status, body) = client.get_as("/asyncOverview", "root", "admin").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["type"], "asyncOverview");
    let attributes = &body["data"]["attributes"];
    assert_eq!(attributes["running"], 1, "{body}");
    assert_eq!(attributes["principals"][0]["principal"], "alice");
    assert!(attributes["oldestQueued"].is_null());
}
