use super::QueryStatus::{self, *};
use super::{AsyncQuery, JobKind, Principal, RETRY, TRANSITIONS};

/// A record of alice's in `status`, created now, for the crate's unit
/// tests (the conformance suite has its own, behind `test-util`).
pub(crate) fn record(status: QueryStatus) -> AsyncQuery {
    let now = chrono::Utc::now();
    AsyncQuery {
        id: uuid::Uuid::new_v4(),
        kind: JobKind::Query,
        query: "q".into(),
        query_type: "".into(),
        principal: Principal::new("alice"),
        status,
        async_after: std::time::Duration::ZERO,
        max_run_time: std::time::Duration::from_secs(60),
        created_on: now,
        updated_on: now,
        result: None,
        lease: None,
        idempotency_key: None,
        progress: None,
        attempt: 1,
        retry_at: None,
    }
}

#[test]
fn terminal_states_are_exactly_the_four_elide_end_states() {
    let terminal: Vec<QueryStatus> = QueryStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal, vec![Complete, TimedOut, Failure, CancelComplete]);
}

#[test]
fn no_transition_leaves_a_terminal_state_or_stays_put() {
    for from in QueryStatus::ALL {
        for to in QueryStatus::ALL {
            if from.is_terminal() || from == to {
                assert!(!from.can_transition_to(to), "{from} -> {to}");
            }
        }
    }
}

#[test]
fn every_state_is_reachable_from_queued() {
    let mut seen = vec![Queued];
    let mut i = 0;
    while i < seen.len() {
        for to in QueryStatus::ALL {
            if seen[i].can_transition_to(to) && !seen.contains(&to) {
                seen.push(to);
            }
        }
        i += 1;
    }
    assert_eq!(seen.len(), QueryStatus::ALL.len());
}

#[test]
fn serialises_as_elide_spells_it() {
    for status in QueryStatus::ALL {
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(json, format!("\"{}\"", status.as_str()));
        let back: QueryStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        assert_eq!(status.as_str().parse::<QueryStatus>().unwrap(), status);
    }
    assert!("DONE".parse::<QueryStatus>().is_err());
}

/// `leads_to` (a compile-time table) is the transitive closure of
/// `TRANSITIONS` within one attempt (without `RETRY`), computed here the
/// slow way.
#[test]
fn leads_to_is_the_closure_of_the_transition_table() {
    fn reaches(from: QueryStatus, to: QueryStatus) -> bool {
        TRANSITIONS
            .iter()
            .filter(|&&step| step != RETRY)
            .any(|&(f, t)| f == from && (t == to || reaches(t, to)))
    }
    assert!(TRANSITIONS.contains(&RETRY), "a retry is a legal change");
    let mut pairs = 0;
    for from in QueryStatus::ALL {
        for to in QueryStatus::ALL {
            assert_eq!(from.leads_to(to), reaches(from, to), "{from} -> {to}");
            pairs += usize::from(from.leads_to(to));
        }
    }
    // Queued: 6, Processing: 5, Cancelled: 1.
    assert_eq!(pairs, 12);
}
