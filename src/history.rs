//! Job history for users: [`AsyncQueryService::list`](crate::AsyncQueryService::list)
//! pages through a principal's jobs (an admin's through everyone's), with
//! filters and an opaque cursor.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::dao::{HistoryFilter, HistoryOrder, HistoryPosition, KindFilter};
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, Principal, QueryStatus};

/// The page size of a [`HistoryQuery`] that sets none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page size; larger ones are lowered to it.
pub const MAX_PAGE_SIZE: usize = 1_000;

/// Which jobs [`AsyncQueryService::list`](crate::AsyncQueryService::list)
/// lists, in what order, from where. Every condition that is set must
/// hold.
///
/// ```
/// use async_query::history::HistoryQuery;
/// use async_query::QueryStatus;
/// let failed_first_page = HistoryQuery::new()
///     .with_statuses([QueryStatus::Failure, QueryStatus::TimedOut])
///     .with_page_size(20);
/// # let _ = failed_first_page;
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct HistoryQuery {
    /// Status is one of these (empty: any).
    pub statuses: Vec<QueryStatus>,
    /// Only queries or only table exports.
    pub kind: Option<KindFilter>,
    /// Created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Created strictly before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Newest first (default) or oldest first.
    pub order: HistoryOrder,
    /// Jobs per page: [`DEFAULT_PAGE_SIZE`] if `None`, at most
    /// [`MAX_PAGE_SIZE`].
    pub page_size: Option<usize>,
    /// Where to continue: a [`HistoryPage::next`] handed out for the same
    /// query.
    pub cursor: Option<String>,
    /// For an admin: only this principal's jobs (`None`: everyone's).
    /// Anyone else always lists their own jobs only, whatever this says.
    pub principal: Option<String>,
}

impl HistoryQuery {
    /// Every job the caller may see, newest first, one default-sized page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`statuses`](Self::statuses).
    #[must_use]
    pub fn with_statuses(mut self, statuses: impl IntoIterator<Item = QueryStatus>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Sets [`kind`](Self::kind).
    #[must_use]
    pub fn with_kind(mut self, kind: KindFilter) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Sets [`order`](Self::order).
    #[must_use]
    pub fn with_order(mut self, order: HistoryOrder) -> Self {
        self.order = order;
        self
    }

    /// Sets [`page_size`](Self::page_size).
    #[must_use]
    pub fn with_page_size(mut self, size: usize) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Sets [`cursor`](Self::cursor): the page after the one that handed
    /// it out.
    #[must_use]
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// The store's filter for `principal`, asking for one record more than
    /// a page to learn whether another page follows.
    pub(crate) fn filter(&self, principal: &Principal, admin_role: &str) -> Result<HistoryFilter> {
        let size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if size == 0 {
            return Err(Error::invalid("the page size must be at least 1"));
        }
        let owner = if principal.has_role(admin_role) {
            self.principal.clone()
        } else {
            Some(principal.name.to_string())
        };
        Ok(HistoryFilter {
            principal: owner,
            statuses: self.statuses.clone(),
            kind: self.kind,
            created_from: self.created_from,
            created_before: self.created_before,
            order: self.order,
            after: self.cursor.as_deref().map(decode).transpose()?,
            limit: size.min(MAX_PAGE_SIZE) + 1,
        })
    }
}

/// One page of job history.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The jobs, in the query's order.
    pub jobs: Vec<AsyncQuery>,
    /// The cursor of the next page ([`HistoryQuery::after`]), if there is
    /// one.
    pub next: Option<String>,
    /// The page size used: the query's, or the default, at most
    /// [`MAX_PAGE_SIZE`].
    pub page_size: usize,
}

impl HistoryPage {
    /// The page from the store's answer to `filter` (which asked for one
    /// record more than a page).
    pub(crate) fn from_records(mut jobs: Vec<AsyncQuery>, filter: &HistoryFilter) -> Self {
        let size = filter.limit - 1;
        let next = if jobs.len() > size {
            jobs.truncate(size);
            jobs.last().map(|last| encode(HistoryPosition::of(last)))
        } else {
            None
        };
        HistoryPage {
            jobs,
            next,
            page_size: size,
        }
    }
}

/// A cursor: `<micros>_<id>`. Opaque to users; nothing in it is secret
/// (the filters still decide what a page holds).
fn encode(position: HistoryPosition) -> String {
    format!("{}_{}", position.created_micros, position.id.simple())
}

fn decode(cursor: &str) -> Result<HistoryPosition> {
    let invalid = || {
        Error::invalid(format!(
            "the cursor {cursor:?} is not one this service handed out"
        ))
    };
    // Exactly what `encode` writes (`docs/openapi.json` gives the pattern).
    let (micros, id) = cursor.split_once('_').ok_or_else(invalid)?;
    let digits = micros.strip_prefix('-').unwrap_or(micros);
    let well_formed = (1..=18).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(invalid());
    }
    Ok(HistoryPosition {
        created_micros: micros.parse().map_err(|_| invalid())?,
        id: Uuid::try_parse(id).map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_invalid_requests() {
        let position = HistoryPosition {
            created_micros: 1_732_500_000_123_456,
            id: Uuid::new_v4(),
        };
        assert_eq!(decode(&encode(position)).ok(), Some(position));
        for bad in ["", "12", "x_y", "12_not-a-uuid", "_"] {
            assert!(
                matches!(decode(bad), Err(Error::InvalidRequest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_admins_choose_whose_history() {
        let query = HistoryQuery {
            principal: Some("bob".into()),
            ..HistoryQuery::new()
        };
        let alice = Principal::new("alice");
        let admin = Principal::new("root").with_role("admin");
        let of = |p: &Principal| query.filter(p, "admin").map(|f| f.principal);
        assert_eq!(of(&alice).ok(), Some(Some("alice".into())));
        assert_eq!(of(&admin).ok(), Some(Some("bob".into())));
        let everyone = HistoryQuery::new().filter(&admin, "admin");
        assert_eq!(everyone.ok().map(|f| f.principal), Some(None));
        let sized = |size| {
            HistoryQuery::new()
                .with_page_size(size)
                .filter(&alice, "admin")
        };
        assert_eq!(sized(5_000).ok().map(|f| f.limit), Some(MAX_PAGE_SIZE + 1));
        assert!(matches!(sized(0), Err(Error::InvalidRequest { .. })));
    }
}
