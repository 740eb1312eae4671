use super::*;
use crate::model::Lease;
use QueryStatus::*;

const HERE: Uuid = Uuid::from_u128(1);
const ELSEWHERE: Uuid = Uuid::from_u128(2);

fn record(status: QueryStatus, owner: Option<Uuid>) -> AsyncQuery {
    let job = crate::model::tests::record(status);
    AsyncQuery {
        id: Uuid::from_u128(42),
        lease: owner.map(|owner| Lease {
            owner,
            expires_at: job.created_on,
        }),
        ..job
    }
}

/// Mirrors `job` (from `from`) and returns the events it emitted.
fn mirror(
    table: &mut JobTable,
    from: Option<QueryStatus>,
    job: AsyncQuery,
    how: Mirror,
) -> (Mirrored, Vec<(Option<QueryStatus>, QueryStatus)>) {
    let mut events = Vec::new();
    let mirrored = table.mirror(
        from,
        Arc::new(job),
        how,
        HERE,
        CancellationToken::new,
        &mut |_, from, to| events.push((from, to)),
    );
    (mirrored, events)
}

fn queued_table() -> (JobTable, AsyncQuery) {
    let job = record(Queued, None);
    let mut table = JobTable::default();
    table.insert(
        Arc::new(job.clone()),
        CancellationToken::new(),
        Place::Queued,
    );
    (table, job)
}

#[test]
fn counts_queued_jobs_as_they_come_and_go() {
    let (mut table, job) = queued_table();
    assert_eq!(table.queued(), 1);
    assert!(table.is_queued(job.id) && !table.runs(job.id) && !table.any_running());
    let mut running = record(Processing, Some(HERE));
    running.id = Uuid::from_u128(7);
    table.insert(
        Arc::new(running.clone()),
        CancellationToken::new(),
        Place::Running,
    );
    assert_eq!(table.queued(), 1);
    assert!(table.runs(running.id) && table.any_running());
    assert_eq!(table.running(), [running.id]);
    let (run, queue) = table.running_and_queued();
    assert_eq!((run, queue.len()), (vec![running.id], 1));
    assert!(table.remove(job.id));
    assert!(!table.remove(job.id), "removed twice");
    assert_eq!(table.queued(), 0);
}

#[test]
fn a_claimed_job_runs_here_and_a_terminal_one_leaves() {
    let (mut table, job) = queued_table();
    let mut events = Vec::new();
    table.announce([&job], &mut |_, from, to| events.push((from, to)));
    table.announce([&job], &mut |_, from, to| events.push((from, to)));
    assert_eq!(events, [(None, Queued)], "announced once");

    let claimed = record(Processing, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Queued), claimed, Mirror::Claim);
    assert!(m.token.is_some() && !m.left);
    assert_eq!(events, [(Some(Queued), Processing)]);
    assert!(table.runs(job.id));
    assert_eq!(table.queued(), 0);

    let done = record(Complete, None);
    let (m, events) = mirror(&mut table, Some(Processing), done, Mirror::Follow);
    assert!(m.left);
    assert_eq!(events, [(Some(Processing), Complete)]);
    assert!(!table.contains(job.id));
}

/// A cancel commits after the claim but is mirrored before the claim's
/// reply: the missing step is emitted first, the late claim is skipped
/// as stale, and the job stays local (its token can stop it).
#[test]
fn a_change_that_overtakes_the_claim_is_mirrored_in_lifecycle_order() {
    let (mut table, job) = queued_table();
    let cancelled = record(Cancelled, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Processing), cancelled, Mirror::Follow);
    assert!(!m.left, "the claim is on its way: the job stays");
    assert_eq!(
        events,
        [
            (None, Queued),
            (Some(Queued), Processing),
            (Some(Processing), Cancelled)
        ]
    );
    assert!(
        table.is_queued(job.id),
        "still queued until the claim arrives"
    );

    let claimed = record(Processing, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Queued), claimed, Mirror::Claim);
    assert!(
        events.is_empty(),
        "a stale change emits nothing: {events:?}"
    );
    assert!(m.token.is_some());
    assert!(table.runs(job.id) && table.queued() == 0);
}

/// The race CI caught: a cancel commits `PROCESSING → CANCELLED`; the
/// worker, finding its job cancelled, commits `CANCELLED →
/// CANCEL_COMPLETE` and is mirrored first (emitting the missing step, so
/// the job leaves the table); the cancel's own change arrives last. It is
/// stale and emits nothing, though the job is no longer in the table.
#[test]
fn a_change_mirrored_after_its_job_ended_here_is_stale() {
    let (mut table, _) = queued_table();
    let claimed = record(Processing, Some(HERE));
    mirror(&mut table, Some(Queued), claimed, Mirror::Claim);
    let done = record(CancelComplete, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Cancelled), done, Mirror::Follow);
    assert!(m.left);
    assert_eq!(
        events,
        [
            (Some(Processing), Cancelled),
            (Some(Cancelled), CancelComplete)
        ]
    );

    let late = record(Cancelled, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Processing), late, Mirror::Follow);
    assert!(
        events.is_empty(),
        "a stale change emits nothing: {events:?}"
    );
    assert!(m.token.is_none() && !m.left);
}

/// The table remembers only the last jobs that ended here: memory stays
/// bounded, and a change of a job forgotten long ago is emitted as one of
/// a job that never ran here would be.
#[test]
fn the_memory_of_ended_jobs_is_bounded() {
    let mut table = JobTable::default();
    let end = |table: &mut JobTable, n: u128| {
        let mut job = record(Processing, Some(HERE));
        job.id = Uuid::from_u128(n);
        table.insert(
            Arc::new(job.clone()),
            CancellationToken::new(),
            Place::Running,
        );
        job.status = Complete;
        mirror(table, Some(Processing), job, Mirror::Follow);
    };
    for n in 0..=ENDED_REMEMBERED as u128 {
        end(&mut table, n);
    }
    assert_eq!(table.ended.ids.len(), ENDED_REMEMBERED);
    assert_eq!(table.ended.order.len(), ENDED_REMEMBERED);
    let late = |n: u128| {
        let mut job = record(Cancelled, Some(HERE));
        job.id = Uuid::from_u128(n);
        job
    };
    let (_, events) = mirror(&mut table, Some(Processing), late(0), Mirror::Follow);
    assert_eq!(events, [(Some(Processing), Cancelled)], "forgotten");
    let (_, events) = mirror(&mut table, Some(Processing), late(1), Mirror::Follow);
    assert!(events.is_empty(), "still remembered: {events:?}");
}

/// A retry puts the job back in the queue here; a claim of the next
/// attempt mirrored before the retry first emits it, and the late retry
/// (an earlier attempt's record) is then stale.
#[test]
fn records_of_a_later_attempt_come_after_every_earlier_one() {
    let (mut table, job) = queued_table();
    mirror(
        &mut table,
        Some(Queued),
        record(Processing, Some(HERE)),
        Mirror::Claim,
    );
    let retried = AsyncQuery {
        attempt: 2,
        ..record(Queued, None)
    };
    let (m, events) = mirror(
        &mut table,
        Some(Processing),
        retried.clone(),
        Mirror::Follow,
    );
    assert_eq!(events, [(Some(Processing), Queued)]);
    assert!(
        !m.left && table.is_queued(job.id) && table.queued() == 1,
        "queued again"
    );

    let third = AsyncQuery {
        attempt: 3,
        ..record(Processing, Some(HERE))
    };
    let (_, events) = mirror(&mut table, Some(Queued), third, Mirror::Claim);
    assert_eq!(
        events,
        [(Some(Queued), Processing)],
        "attempt 2's claim was missed: only its own step is due from QUEUED"
    );
    assert!(table.runs(job.id) && table.queued() == 0);

    let (_, events) = mirror(&mut table, Some(Processing), retried, Mirror::Follow);
    assert!(
        events.is_empty(),
        "an earlier attempt's record is stale: {events:?}"
    );

    // A claim of attempt 4 mirrored before the retry that queued it.
    let fourth = AsyncQuery {
        attempt: 4,
        ..record(Processing, Some(HERE))
    };
    let (_, events) = mirror(&mut table, Some(Queued), fourth, Mirror::Claim);
    assert_eq!(
        events,
        [(Some(Processing), Queued), (Some(Queued), Processing)],
        "the missed retry is emitted first"
    );
}

#[test]
fn a_queued_job_claimed_elsewhere_leaves_the_table() {
    let (mut table, job) = queued_table();
    let elsewhere = record(Processing, Some(ELSEWHERE));
    let (m, _) = mirror(&mut table, Some(Queued), elsewhere, Mirror::Follow);
    assert!(m.left);
    assert!(!table.contains(job.id));
    assert_eq!(table.queued(), 0);
}

#[test]
fn a_claim_of_an_unknown_job_adopts_it_and_others_are_only_emitted() {
    let mut table = JobTable::default();
    let claimed = record(Processing, Some(HERE));
    let (m, events) = mirror(&mut table, Some(Queued), claimed.clone(), Mirror::Claim);
    assert!(m.token.is_some());
    assert_eq!(events, [(Some(Queued), Processing)]);
    assert!(table.runs(claimed.id));

    let mut other = record(Complete, None);
    other.id = Uuid::from_u128(9);
    let (m, events) = mirror(&mut table, Some(Processing), other.clone(), Mirror::Follow);
    assert!(m.token.is_none() && !m.left);
    assert_eq!(events, [(Some(Processing), Complete)]);
    assert!(!table.contains(other.id));
}

#[test]
fn waiters_see_updates_and_only_jobs_claimed_here_can_be_awaited() {
    let (mut table, job) = queued_table();
    assert!(
        table.subscribe_if_ours(job.id, HERE).is_none(),
        "queued here"
    );
    let mut rx = table.subscribe(job.id).expect("local");
    let claimed = record(Processing, Some(HERE));
    mirror(&mut table, Some(Queued), claimed, Mirror::Claim);
    assert_eq!(rx.borrow_and_update().status, Processing);
    assert!(table.subscribe_if_ours(job.id, HERE).is_some());
}

#[test]
fn progress_reaches_waiters_of_a_running_job_only() {
    let (mut table, job) = queued_table();
    let progress = Progress::records(3).of(10);
    assert!(
        table.progressed(job.id, &progress).is_none(),
        "a queued job has no progress"
    );
    let mut rx = table.subscribe(job.id).expect("local");
    mirror(
        &mut table,
        Some(Queued),
        record(Processing, Some(HERE)),
        Mirror::Claim,
    );
    rx.borrow_and_update();
    let updated = table.progressed(job.id, &progress).expect("running here");
    assert_eq!(updated.progress.as_ref(), Some(&progress));
    assert!(rx.has_changed().unwrap_or(false), "waiters are told");
    assert_eq!(rx.borrow().progress.as_ref(), Some(&progress));
    let unknown = Uuid::from_u128(99);
    assert!(table.progressed(unknown, &progress).is_none());
    mirror(
        &mut table,
        Some(Processing),
        record(Complete, None),
        Mirror::Follow,
    );
    assert!(
        table.progressed(job.id, &progress).is_none(),
        "a finished job takes no more"
    );
}
