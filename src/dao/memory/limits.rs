//! The bounds of a [`MemoryDao`]: records and inline result bytes.

use uuid::Uuid;

use super::{MemoryDao, State};
use crate::dao::StatusChange;
use crate::error::{Error, Result};
use crate::model::ResultBody;

impl MemoryDao {
    /// Refuses inline result bodies of `added` more bytes if they do not
    /// fit.
    pub(super) fn fits_results(&self, state: &State, added: usize) -> Result<()> {
        if added == 0 || state.result_bytes.saturating_add(added) <= self.max_result_bytes {
            return Ok(());
        }
        Err(full(format!(
            "storing a result of {added} bytes: the in-memory job store is full ({} bytes of \
             query results at most, {} held; use MemoryDao::with_max_result_bytes, a shorter \
             Config::retention or Config::result_lifetime, a table export, or a database)",
            self.max_result_bytes, state.result_bytes
        )))
    }

    /// Refuses a batch of changes, before applying any, if their results
    /// together do not fit (counting each as added, as if none replaced a
    /// body).
    pub(super) fn fits_changes(
        &self,
        state: &State,
        changes: &[(Uuid, StatusChange)],
    ) -> Result<()> {
        let added = changes
            .iter()
            .map(|(_, change)| inline_len(change.result.as_ref()))
            .sum();
        self.fits_results(state, added)
    }

    /// Refuses `new` more records if they do not fit.
    pub(super) fn fits(&self, state: &State, new: usize) -> Result<()> {
        if state.jobs.len() + new <= self.max_records {
            return Ok(());
        }
        Err(full(format!(
            "storing a job: the in-memory job store is full ({} records at most; use \
             MemoryDao::with_max_records, a shorter Config::retention, or a database)",
            self.max_records
        )))
    }
}

/// A refusal because the store is full.
fn full(message: String) -> Error {
    Error::dao(
        message,
        std::io::Error::from(std::io::ErrorKind::StorageFull),
    )
}

/// The bytes of `result`'s inline body (0 for any other body).
pub(super) fn inline_len(result: Option<&crate::model::QueryResult>) -> usize {
    match result.map(|r| &r.body) {
        Some(ResultBody::Inline(body)) => body.len(),
        _ => 0,
    }
}
