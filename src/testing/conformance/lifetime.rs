//! Result lifetime: results past it go, their records stay.

use chrono::TimeDelta;
use futures::FutureExt;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, ExpiredRecord};
use crate::model::{QueryStatus, ResultBody};

use super::records::*;

/// `expire_results`: hands out only `COMPLETE` records with output (an
/// inline body or a stored export) updated before the cut-off, at most
/// `limit`, with their stored result's name; for exactly the ids the reaper
/// returns, the body becomes `Expired` and the message the one given,
/// while status, times and counts stay; an expired result is not handed
/// out again.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_expire_results(dao: &dyn AsyncApiDao) {
    let now = now();
    let old = now - TimeDelta::hours(2);
    let cut_off = now - TimeDelta::hours(1);
    let stored = format!("outlived-{}.csv", Uuid::new_v4().simple());
    let with_export = completed(dao, old, ResultBody::Stored(stored.clone())).await;
    let inline = completed(dao, old, ResultBody::Inline("[1]".into())).await;
    let refused = completed(dao, old, ResultBody::Stored("refused.csv".into())).await;
    let gone = completed(dao, old, ResultBody::Expired).await;
    let failed = walk(dao, old, &path_to(QueryStatus::Failure)).await;
    let recent = completed(dao, now, ResultBody::Inline("[2]".into())).await;
    let ours = [with_export.id, inline.id, refused.id];
    let all = [&ours[..], &[gone.id, failed.id, recent.id]].concat();
    let message = "result expired (conformance)";

    let mut keep_all = |_: Vec<ExpiredRecord>| futures::future::ready(Vec::new()).boxed();
    let purged = dao
        .expire_results(cut_off, 1, message, &mut keep_all)
        .await
        .expect("expire_results failed");
    assert!(
        purged.found <= 1,
        "expire_results must hand out at most `limit` records"
    );
    assert_eq!(purged.deleted, 0, "results the reaper keeps must stay");

    let refused_id = refused.id;
    let (handed, mut reap) = recording_reaper(move |id| ours.contains(&id) && id != refused_id);
    let purged = dao
        .expire_results(cut_off, 1_000, message, &mut reap)
        .await
        .expect("expire_results failed");
    let handed = handed_out(&handed);
    let find = |id: Uuid| handed.iter().find(|r| r.id == id);
    for (job, name) in [
        (&with_export, Some(stored.as_str())),
        (&inline, None),
        (&refused, Some("refused.csv")),
    ] {
        let record = find(job.id).unwrap_or_else(|| {
            panic!("a COMPLETE record with output older than the cut-off must be handed out")
        });
        assert_eq!(
            record.stored.as_deref(),
            name,
            "the stored name must be the result's, and none for an inline body"
        );
    }
    assert!(
        find(gone.id).is_none(),
        "a record whose result already expired is not handed out"
    );
    assert!(
        find(failed.id).is_none(),
        "a record without output is not handed out"
    );
    assert!(
        find(recent.id).is_none(),
        "a record updated after the cut-off is not handed out"
    );
    assert_eq!(purged.found, handed.len());
    assert_eq!(
        purged.deleted, 2,
        "exactly the ids the reaper returns have their results expired"
    );
    for before in [&with_export, &inline] {
        let after = dao
            .get(before.id)
            .await
            .expect("get failed")
            .expect("a record whose result expired must stay");
        let (was, is) = (before.result.as_ref(), after.result.as_ref());
        let is = is.expect("the record keeps a result");
        assert_eq!(is.body, ResultBody::Expired, "the body becomes Expired");
        assert_eq!(
            is.message.as_deref(),
            Some(message),
            "the message is the one given"
        );
        assert_eq!(
            (after.status, after.updated_on, after.created_on),
            (before.status, before.updated_on, before.created_on),
            "status and times stay"
        );
        assert_eq!(
            (is.record_count, is.content_length, Some(is.completed_on)),
            was.map(|r| (r.record_count, r.content_length, r.completed_on))
                .map_or((None, None, None), |(c, l, t)| (c, l, Some(t))),
            "counts and completion time stay"
        );
    }
    for job in [&refused, &failed, &recent] {
        let after = dao.get(job.id).await.expect("get failed");
        assert_eq!(after.as_ref(), Some(job), "other records must not change");
    }

    let mut none_again = |records: Vec<ExpiredRecord>| {
        let again: Vec<Uuid> = records
            .iter()
            .map(|r| r.id)
            .filter(|id| [with_export.id, inline.id].contains(id))
            .collect();
        assert!(
            again.is_empty(),
            "an expired result must not be handed out again"
        );
        futures::future::ready(Vec::new()).boxed()
    };
    dao.expire_results(cut_off, 1_000, message, &mut none_again)
        .await
        .expect("expire_results failed");
    clean_up(dao, &all).await;
}
