//! Only the submitting principal and admins see a job.

mod common;

use std::time::Duration;

use async_query::{Error, QueryStatus, SubmitRequest};
use common::*;

#[tokio::test(start_paused = true)]
async fn another_principal_gets_the_same_error_as_for_an_unknown_id() {
    let h = harness(config());
    let job = submit(
        &h.service,
        SubmitRequest::query("block").with_async_after(Duration::ZERO),
    )
    .await;
    let unknown = uuid::Uuid::new_v4();
    for id in [job.id, unknown] {
        let get = h.service.get(&bob(), id).await.unwrap_err();
        assert!(matches!(get, Error::NotFound { id: i } if i == id));
        assert!(matches!(
            h.service.wait(&bob(), id, SECOND).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            h.service.cancel(&bob(), id).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            h.service.download(&bob(), id, None).await,
            Err(Error::NotFound { .. })
        ));
    }
    assert_eq!(
        h.service.get(&bob(), job.id).await.unwrap_err().to_string(),
        format!("async query {} not found", job.id),
        "the message does not reveal that the job exists"
    );
    // Bob's failed cancel changed nothing.
    assert_eq!(
        h.service.get(&alice(), job.id).await.unwrap().status,
        QueryStatus::Processing
    );
    // A role that is not the admin role does not help.
    let poser = async_query::Principal::new("bob").with_role("administrator");
    assert!(h.service.get(&poser, job.id).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn admin_sees_waits_on_and_cancels_anyones_job() {
    let h = harness(config());
    let job = submit(
        &h.service,
        SubmitRequest::query("block").with_async_after(Duration::ZERO),
    )
    .await;
    assert_eq!(h.service.get(&admin(), job.id).await.unwrap().id, job.id);
    let waited = h.service.wait(&admin(), job.id, SECOND).await.unwrap();
    assert_eq!(waited.status, QueryStatus::Processing);
    let record = h
        .service
        .cancel(&admin(), job.id)
        .await
        .unwrap()
        .into_record();
    assert_eq!(record.status, QueryStatus::CancelComplete);
    assert_eq!(
        record.principal.name, "alice",
        "the owner stays the submitter"
    );
}

#[tokio::test(start_paused = true)]
async fn the_admin_role_is_configurable() {
    let h = harness(async_query::Config {
        admin_role: "ops".into(),
        ..config()
    });
    let job = submit(&h.service, SubmitRequest::query("x")).await;
    assert!(
        h.service.get(&admin(), job.id).await.is_err(),
        "\"admin\" is no longer special"
    );
    let ops = async_query::Principal::new("carol").with_role("ops");
    assert!(h.service.get(&ops, job.id).await.is_ok());
}
