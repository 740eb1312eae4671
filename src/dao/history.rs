//! Job history: which records [`AsyncApiDao::history`](super::AsyncApiDao::history)
//! lists, in what order, from where.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{AsyncQuery, JobKind, QueryStatus};

/// Which kind of job a history lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KindFilter {
    /// Only queries ([`JobKind::Query`]).
    Query,
    /// Only table exports, in any format ([`JobKind::TableExport`]).
    TableExport,
}

impl KindFilter {
    /// Whether `kind` is of this kind.
    pub fn matches(self, kind: &JobKind) -> bool {
        matches!(
            (self, kind),
            (KindFilter::Query, JobKind::Query)
                | (KindFilter::TableExport, JobKind::TableExport { .. })
        )
    }
}

/// The order of a history: by creation time, ties broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HistoryOrder {
    /// Newest first (the default, as a query history shows it).
    #[default]
    NewestFirst,
    /// Oldest first.
    OldestFirst,
}

/// A place in a history: a record's creation time, in whole microseconds
/// since the Unix epoch (what SQL back-ends store), and its id. A page
/// continues strictly after the position of the last record it listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistoryPosition {
    /// `created_on` in microseconds since the Unix epoch.
    pub created_micros: i64,
    /// The record's id.
    pub id: Uuid,
}

impl HistoryPosition {
    /// The position of `job`.
    pub fn of(job: &AsyncQuery) -> Self {
        HistoryPosition {
            created_micros: job.created_on.timestamp_micros(),
            id: job.id,
        }
    }
}

/// Which records [`AsyncApiDao::history`](super::AsyncApiDao::history)
/// lists: every condition that is set must hold.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct HistoryFilter {
    /// Only this principal's jobs (`None`: everyone's).
    pub principal: Option<String>,
    /// Status is one of these (empty: any).
    pub statuses: Vec<QueryStatus>,
    /// Only this kind of job.
    pub kind: Option<KindFilter>,
    /// Created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Created strictly before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// The order of the records.
    pub order: HistoryOrder,
    /// Only records after this position, in `order`.
    pub after: Option<HistoryPosition>,
    /// At most this many records (at least 1).
    pub limit: usize,
}

impl HistoryFilter {
    /// The first `limit` records of everyone's history, newest first.
    pub fn newest(limit: usize) -> Self {
        HistoryFilter {
            limit,
            ..HistoryFilter::default()
        }
    }

    /// Only `principal`'s jobs.
    #[must_use]
    pub fn of_principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Whether `job` matches every condition (not the position or limit).
    pub fn matches(&self, job: &AsyncQuery) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|p| **p == *job.principal.name)
            && (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self.kind.is_none_or(|k| k.matches(&job.kind))
            && self.created_from.is_none_or(|t| job.created_on >= t)
            && self.created_before.is_none_or(|t| job.created_on < t)
    }

    /// Whether `position` comes after [`after`](Self::after) in the order.
    pub fn is_after(&self, position: HistoryPosition) -> bool {
        self.after.is_none_or(|after| match self.order {
            HistoryOrder::NewestFirst => position < after,
            HistoryOrder::OldestFirst => position > after,
        })
    }

    /// The page of `records` this filter selects, in order: what a back-end
    /// without an index of its own returns (it reads every record, in
    /// linear time).
    pub fn select<'a>(
        &self,
        records: impl IntoIterator<Item = &'a AsyncQuery>,
    ) -> Vec<&'a AsyncQuery> {
        let mut found: Vec<(HistoryPosition, &AsyncQuery)> = records
            .into_iter()
            .filter(|job| self.matches(job))
            .map(|job| (HistoryPosition::of(job), job))
            .filter(|(position, _)| self.is_after(*position))
            .collect();
        let order = self.order;
        let in_order =
            |a: &(HistoryPosition, &AsyncQuery), b: &(HistoryPosition, &AsyncQuery)| match order {
                HistoryOrder::NewestFirst => b.0.cmp(&a.0),
                HistoryOrder::OldestFirst => a.0.cmp(&b.0),
            };
        let limit = self.limit.max(1);
        if found.len() > limit {
            found.select_nth_unstable_by(limit - 1, in_order);
            found.truncate(limit);
        }
        found.sort_unstable_by(in_order);
        found.into_iter().map(|(_, job)| job).collect()
    }
}

/// The default [`AsyncApiDao::find_reusable`](super::AsyncApiDao::find_reusable):
/// pages through `like`'s principal's `COMPLETE` history from
/// `created_from` on, newest first, comparing in memory.
pub(super) async fn reusable<D: super::AsyncApiDao + ?Sized>(
    dao: &D,
    like: &AsyncQuery,
    created_from: DateTime<Utc>,
) -> crate::Result<Option<AsyncQuery>> {
    let mut filter = HistoryFilter {
        principal: Some(like.principal.name.to_string()),
        statuses: vec![QueryStatus::Complete],
        created_from: Some(created_from),
        limit: 100,
        ..HistoryFilter::default()
    };
    loop {
        let page = dao.history(&filter).await?;
        // `COMPLETE` with its output kept, asking what `like` asks.
        let answers = |job: &&AsyncQuery| {
            job.status == QueryStatus::Complete
                && job.result.as_ref().is_some_and(|r| r.body.has_output())
                && job.same_request(like)
        };
        if let Some(found) = page.iter().find(answers) {
            return Ok(Some(found.clone()));
        }
        match page.last() {
            Some(last) if page.len() == filter.limit => {
                filter.after = Some(HistoryPosition::of(last));
            }
            _ => return Ok(None),
        }
    }
}
