//! The one ending policy: for every way a job can end, the terminal status
//! and message its record gets. Workers, `cancel`, the cleaner, start-up
//! recovery and `shutdown` all ask [`decide`]; nothing else spells out an
//! ending.

use std::time::Duration;

use uuid::Uuid;

use chrono::{DateTime, Utc};

use super::clock::to_delta;
use crate::dao::StatusChange;
use crate::model::{AsyncQuery, QueryResult, QueryStatus};
use crate::retry::RetryPolicy;

/// Every way a job can end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// The executor's output was saved (an inline body, or a published
    /// export): the record gets that result.
    Finished,
    /// The executor returned an error, or its output could not be used or
    /// stored (this message).
    Failed(String),
    /// The executor returned an error it marked
    /// [`Transient`](crate::Transient) (this message): retried while
    /// attempts remain, otherwise as [`Failed`](Self::Failed).
    FailedTransiently(String),
    /// The executor panicked (with this message).
    Panicked(String),
    /// Its token fired because someone cancelled it while it ran.
    Cancelled,
    /// Cancelled while still queued: it never ran.
    CancelledWhileQueued,
    /// It ran past its run-time limit on the instance running it.
    RunTimeLimit(Duration),
    /// The cleaner found it past `max_run_time + lease`, not run here.
    Overran(Duration),
    /// Its owner (this instance, if known) stopped renewing its lease.
    LeaseExpired(Option<Uuid>),
    /// Cancelled, and nobody finished the cancellation within the
    /// cancellation interval.
    Unattended,
    /// Still running when `shutdown`'s grace period ended.
    Shutdown,
    /// Found running at start-up by a new run of the same instance.
    Interrupted,
    /// Its outcome could not be written to the job store (this error).
    NotSaved(String),
}

impl Ending {
    /// Whether a job that ends this way gets another attempt while it has
    /// attempts left ([`Config::retry`](crate::Config::retry)): a transient
    /// failure, or the death of the instance that ran it.
    fn retried(&self) -> bool {
        matches!(
            self,
            Ending::FailedTransiently(_) | Ending::LeaseExpired(_) | Ending::Interrupted
        )
    }

    /// The status a job has when it ends this way on the instance running
    /// it: a cancelled job is `CANCELLED`, every other one `PROCESSING`.
    pub(super) fn assumed_status(&self) -> QueryStatus {
        match self {
            Ending::Cancelled | Ending::CancelledWhileQueued => QueryStatus::Cancelled,
            _ => QueryStatus::Processing,
        }
    }

    /// Why a job that was not cancelled stops, for its message; `None` for
    /// the endings that its own worker or `cancel` decides.
    fn stopped_because(&self) -> Option<String> {
        Some(match self {
            Ending::Overran(limit) => {
                format!("exceeded the maximum run time of {limit:?} (stopped by the cleaner)")
            }
            Ending::LeaseExpired(owner) => {
                let owner = owner.map(|o| o.to_string()).unwrap_or_default();
                format!(
                    "its lease expired: instance {owner} stopped renewing it (the instance stopped or lost the database)"
                )
            }
            Ending::Unattended => "nobody was running it any more".into(),
            Ending::Shutdown => "stopped: its instance shut down before it finished".into(),
            Ending::Interrupted => "interrupted: its instance restarted before it finished".into(),
            _ => return None,
        })
    }
}

/// How a job ends: its terminal status, and the message its result
/// carries (`None`: the executor's own result, for `COMPLETE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) to: QueryStatus,
    pub(super) message: Option<String>,
}

/// How a job whose record is in `status` ends `ending`'s way; `None` if it
/// cannot end so from there (it is terminal already, or never ran).
///
/// A cancelled job always ends `CANCEL_COMPLETE`, whatever stopped it: a
/// worker that finished anyway loses to the cancel.
pub(super) fn decide(status: QueryStatus, ending: &Ending) -> Option<Decision> {
    use QueryStatus::*;
    let (to, message) = match (status, ending) {
        (Complete | Failure | TimedOut | CancelComplete, _) => return None,
        (Cancelled, Ending::CancelledWhileQueued) => {
            (CancelComplete, "cancelled before it started".to_owned())
        }
        (Cancelled, ending) => match ending.stopped_because() {
            Some(why) => (CancelComplete, format!("cancelled; {why}")),
            None => (CancelComplete, "cancelled on request".to_owned()),
        },
        // The rest never ran: only the cleaner's and shutdown's endings apply.
        (
            Queued,
            Ending::Finished
            | Ending::Failed(_)
            | Ending::FailedTransiently(_)
            | Ending::Panicked(_),
        ) => return None,
        (Queued, Ending::NotSaved(_) | Ending::RunTimeLimit(_)) => return None,
        (_, Ending::Cancelled | Ending::CancelledWhileQueued) => return None,
        (_, Ending::Finished) => {
            return Some(Decision {
                to: Complete,
                message: None,
            });
        }
        (_, Ending::Failed(message) | Ending::FailedTransiently(message)) => {
            (Failure, message.clone())
        }
        (_, Ending::Panicked(message)) => (Failure, format!("the executor panicked: {message}")),
        (_, Ending::NotSaved(error)) => {
            (Failure, format!("the result could not be saved: {error}"))
        }
        (_, Ending::RunTimeLimit(limit)) => (
            TimedOut,
            format!("stopped after exceeding its maximum run time of {limit:?}"),
        ),
        (_, ending) => (TimedOut, ending.stopped_because()?),
    };
    Some(Decision {
        to,
        message: Some(message),
    })
}

/// The retry of `job`, last seen in `status`, that ends its attempt this
/// way at `now` (`PROCESSING → QUEUED` for its next attempt, after
/// `policy`'s backoff); `None` if the ending is not retried or no attempt
/// is left.
pub(super) fn retry(
    job: &AsyncQuery,
    status: QueryStatus,
    ending: &Ending,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Option<StatusChange> {
    let retried = status == QueryStatus::Processing && ending.retried();
    (retried && policy.retries(job.attempt))
        .then(|| StatusChange::retry(now, now + to_delta(policy.random_delay(job.attempt))))
}

/// The change that ends a job in `status` this way at `now`, with the
/// decision's message as its result, or `result` (the executor's) for
/// `COMPLETE`; `None` if the job cannot end so from `status`.
pub(super) fn change(
    status: QueryStatus,
    ending: &Ending,
    now: DateTime<Utc>,
    result: Option<QueryResult>,
) -> Option<StatusChange> {
    let decision = decide(status, ending)?;
    let result = match decision.message {
        Some(message) => QueryResult::message(now, message),
        None => result?,
    };
    Some(StatusChange::new(status, decision.to, now).with_result(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use QueryStatus::*;

    fn every_ending() -> Vec<Ending> {
        vec![
            Ending::Finished,
            Ending::Failed("boom".into()),
            Ending::FailedTransiently("flaky".into()),
            Ending::Panicked("oops".into()),
            Ending::Cancelled,
            Ending::CancelledWhileQueued,
            Ending::RunTimeLimit(Duration::from_secs(5)),
            Ending::Overran(Duration::from_secs(5)),
            Ending::LeaseExpired(Some(Uuid::nil())),
            Ending::Unattended,
            Ending::Shutdown,
            Ending::Interrupted,
            Ending::NotSaved("db down".into()),
        ]
    }

    #[test]
    fn every_decision_is_a_legal_transition_to_a_terminal_status() {
        for status in QueryStatus::ALL {
            for ending in every_ending() {
                if let Some(decision) = decide(status, &ending) {
                    assert!(
                        status.can_transition_to(decision.to) && decision.to.is_terminal(),
                        "{status} ends {ending:?} as {}",
                        decision.to
                    );
                } else if !status.is_terminal() && status != Queued {
                    // Only impossible combinations decide nothing.
                    assert!(
                        matches!(ending, Ending::Cancelled | Ending::CancelledWhileQueued),
                        "{status} cannot end {ending:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_jobs_never_end_again() {
        for status in QueryStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(every_ending().iter().all(|e| decide(status, e).is_none()));
        }
    }

    #[test]
    fn a_cancelled_job_always_ends_cancel_complete() {
        for ending in every_ending() {
            let decision = decide(Cancelled, &ending).expect("a cancelled job can end");
            assert_eq!(decision.to, CancelComplete, "{ending:?}");
        }
        let msg = |ending| decide(Cancelled, &ending).and_then(|d| d.message);
        assert_eq!(
            msg(Ending::Cancelled).as_deref(),
            Some("cancelled on request")
        );
        assert_eq!(
            msg(Ending::Finished).as_deref(),
            Some("cancelled on request")
        );
        assert_eq!(
            msg(Ending::CancelledWhileQueued).as_deref(),
            Some("cancelled before it started")
        );
        let expired = msg(Ending::LeaseExpired(None)).unwrap_or_default();
        assert!(
            expired.starts_with("cancelled; its lease expired"),
            "{expired}"
        );
    }

    #[test]
    fn each_way_has_its_status_and_message() {
        let decide = |status, ending| decide(status, &ending).expect("decided");
        assert_eq!(
            decide(Processing, Ending::Finished),
            Decision {
                to: Complete,
                message: None
            }
        );
        let cases = [
            (Ending::Failed("boom".into()), Failure, "boom"),
            (
                Ending::Panicked("oops".into()),
                Failure,
                "the executor panicked: oops",
            ),
            (
                Ending::NotSaved("down".into()),
                Failure,
                "the result could not be saved: down",
            ),
            (
                Ending::RunTimeLimit(Duration::from_secs(5)),
                TimedOut,
                "stopped after exceeding its maximum run time of 5s",
            ),
            (
                Ending::Shutdown,
                TimedOut,
                "stopped: its instance shut down before it finished",
            ),
            (
                Ending::Interrupted,
                TimedOut,
                "interrupted: its instance restarted before it finished",
            ),
        ];
        for (ending, to, message) in cases {
            let decision = decide(Processing, ending);
            assert_eq!(
                (decision.to, decision.message.as_deref()),
                (to, Some(message))
            );
        }
        let overran = decide(Queued, Ending::Overran(Duration::from_secs(5)));
        assert_eq!(overran.to, TimedOut);
        assert!(
            overran
                .message
                .unwrap_or_default()
                .contains("stopped by the cleaner")
        );
    }

    #[test]
    fn transient_failures_and_dead_instances_are_retried_while_attempts_remain() {
        let policy = RetryPolicy::attempts(3);
        let now = Utc::now();
        let mut job = crate::model::tests::record(Processing);
        let retried = |ending: &Ending| {
            matches!(
                ending,
                Ending::FailedTransiently(_) | Ending::LeaseExpired(_) | Ending::Interrupted
            )
        };
        for attempt in 1..=3 {
            job.attempt = attempt;
            for ending in every_ending() {
                let change = retry(&job, Processing, &ending, &policy, now);
                let expected = attempt < 3 && retried(&ending);
                assert_eq!(
                    change.is_some(),
                    expected,
                    "{ending:?} on attempt {attempt}"
                );
                if let Some(change) = change {
                    assert_eq!((change.from, change.to), (Processing, Queued));
                    let wait = change.retry_at.expect("a retry time") - now;
                    let full = policy.delay(attempt, 1.0);
                    assert!(
                        wait >= to_delta(full / 2) && wait <= to_delta(full),
                        "{wait}"
                    );
                }
            }
            // Only a running job goes back to the queue.
            for status in [Queued, Cancelled, Complete] {
                assert!(retry(&job, status, &Ending::Interrupted, &policy, now).is_none());
            }
        }
        job.attempt = 1;
        let off = RetryPolicy::default();
        assert!(
            retry(&job, Processing, &Ending::Interrupted, &off, now).is_none(),
            "off by default"
        );
    }
}
