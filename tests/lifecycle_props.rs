//! Property test: random interleavings of submissions, completions,
//! failures, cancellations, clock advances, cleaner sweeps, restarts
//! (crashes and graceful shutdowns) and job-store faults (a call that fails,
//! or whose reply is lost after it was applied) against the in-memory DAO.
//! After every step:
//!
//! 1. every status change observed is in the transition table;
//! 2. no terminal job ever changes again (status and result);
//! 3. every `COMPLETE` export's record points at an object that exists;
//! 4. every stored object is the result of a `COMPLETE` record, or the
//!    output of a job still in flight (its record not written yet);
//!
//! and at the end, after enough time for every limit to pass and the
//! cleaner to sweep, every job has reached exactly one terminal state and
//! the stored objects are exactly the results the records point at.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_query::dao::ListFilter;
use async_query::testing::{Faults, FaultyDao, ScriptedExecutor};
use async_query::{
    AsyncApiDao, AsyncQuery, AsyncQueryService, Config, Error, ExportFormat, MemoryDao,
    MemoryStorage, QueryStatus, ResultBody, SubmitRequest, Subscription,
};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Submit a job whose script is one of the executor's verbs.
    Submit { script: Script, async_after_ms: u64 },
    /// Cancel the n-th submitted job (modulo the count).
    Cancel(usize),
    /// Let Tokio time pass (executors finish, cleaner sweeps, limits hit).
    Advance(u64),
    /// Drop the service without shutdown and start a new one.
    Crash { same_instance: bool },
    /// Shut down gracefully and start a new one.
    Restart { grace_ms: u64 },
    /// Make the `nth` job-store call from now fail; with `lose_reply`, the
    /// call is applied and only its reply is lost.
    Fault { nth: u64, lose_reply: bool },
    /// Make every job-store call fail for this many milliseconds (a
    /// database that goes away and comes back).
    Outage(u64),
}

#[derive(Debug, Clone)]
enum Script {
    Sleep(u64),
    Fail,
    Panic,
    Block,
    Export(u64),
}

impl Script {
    fn request(&self) -> SubmitRequest {
        match self {
            Script::Sleep(ms) => SubmitRequest::query(format!("sleep {ms}")),
            Script::Fail => SubmitRequest::query("fail on purpose"),
            Script::Panic => SubmitRequest::query("panic on purpose"),
            Script::Block => SubmitRequest::query("block"),
            Script::Export(rows) => {
                SubmitRequest::export(format!("rows {rows} every 5"), ExportFormat::CSV)
            }
        }
    }
}

fn script() -> impl Strategy<Value = Script> {
    prop_oneof![
        4 => (0u64..3_000).prop_map(Script::Sleep),
        1 => Just(Script::Fail),
        1 => Just(Script::Panic),
        1 => Just(Script::Block),
        2 => (0u64..400).prop_map(Script::Export),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (script(), prop_oneof![Just(0u64), 0u64..2_000]).prop_map(|(script, async_after_ms)| Op::Submit { script, async_after_ms }),
        3 => (0usize..64).prop_map(Op::Cancel),
        4 => (1u64..90_000).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(|same_instance| Op::Crash { same_instance }),
        1 => (0u64..3_000).prop_map(|grace_ms| Op::Restart { grace_ms }),
        2 => (1u64..6, any::<bool>()).prop_map(|(nth, lose_reply)| Op::Fault { nth, lose_reply }),
        1 => (1u64..5_000).prop_map(Op::Outage),
    ]
}

struct World {
    /// What the service writes through (`faulty`), and what the checks
    /// read (`dao`, never faulted).
    dao: Arc<MemoryDao>,
    faulty: Arc<FaultyDao>,
    faults: Arc<Faults>,
    storage: MemoryStorage,
    config: Config,
    service: AsyncQueryService,
    events: Subscription,
    /// Jobs whose submission succeeded.
    ids: Vec<uuid::Uuid>,
    /// Jobs whose submission failed with a job-store error: stored or not.
    maybe: Vec<uuid::Uuid>,
    /// Last seen record of each job.
    seen: HashMap<uuid::Uuid, AsyncQuery>,
    /// Jobs whose terminal event was delivered.
    ended: HashSet<uuid::Uuid>,
}

/// A job-store fault reached the caller: a typed error, nothing else.
fn injected(e: &Error) -> bool {
    matches!(e, Error::Dao { .. })
}

impl World {
    fn start(
        dao: Arc<FaultyDao>,
        storage: MemoryStorage,
        config: Config,
    ) -> (AsyncQueryService, Subscription) {
        let service = AsyncQueryService::builder()
            .config(config)
            .dao(dao)
            .storage(Arc::new(storage))
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .expect("service builds");
        let events = service.subscribe(&admin());
        (service, events)
    }

    /// Checks every event delivered so far and the stored state; at the
    /// `end`, no stored object may be left without its record.
    async fn check(&mut self, end: bool) -> Result<(), TestCaseError> {
        while let Ok(Ok(event)) = tokio::time::timeout(Duration::ZERO, self.events.recv()).await {
            if event.progress.is_some() {
                // Exports report their rows: a progress event, only while
                // the job runs.
                prop_assert!(
                    event.from == Some(QueryStatus::Processing)
                        && event.to == QueryStatus::Processing,
                    "a progress event outside PROCESSING: {:?}",
                    event
                );
                prop_assert!(
                    !self.ended.contains(&event.id),
                    "progress after the job's end: {:?}",
                    event
                );
            } else if let Some(from) = event.from {
                prop_assert!(
                    from.can_transition_to(event.to),
                    "illegal event {from} -> {}",
                    event.to
                );
                if event.to.is_terminal() {
                    self.ended.insert(event.id);
                }
            }
        }
        let records = self.dao.list(&ListFilter::default()).await.expect("list");
        for id in &self.ids {
            prop_assert!(
                records.iter().any(|r| r.id == *id),
                "the record of {} vanished",
                id
            );
        }
        let stored = self.storage.names();
        let mut stored_names = Vec::new();
        let mut in_flight = Vec::new();
        for record in records {
            prop_assert!(
                self.ids.contains(&record.id) || self.maybe.contains(&record.id),
                "a record appeared: {:?}",
                record.id
            );
            if !record.status.is_terminal() {
                in_flight.push(record.id.to_string());
            }
            if let Some(before) = self.seen.get(&record.id) {
                if before.status.is_terminal() {
                    prop_assert_eq!(before, &record, "a terminal job changed");
                } else if before.status != record.status {
                    prop_assert!(
                        reachable(before.status, record.status),
                        "{} cannot become {}",
                        before.status,
                        record.status
                    );
                }
            }
            if let Some(ResultBody::Stored(name)) = record.result.as_ref().map(|r| &r.body) {
                prop_assert_eq!(
                    record.status,
                    QueryStatus::Complete,
                    "only complete exports point at a result"
                );
                prop_assert!(
                    stored.contains(name),
                    "COMPLETE export {} points at a missing object",
                    record.id
                );
                stored_names.push(name.clone());
            }
            self.seen.insert(record.id, record);
        }
        stored_names.sort();
        if end {
            prop_assert_eq!(
                stored,
                stored_names,
                "a stored object without its record, after the cleaner swept"
            );
        } else {
            for name in &stored {
                prop_assert!(
                    stored_names.contains(name) || in_flight.contains(name),
                    "stored object {} belongs to no COMPLETE record and no job in flight",
                    name
                );
            }
        }
        Ok(())
    }
}

/// Whether `to` can follow `from` through legal transitions.
fn reachable(from: QueryStatus, to: QueryStatus) -> bool {
    let mut frontier = vec![from];
    let mut seen = vec![from];
    while let Some(s) = frontier.pop() {
        for next in QueryStatus::ALL {
            if s.can_transition_to(next) && !seen.contains(&next) {
                if next == to {
                    return true;
                }
                seen.push(next);
                frontier.push(next);
            }
        }
    }
    false
}

async fn run(ops: Vec<Op>, claim_batch: usize) -> Result<(), TestCaseError> {
    let config = Config {
        pool_size: 2,
        claim_batch,
        max_queued: 1_000,
        max_run_time: Duration::from_secs(20),
        lease: Duration::from_secs(6),
        cleaner_interval: Duration::from_secs(5),
        cancellation_check_interval: Duration::from_secs(30),
        retention: Duration::from_secs(30 * 24 * 3600),
        event_capacity: 100_000,
        ..Config::default()
    };
    let dao = Arc::new(MemoryDao::new());
    let (faulty, faults) = FaultyDao::new(dao.clone());
    let faulty = Arc::new(faulty);
    let storage = MemoryStorage::new();
    let (service, events) = World::start(faulty.clone(), storage.clone(), config.clone());
    let mut world = World {
        dao,
        faulty,
        faults,
        storage,
        config,
        service,
        events,
        ids: Vec::new(),
        maybe: Vec::new(),
        seen: HashMap::new(),
        ended: HashSet::new(),
    };

    for op in ops {
        match op {
            Op::Submit {
                script,
                async_after_ms,
            } => {
                let id = uuid::Uuid::new_v4();
                let request = script
                    .request()
                    .with_id(id)
                    .with_async_after(Duration::from_millis(async_after_ms));
                match world.service.submit(&alice(), request).await {
                    Ok(job) => world.ids.push(job.id),
                    Err(e) if injected(&e) => world.maybe.push(id),
                    Err(e) => prop_assert!(false, "submit failed: {e:?}"),
                }
            }
            Op::Cancel(n) if !world.ids.is_empty() => {
                let id = world.ids[n % world.ids.len()];
                if let Err(e) = world.service.cancel(&alice(), id).await {
                    prop_assert!(injected(&e), "cancel failed: {e:?}");
                }
            }
            Op::Cancel(_) => {}
            Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Crash { same_instance } => {
                if !same_instance {
                    world.config.instance_id = uuid::Uuid::new_v4();
                }
                let (service, events) = World::start(
                    world.faulty.clone(),
                    world.storage.clone(),
                    world.config.clone(),
                );
                let old = std::mem::replace(&mut world.service, service);
                drop(old);
                world.check(false).await?;
                world.events = events;
            }
            Op::Restart { grace_ms } => {
                if let Err(e) = world
                    .service
                    .shutdown(Duration::from_millis(grace_ms))
                    .await
                {
                    prop_assert!(injected(&e), "shutdown failed: {e:?}");
                }
                world.check(false).await?;
                let (service, events) = World::start(
                    world.faulty.clone(),
                    world.storage.clone(),
                    world.config.clone(),
                );
                world.service = service;
                world.events = events;
            }
            Op::Fault { nth, lose_reply } => {
                world.faults.lose_replies(lose_reply);
                world.faults.fail_nth(nth);
            }
            Op::Outage(ms) => world.faults.fail_for(Duration::from_millis(ms)),
        }
        world.check(false).await?;
    }
    // Long enough for every queued job to run or time out, every lease to
    // expire and the cleaner to sweep after that; faults still scheduled
    // hit calls in this hour, and the sweeps after them catch up.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    world.check(true).await?;
    for id in &world.maybe {
        if let Some(record) = world.seen.get(id) {
            prop_assert!(
                record.status.is_terminal(),
                "{} ended the test {}",
                id,
                record.status
            );
        }
    }
    for (id, record) in &world.seen {
        prop_assert!(
            record.status.is_terminal(),
            "{id} ended the test {}",
            record.status
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_lifecycles_keep_every_invariant(
        ops in proptest::collection::vec(op(), 1..40),
        // 3: jobs claimed ahead, records written in batches behind.
        claim_batch in prop_oneof![Just(1usize), Just(3usize)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(ops, claim_batch))?;
    }
}
