//! The job record and its lifecycle: [`AsyncQuery`], [`JobKind`],
//! [`QueryStatus`] (with the one transition table), [`QueryResult`],
//! [`Principal`], and the flat [`Record`] a table export is made of.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::progress::Progress;

mod export_format;
pub use export_format::{ColumnType, ExportFormat, MAX_FORMAT_NAME_LEN, ParseFormatError};

/// A map keyed by job id, with a fast, randomly seeded hasher (ids may
/// come from clients, so the seed keeps them from choosing collisions).
pub(crate) type IdMap<V> = std::collections::HashMap<Uuid, V, foldhash::fast::RandomState>;

/// A set of job ids, hashed as [`IdMap`] hashes them.
pub(crate) type IdSet = std::collections::HashSet<Uuid, foldhash::fast::RandomState>;

/// The lifecycle state of a job, with Elide's seven states spelled as Elide
/// serialises them (`QUEUED`, `PROCESSING`, …).
///
/// ```text
/// Queued ──► Processing ──► Complete | Failure | TimedOut
///   ▲ │           │  │
///   │ └──► Cancelled ◄┘ ──► CancelComplete
///   └─────────────┘ (a retry: the next attempt)
/// Queued | Processing ──► TimedOut
/// ```
///
/// [`can_transition_to`](QueryStatus::can_transition_to) is the single source
/// of truth for which changes are legal; every back-end enforces it.
///
/// `Processing → Queued` is this crate's one addition to Elide's
/// lifecycle: with retries on ([`Config::retry`](crate::Config::retry)), a
/// job that failed transiently or whose instance died goes back to the
/// queue for its next [`attempt`](AsyncQuery::attempt) instead of ending.
/// With retries off (the default) it never happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueryStatus {
    /// Accepted and waiting for a free worker slot.
    Queued,
    /// Running on some instance.
    Processing,
    /// Finished; the result is in the record (or in result storage for exports).
    Complete,
    /// Cancellation requested; the instance running the job stops it and
    /// moves it to [`CancelComplete`](QueryStatus::CancelComplete).
    Cancelled,
    /// Stopped because it hit a run-time limit or its instance died.
    #[serde(rename = "TIMEDOUT")]
    TimedOut,
    /// The executor returned an error or panicked, or the result could not be saved.
    Failure,
    /// Cancellation finished: the job is no longer running.
    CancelComplete,
}

/// Every legal status change, `(from, to)`. Nothing else is allowed.
pub const TRANSITIONS: &[(QueryStatus, QueryStatus)] = {
    use QueryStatus::*;
    &[
        (Queued, Processing),
        (Queued, Cancelled),
        (Queued, TimedOut),
        (Processing, Complete),
        (Processing, Failure),
        (Processing, TimedOut),
        (Processing, Cancelled),
        (Processing, Queued),
        (Cancelled, CancelComplete),
    ]
};

/// The transition that starts a job's next attempt (a retry); the only
/// one that leads back.
pub const RETRY: (QueryStatus, QueryStatus) = (QueryStatus::Processing, QueryStatus::Queued);

/// For each status (by discriminant), a bit set of the statuses that can
/// follow it within one attempt: the transitive closure of [`TRANSITIONS`]
/// without [`RETRY`], computed at compile time so that
/// [`QueryStatus::leads_to`] costs one load on the hot path.
const REACHABLE: [u8; 7] = {
    let mut reach = [0u8; 7];
    // The longest path has three steps; iterate until nothing changes.
    let mut changed = true;
    while changed {
        changed = false;
        let mut i = 0;
        while i < TRANSITIONS.len() {
            let (from, to) = (TRANSITIONS[i].0 as usize, TRANSITIONS[i].1 as usize);
            if from == RETRY.0 as usize && to == RETRY.1 as usize {
                i += 1;
                continue;
            }
            let next = reach[from] | (1 << to) | reach[to];
            if next != reach[from] {
                reach[from] = next;
                changed = true;
            }
            i += 1;
        }
    }
    reach
};

impl QueryStatus {
    /// All seven states, in lifecycle order.
    pub const ALL: [QueryStatus; 7] = [
        QueryStatus::Queued,
        QueryStatus::Processing,
        QueryStatus::Complete,
        QueryStatus::Cancelled,
        QueryStatus::TimedOut,
        QueryStatus::Failure,
        QueryStatus::CancelComplete,
    ];

    /// Whether the lifecycle allows a change from `self` to `to` (looked up in
    /// [`TRANSITIONS`]).
    ///
    /// ```
    /// use async_query::QueryStatus::*;
    /// assert!(Queued.can_transition_to(Processing));
    /// assert!(!Complete.can_transition_to(Cancelled));
    /// ```
    pub fn can_transition_to(self, to: QueryStatus) -> bool {
        TRANSITIONS.iter().any(|&(f, t)| f == self && t == to)
    }

    /// Whether `later` can follow this status through one or more
    /// transitions within one attempt: an attempt's lifecycle only moves
    /// forward, so of two changes of one job in one
    /// [`attempt`](AsyncQuery::attempt), the one to the status that
    /// `leads_to` the other came first. A retry ([`RETRY`]) starts the
    /// next attempt, whose records come after every record of this one.
    ///
    /// ```
    /// use async_query::QueryStatus::*;
    /// assert!(Queued.leads_to(CancelComplete));
    /// assert!(Processing.leads_to(Cancelled));
    /// assert!(!Cancelled.leads_to(Processing));
    /// assert!(!Complete.leads_to(Complete));
    /// // A retry goes back to the queue, but in the next attempt:
    /// assert!(Processing.can_transition_to(Queued) && !Processing.leads_to(Queued));
    /// ```
    pub fn leads_to(self, later: QueryStatus) -> bool {
        REACHABLE[self as usize] & (1 << later as u8) != 0
    }

    /// Whether no further change can happen: `Complete`, `Failure`,
    /// `TimedOut` and `CancelComplete`.
    pub fn is_terminal(self) -> bool {
        !TRANSITIONS.iter().any(|&(f, _)| f == self)
    }

    /// Elide's spelling, as used in JSON and in SQL back-ends.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryStatus::Queued => "QUEUED",
            QueryStatus::Processing => "PROCESSING",
            QueryStatus::Complete => "COMPLETE",
            QueryStatus::Cancelled => "CANCELLED",
            QueryStatus::TimedOut => "TIMEDOUT",
            QueryStatus::Failure => "FAILURE",
            QueryStatus::CancelComplete => "CANCEL_COMPLETE",
        }
    }
}

impl fmt::Display for QueryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueryStatus {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueryStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                input: s.to_owned(),
            })
    }
}

/// A status name that is not one of Elide's seven, from
/// [`QueryStatus::from_str`](std::str::FromStr::from_str).
///
/// Where the text came from decides what it means: in a request it is bad
/// input, in a stored record it is a corrupt row (the SQL back-ends report
/// it as [`Error::Dao`](crate::Error::Dao)).
///
/// ```
/// use async_query::QueryStatus;
/// let err = "DONE".parse::<QueryStatus>().unwrap_err();
/// assert_eq!(err.input(), "DONE");
/// assert!(err.to_string().contains("CANCEL_COMPLETE"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {input:?}; expected one of QUEUED, PROCESSING, COMPLETE, CANCELLED, TIMEDOUT, FAILURE, CANCEL_COMPLETE"
)]
pub struct ParseStatusError {
    input: String,
}

impl ParseStatusError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

/// A flat record of a table export: one JSON value per column, in column
/// order.
pub type Record = Vec<serde_json::Value>;

/// What a job produces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum JobKind {
    /// Elide's `AsyncQuery`: the result body is embedded in the record.
    Query,
    /// Elide's `TableExport`: records are streamed into a
    /// [`ResultStorageEngine`](crate::ResultStorageEngine) and fetched later.
    TableExport {
        /// The encoding of the stored file.
        format: ExportFormat,
    },
}

/// Who asks. Owners and holders of the configured admin role may see a job;
/// nobody else can tell it exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// The stable user name, compared for ownership.
    pub name: Arc<str>,
    /// Roles, e.g. `"admin"`.
    #[serde(default)]
    pub roles: BTreeSet<String>,
}

impl Principal {
    /// A principal with no roles.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Principal {
            name: name.into(),
            roles: BTreeSet::new(),
        }
    }

    /// Adds a role (builder style).
    ///
    /// ```
    /// let admin = async_query::Principal::new("ops").with_role("admin");
    /// assert!(admin.has_role("admin"));
    /// ```
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.roles.insert(role.into());
        self
    }

    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }

    /// The visibility rule: the owner (by name) and holders of `admin_role`
    /// may see a job; nobody else.
    pub fn may_see(&self, owner: &str, admin_role: &str) -> bool {
        *self.name == *owner || self.has_role(admin_role)
    }
}

/// Where a finished job's output is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "camelCase")]
pub enum ResultBody {
    /// No output (failures, cancellations, time-outs).
    None,
    /// The body itself, for [`JobKind::Query`].
    Inline(Arc<str>),
    /// The name of the stored object in the result storage, for
    /// [`JobKind::TableExport`].
    Stored(String),
    /// The output was deleted after
    /// [`Config::result_lifetime`](crate::Config::result_lifetime); the
    /// record stays until [`Config::retention`](crate::Config::retention),
    /// with a message saying so.
    Expired,
}

impl ResultBody {
    /// Whether there is output (an inline body or a stored export) that a
    /// result lifetime would delete.
    pub(crate) fn has_output(&self) -> bool {
        matches!(self, ResultBody::Inline(_) | ResultBody::Stored(_))
    }
}

/// The outcome recorded on a job when it reaches a terminal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// Number of records the query produced, when known.
    pub record_count: Option<u64>,
    /// Length of the body in bytes, when there is one.
    pub content_length: Option<u64>,
    /// When the job reached its terminal state.
    pub completed_on: DateTime<Utc>,
    /// The output, or where to find it.
    pub body: ResultBody,
    /// A human-readable explanation for failures, time-outs, cancellations
    /// and truncated exports.
    pub message: Option<String>,
    /// The export stopped at a configured limit
    /// ([`Config::export_max_records`](crate::Config::export_max_records) or
    /// [`export_max_bytes`](crate::Config::export_max_bytes)) with
    /// [`ExportLimitAction::Truncate`](crate::config::ExportLimitAction::Truncate);
    /// `record_count` and `content_length` say how much was kept.
    #[serde(default)]
    pub truncated: bool,
}

impl QueryResult {
    /// A result with no body and an explanatory message.
    pub fn message(completed_on: DateTime<Utc>, message: impl Into<String>) -> Self {
        QueryResult {
            record_count: None,
            content_length: None,
            completed_on,
            body: ResultBody::None,
            message: Some(message.into()),
            truncated: false,
        }
    }

    /// The inline body, if this is a [`JobKind::Query`] result.
    pub fn inline_body(&self) -> Option<&str> {
        match &self.body {
            ResultBody::Inline(body) => Some(&**body),
            _ => None,
        }
    }
}

/// Which instance runs a job, and until when it has promised to renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The owning instance (see [`Config::instance_id`](crate::Config::instance_id)).
    pub owner: Uuid,
    /// When the lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// The job record: Elide's `AsyncQuery` / `TableExport` entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncQuery {
    /// Unique id; clients may choose it (Elide lets them).
    pub id: Uuid,
    /// Query or table export.
    pub kind: JobKind,
    /// The query text, opaque to the library.
    pub query: Arc<str>,
    /// The query language, opaque to the library (Elide: `GRAPHQL_V1_0`,
    /// `JSONAPI_V1_0`).
    pub query_type: Arc<str>,
    /// Who submitted it.
    pub principal: Principal,
    /// Current status.
    pub status: QueryStatus,
    /// How long `submit` waited for it (after capping).
    #[serde(with = "humantime_serde")]
    pub async_after: Duration,
    /// The run-time limit that applies to this job.
    #[serde(with = "humantime_serde")]
    pub max_run_time: Duration,
    /// When it was submitted.
    pub created_on: DateTime<Utc>,
    /// When its status last changed.
    pub updated_on: DateTime<Utc>,
    /// Set once the job is terminal.
    pub result: Option<QueryResult>,
    /// Set while the job runs.
    pub lease: Option<Lease>,
    /// The key a retried submit repeats to get this job back instead of a
    /// second run (see
    /// [`SubmitRequest::with_idempotency_key`](crate::SubmitRequest::with_idempotency_key)).
    /// Unique per principal among the records that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How far the job had got at its executor's last written report
    /// ([`ExecutionContext::report_progress`](crate::ExecutionContext::report_progress));
    /// kept once the job ends. `None` until a report is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Which attempt at running the job this record is about, from 1; a
    /// retry ([`Config::retry`](crate::Config::retry)) queues attempt
    /// `attempt + 1`. Always 1 with retries off.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// While the job is queued for a retry: the earliest time its next
    /// attempt may start (claims pass over it until then). `None`
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
}

fn first_attempt() -> u32 {
    1
}

impl AsyncQuery {
    /// Whether this record comes before `later`, another record of the same
    /// job: an earlier attempt, or an earlier status in the same attempt
    /// (see [`QueryStatus::leads_to`]). Records of one job that are in
    /// neither order are the same state.
    pub fn precedes(&self, later: &AsyncQuery) -> bool {
        match self.attempt.cmp(&later.attempt) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => self.status.leads_to(later.status),
        }
    }

    /// Whether this record and `other` ask the same thing: the same
    /// principal, kind (with its format), query type and query text.
    pub(crate) fn same_request(&self, other: &AsyncQuery) -> bool {
        self.principal.name == other.principal.name
            && self.kind == other.kind
            && self.query_type == other.query_type
            && self.query == other.query
    }

    /// Whether `principal` may see this job: its owner, or anyone holding
    /// `admin_role`.
    pub fn is_visible_to(&self, principal: &Principal, admin_role: &str) -> bool {
        principal.may_see(&self.principal.name, admin_role)
    }
}

#[cfg(test)]
pub(crate) mod tests;
