//! Idempotent submits: a repeat of a principal's idempotency key within
//! the window answers with the key's job instead of storing a second one.
//! The job store keeps keys unique per principal, so two instances racing
//! with one key store one job between them; the loser finds the winner's.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Runtime;
use super::clock::to_delta;
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, Principal};
use crate::request::{MAX_IDEMPOTENCY_KEY_LEN, Reuse};

/// How often a submit looks for the key's job and tries to store its own
/// before giving up: each round means the key's job vanished (deleted, or
/// its key released by another submit) between two steps.
const ROUNDS: usize = 3;

/// Refuses a key that is empty, too long, or not visible ASCII.
pub(super) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::invalid(format!(
            "the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes long"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "the idempotency key must be visible ASCII characters (no spaces or control characters)",
        ));
    }
    Ok(())
}

impl Runtime {
    /// `submit` of a record with idempotency key `key`: the key's job if
    /// the principal has one from within the window, else a new job.
    pub(super) async fn submit_keyed(
        self: &Arc<Self>,
        span: tracing::Span,
        principal: &Principal,
        (job, reuse): (Arc<AsyncQuery>, Reuse),
        key: String,
        now: DateTime<Utc>,
    ) -> Result<AsyncQuery> {
        let window_start = now - to_delta(self.config.idempotency_window);
        for _ in 0..ROUNDS {
            match self
                .dao
                .find_by_idempotency_key(&principal.name, &key)
                .await?
            {
                Some(found) if found.created_on > window_start => {
                    return self.replay(principal, &job, found).await;
                }
                // Past its window: the key moves to the new job.
                Some(old) => {
                    self.dao.release_idempotency_key(old.id, &key).await?;
                }
                None => {}
            }
            // A record of its own for each round: admission sets the
            // record of a job it starts at once, which it must not share.
            let record = Arc::new(AsyncQuery::clone(&job));
            let started = self.reuse_or_start(span.clone(), principal, record, reuse, now);
            match started.await {
                // Another submit stored the key first: answer with its job.
                Err(Error::IdempotencyKeyTaken { .. }) => continue,
                answer => return answer,
            }
        }
        Err(Error::IdempotencyKeyTaken { key })
    }

    /// Answers a repeat with `found`, the key's job, after following it for
    /// the repeat's async-after as `submit` follows a new job.
    async fn replay(
        &self,
        principal: &Principal,
        request: &AsyncQuery,
        found: AsyncQuery,
    ) -> Result<AsyncQuery> {
        if !found.same_request(request) {
            return Err(Error::IdempotencyKeyReused {
                key: found.idempotency_key.unwrap_or_default(),
                id: found.id,
            });
        }
        if found.status.is_terminal() {
            return Ok(found);
        }
        self.wait(principal, found.id, request.async_after).await
    }
}
