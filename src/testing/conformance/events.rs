//! The `events` contract of a store that keeps status changes itself.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use super::records::{clean_up, now, record};
use crate::dao::{AsyncApiDao, EventStream, StatusChange};
use crate::event::EventPage;
use crate::model::QueryStatus::{self, *};

/// How long an event may take to become readable (a store may number
/// events only once every transaction that could precede them is over).
const READABLE_WITHIN: Duration = Duration::from_secs(10);

/// Reads `stream` after `after` until `done` holds for the page, or fails
/// after [`READABLE_WITHIN`].
pub(super) async fn read_until(
    dao: &dyn AsyncApiDao,
    stream: EventStream<'_>,
    after: Option<u64>,
    limit: usize,
    what: &str,
    done: impl Fn(&EventPage) -> bool,
) -> EventPage {
    let deadline = tokio::time::Instant::now() + READABLE_WITHIN;
    loop {
        let page = dao
            .events(stream, after, limit)
            .await
            .expect("events failed");
        if done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {READABLE_WITHIN:?}; the last page was {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `events`: a store that [keeps events](AsyncApiDao::keeps_events) records
/// every creation and status change in its owner's stream, numbered 1, 2,
/// 3, … per owner, and in the stream of every change; reads page by
/// cursor; a cursor from beyond the newest restarts with `missed`; and
/// concurrent writers never make a follower of the stream of every change
/// skip or repeat an event. A store that keeps none passes.
///
/// # Panics
///
/// On the first broken rule, with a message that names it.
pub async fn dao_events(dao: &dyn AsyncApiDao) {
    if !dao.keeps_events() {
        return;
    }
    let (alice, bob) = (
        format!("events-a-{}", Uuid::new_v4()),
        format!("events-b-{}", Uuid::new_v4()),
    );
    let start = dao
        .events(EventStream::All, None, 0)
        .await
        .expect("events failed")
        .newest;
    let now = now();
    let mut job = record(now, Queued);
    job.principal.name = alice.as_str().into();
    let mut other = record(now, Queued);
    other.principal.name = bob.as_str().into();
    dao.create(&job).await.expect("create failed");
    dao.create(&other).await.expect("create failed");
    for (id, from, to) in [
        (job.id, Queued, Processing),
        (other.id, Queued, Cancelled),
        (job.id, Processing, Complete),
    ] {
        dao.update_status(id, StatusChange::new(from, to, now))
            .await
            .expect("update failed");
    }

    let own = EventStream::Owner(&alice);
    let page = read_until(
        dao,
        own,
        None,
        10,
        "the owner's 3 events must be readable",
        |p| p.events.len() >= 3,
    )
    .await;
    let seen: Vec<(u64, Uuid, Option<QueryStatus>, QueryStatus)> = page
        .events
        .iter()
        .map(|e| (e.seq, e.event.id, e.event.from, e.event.to))
        .collect();
    assert_eq!(
        seen,
        [
            (1, job.id, None, Queued),
            (2, job.id, Some(Queued), Processing),
            (3, job.id, Some(Processing), Complete),
        ],
        "an owner's stream holds its own creations and changes, numbered from 1"
    );
    let first = &page.events[0].event;
    assert!(
        *first.owner == *alice && first.kind == job.kind && first.at == now,
        "an event names the job's owner, kind and the change's time: {first:?}"
    );
    assert_eq!(
        (page.last_id, page.newest, page.missed),
        (3, 3, false),
        "a full read ends at the newest position"
    );

    let rest = dao.events(own, Some(1), 10).await.expect("events failed");
    let seqs: Vec<u64> = rest.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3], "a page starts after the cursor");
    let one = dao.events(own, Some(0), 1).await.expect("events failed");
    assert_eq!(
        (one.events.len(), one.last_id),
        (1, 1),
        "a page holds at most `limit` events and its last_id is the last one's position"
    );
    let none = dao.events(own, Some(3), 10).await.expect("events failed");
    assert!(
        none.events.is_empty() && none.last_id == 3 && !none.missed,
        "past the newest event a page is empty and keeps the cursor: {none:?}"
    );
    let future = dao.events(own, Some(99), 10).await.expect("events failed");
    assert!(
        future.missed && future.events.first().map(|e| e.seq) == Some(1),
        "a cursor beyond the newest restarts from the oldest with `missed`: {future:?}"
    );

    let bobs = read_until(
        dao,
        EventStream::Owner(&bob),
        None,
        10,
        "the other owner's events must be readable",
        |p| p.events.len() >= 2,
    )
    .await;
    assert!(
        bobs.events.iter().map(|e| e.seq).eq([1, 2])
            && bobs.events.iter().all(|e| e.event.id == other.id),
        "each owner's stream holds only that owner's changes: {bobs:?}"
    );
    let stranger = format!("events-c-{}", Uuid::new_v4());
    let empty = dao
        .events(EventStream::Owner(&stranger), None, 10)
        .await
        .expect("events failed");
    assert!(
        empty.events.is_empty() && empty.newest == 0 && empty.last_id == 0,
        "an owner without events has an empty stream: {empty:?}"
    );

    let all = read_until(
        dao,
        EventStream::All,
        Some(start),
        1000,
        "all 5 changes must be in the stream of every change",
        |p| {
            p.events
                .iter()
                .filter(|e| e.event.id == job.id || e.event.id == other.id)
                .count()
                >= 5
        },
    )
    .await;
    assert!(
        all.events.windows(2).all(|w| w[0].seq < w[1].seq),
        "the stream of every change is in position order"
    );
    let order: Vec<QueryStatus> = all
        .events
        .iter()
        .filter(|e| e.event.id == job.id)
        .map(|e| e.event.to)
        .collect();
    assert_eq!(
        order,
        [Queued, Processing, Complete],
        "one job's changes keep their order"
    );

    follower_sees_every_change_once(dao, start).await;
    dao.tidy_events().await.expect("tidy_events failed");
    clean_up(dao, &[job.id, other.id]).await;
}

/// Writers change jobs concurrently while a follower reads the stream of
/// every change page by page: it sees each change once, in a gapless
/// order of positions.
async fn follower_sees_every_change_once(dao: &dyn AsyncApiDao, start: u64) {
    const WRITERS: usize = 4;
    const JOBS: usize = 25;
    let owner = format!("events-w-{}", Uuid::new_v4());
    let mut ids = Vec::new();
    let writers = (0..WRITERS).map(|_| {
        let owner = owner.clone();
        async move {
            let mut mine = Vec::new();
            for _ in 0..JOBS {
                let now = now();
                let mut job = record(now, Queued);
                job.principal.name = owner.as_str().into();
                dao.create(&job).await.expect("create failed");
                dao.update_status(job.id, StatusChange::new(Queued, Processing, now))
                    .await
                    .expect("update failed");
                mine.push(job.id);
            }
            mine
        }
    });
    let expected = WRITERS * JOBS * 2;
    let follow = async {
        let mut seen = HashSet::new();
        let mut after = start;
        let deadline = tokio::time::Instant::now() + READABLE_WITHIN * 3;
        let mut last = start;
        while seen.len() < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a follower saw {} of {expected} changes",
                seen.len()
            );
            let page = dao
                .events(EventStream::All, Some(after), 7)
                .await
                .expect("events failed");
            assert!(
                !page.missed,
                "nothing was trimmed, yet the follower missed events"
            );
            for event in &page.events {
                assert_eq!(
                    event.seq,
                    last + 1,
                    "positions in the stream of every change follow one another"
                );
                last = event.seq;
                if *event.event.owner == *owner {
                    assert!(
                        seen.insert((event.event.id, event.event.to)),
                        "a change was seen twice: {event:?}"
                    );
                }
            }
            after = page.last_id;
            if page.events.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (written, ()) = tokio::join!(futures::future::join_all(writers), follow);
    for mine in written {
        ids.extend(mine);
    }
    clean_up(dao, &ids).await;
}
