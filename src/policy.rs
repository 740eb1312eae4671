//! A host's rules for new jobs: a [`SubmitPolicy`] reviews every request
//! before anything is stored, as Elide's lifecycle hooks do.

use async_trait::async_trait;

use crate::error::Error;
use crate::model::Principal;
use crate::request::SubmitRequest;

/// Why a [`SubmitPolicy`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request breaks a rule anyone may meet (a query type that is not
    /// allowed, a query too long): [`Error::InvalidRequest`], HTTP 400.
    Invalid(String),
    /// This principal may not submit it (a role or quota rule):
    /// [`Error::Forbidden`], HTTP 403.
    Forbidden(String),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid(reason) => Error::InvalidRequest { reason },
            Refusal::Forbidden(reason) => Error::Forbidden { reason },
        }
    }
}

/// Reviews each new job before it is stored: accepts it, adjusts it (a
/// lower run-time limit, a rewritten query, a shorter wait), or refuses it.
/// Set it with
/// [`AsyncQueryServiceBuilder::policy`](crate::AsyncQueryServiceBuilder::policy);
/// `submit` and `submit_many` call it for every request, after the
/// principal is checked and before the executor's own
/// [`validate`](crate::QueryExecutor::validate).
///
/// ```
/// use async_query::policy::{Refusal, SubmitPolicy};
/// use async_query::{Principal, SubmitRequest};
///
/// /// SQL only; exports for analysts only; at most 10 minutes for anyone.
/// struct Rules;
///
/// #[async_trait::async_trait]
/// impl SubmitPolicy for Rules {
///     async fn review(&self, principal: &Principal, request: &mut SubmitRequest) -> Result<(), Refusal> {
///         if &*request.query_type != "SQL" {
///             return Err(Refusal::Invalid(format!("query type {:?} is not allowed; use SQL", request.query_type)));
///         }
///         if matches!(request.kind, async_query::JobKind::TableExport { .. }) && !principal.has_role("analyst") {
///             return Err(Refusal::Forbidden("exports need the analyst role".into()));
///         }
///         let limit = std::time::Duration::from_secs(600);
///         request.max_run_time = Some(request.max_run_time.map_or(limit, |d| d.min(limit)));
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait SubmitPolicy: Send + Sync + 'static {
    /// Accepts `request` (possibly changed) for `principal`, or refuses it.
    /// Nothing is stored for a refused request.
    async fn review(
        &self,
        principal: &Principal,
        request: &mut SubmitRequest,
    ) -> Result<(), Refusal>;
}
