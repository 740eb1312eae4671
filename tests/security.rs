//! Only the submitting principal and admins see a job.

mod common;

use std::time::Duration;

use async_query::{Config, Error, QueryStatus, SubmitRequest};
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
        &*record.principal.name, "alice",
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

#[tokio::test(start_paused = true)]
async fn history_lists_ones_own_jobs_and_an_admin_everyones() {
    use async_query::dao::KindFilter;
    use async_query::history::HistoryQuery;
    let h = harness(Config {
        max_queued: 100,
        ..config()
    });
    let mut alices = Vec::new();
    for n in 0..5 {
        let request = if n == 2 {
            SubmitRequest::export("block", async_query::ExportFormat::CSV)
        } else {
            SubmitRequest::query("block")
        };
        alices.push(
            submit(&h.service, request.with_async_after(Duration::ZERO))
                .await
                .id,
        );
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    let bob_job = h
        .service
        .submit(
            &bob(),
            SubmitRequest::query("block").with_async_after(Duration::ZERO),
        )
        .await
        .unwrap()
        .id;
    let newest_first: Vec<_> = alices.iter().rev().copied().collect();
    let ids = |page: &async_query::history::HistoryPage| {
        page.jobs.iter().map(|j| j.id).collect::<Vec<_>>()
    };

    // Alice pages through her own jobs, two at a time; asking for bob's
    // changes nothing.
    let mut query = HistoryQuery::new().with_page_size(2);
    query.principal = Some("bob".into());
    let mut seen = Vec::new();
    loop {
        let page = h.service.list(&alice(), &query).await.unwrap();
        seen.extend(ids(&page));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    let bobs = h.service.list(&bob(), &HistoryQuery::new()).await.unwrap();
    assert_eq!(ids(&bobs), vec![bob_job]);

    // An admin sees everyone's, or one principal's.
    let all = h
        .service
        .list(&admin(), &HistoryQuery::new())
        .await
        .unwrap();
    assert_eq!(all.jobs.len(), 6);
    assert_eq!(all.jobs[0].id, bob_job, "newest first");
    let mut only_bob = HistoryQuery::new();
    only_bob.principal = Some("bob".into());
    let page = h.service.list(&admin(), &only_bob).await.unwrap();
    assert_eq!(ids(&page), vec![bob_job]);

    // Filters: the one export, and statuses.
    let exports = HistoryQuery::new().with_kind(KindFilter::TableExport);
    let page = h.service.list(&alice(), &exports).await.unwrap();
    assert_eq!(ids(&page), vec![alices[2]]);
    h.service.cancel(&alice(), alices[0]).await.unwrap();
    let ended =
        HistoryQuery::new().with_statuses([QueryStatus::CancelComplete, QueryStatus::Cancelled]);
    let page = h.service.list(&alice(), &ended).await.unwrap();
    assert_eq!(ids(&page), vec![alices[0]]);

    // A cursor that was not handed out is a clear error.
    let forged = HistoryQuery::new().after("not-a-cursor");
    assert!(matches!(
        h.service.list(&alice(), &forged).await,
        Err(Error::InvalidRequest { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_principal_without_a_name_is_refused_everywhere() {
    let h = harness(config());
    let job = submit(&h.service, SubmitRequest::query("sleep 1")).await;
    for name in ["", "  "] {
        let nobody = async_query::Principal::new(name).with_role("admin");
        let refused = |answer: Result<(), Error>| {
            assert!(
                matches!(answer, Err(Error::InvalidPrincipal { .. })),
                "{name:?}: {answer:?}"
            );
        };
        let s = &h.service;
        refused(
            s.submit(&nobody, SubmitRequest::query("sleep 1"))
                .await
                .map(|_| ()),
        );
        refused(
            s.submit_many(&nobody, vec![SubmitRequest::query("sleep 1")])
                .await
                .map(|_| ()),
        );
        refused(s.get(&nobody, job.id).await.map(|_| ()));
        refused(s.wait(&nobody, job.id, SECOND).await.map(|_| ()));
        refused(s.cancel(&nobody, job.id).await.map(|_| ()));
        refused(s.download(&nobody, job.id, None).await.map(|_| ()));
        let history = async_query::history::HistoryQuery::new();
        refused(s.list(&nobody, &history).await.map(|_| ()));
    }
    let everyone = h
        .service
        .list(&admin(), &async_query::history::HistoryQuery::new())
        .await
        .unwrap();
    assert_eq!(everyone.jobs.len(), 1, "nothing was stored for them");
}

/// A client id taken by someone else's job is only "unavailable": the
/// answer is the same whether that job is running here or long finished,
/// and says nothing of whose it is. Its owner (or an admin) hears that it
/// is a duplicate.
#[tokio::test(start_paused = true)]
async fn a_taken_client_id_is_a_duplicate_only_to_those_who_may_see_it() {
    let h = harness(config());
    let running = uuid::Uuid::new_v4();
    let finished = uuid::Uuid::new_v4();
    submit(
        &h.service,
        SubmitRequest::query("block")
            .with_id(running)
            .with_async_after(Duration::ZERO),
    )
    .await;
    let done = submit(
        &h.service,
        SubmitRequest::query("sleep 1").with_id(finished),
    )
    .await;
    assert_eq!(done.status, QueryStatus::Complete);
    for id in [running, finished] {
        let again = |who: async_query::Principal| {
            let service = h.service.clone();
            async move {
                service
                    .submit(&who, SubmitRequest::query("sleep 1").with_id(id))
                    .await
            }
        };
        assert!(matches!(again(alice()).await, Err(Error::DuplicateId { id: i }) if i == id));
        assert!(matches!(again(admin()).await, Err(Error::DuplicateId { id: i }) if i == id));
        match again(bob()).await {
            Err(e @ Error::IdUnavailable { .. }) => {
                assert!(!e.to_string().contains("alice"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let batch = h
            .service
            .submit_many(&bob(), vec![SubmitRequest::query("sleep 1").with_id(id)])
            .await;
        assert!(
            matches!(batch, Err(Error::IdUnavailable { .. })),
            "{batch:?}"
        );
    }
}
