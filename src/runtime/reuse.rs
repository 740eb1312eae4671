//! Result reuse: a submit answered with an earlier identical job's
//! result instead of running (see [`Reuse`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Runtime;
use super::clock::to_delta;
use crate::error::Result;
use crate::model::{AsyncQuery, Principal};
use crate::request::Reuse;

impl Runtime {
    /// How old a reused result may be, as a submit asks (`None`: run).
    fn reuse_window(&self, reuse: Reuse) -> Option<Duration> {
        match reuse {
            Reuse::Configured => self.config.result_reuse,
            Reuse::Within(window) => Some(window),
            Reuse::Force => None,
        }
        .filter(|window| !window.is_zero())
    }

    /// The earlier job that answers `job`, if reuse is asked for and one
    /// exists; otherwise `job`, admitted and followed as `submit` does.
    pub(super) async fn reuse_or_start(
        self: &Arc<Self>,
        span: tracing::Span,
        principal: &Principal,
        job: Arc<AsyncQuery>,
        reuse: Reuse,
        now: DateTime<Utc>,
    ) -> Result<AsyncQuery> {
        if let Some(window) = self.reuse_window(reuse) {
            let created_from = now
                .checked_sub_signed(to_delta(window))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            if let Some(found) = self.dao.find_reusable(&job, created_from).await? {
                span.record("job", tracing::field::display(found.id));
                return Ok(found);
            }
        }
        self.start_new(span, principal, job, now).await
    }
}
