//! Submission documents: the attributes of a `POST` into a
//! [`SubmitRequest`].

use std::time::Duration;

use serde_json::{Map, Value};

use super::document::Collection;
use super::document::{ApiError, READ_ONLY, parse_for, parse_id, string};
use crate::model::{ExportFormat, JobKind};
use crate::request::SubmitRequest;

/// A submission document into a [`SubmitRequest`].
pub(super) fn submission(body: &[u8], collection: Collection) -> Result<SubmitRequest, ApiError> {
    let data = parse_for(body, collection)?;
    let attributes = &data.attributes;
    for name in attributes.keys() {
        if READ_ONLY.contains(&name.as_str()) {
            return Err(ApiError::forbidden(format!(
                "attribute {name} is set by the server"
            )));
        }
        if !matches!(
            name.as_str(),
            "query"
                | "queryType"
                | "status"
                | "asyncAfterSeconds"
                | "resultType"
                | "onWaitTimeout"
                | "reuseWithinSeconds"
                | "force"
        ) {
            return Err(ApiError::bad_request(format!(
                "unknown attribute {name:?}; known: query, queryType, status, asyncAfterSeconds, \
                 resultType, onWaitTimeout, reuseWithinSeconds, force (an idempotency key goes \
                 in the Idempotency-Key header)"
            )));
        }
    }
    let query = string(attributes, "query")?
        .filter(|q| !q.is_empty())
        .ok_or_else(|| ApiError::bad_request("attribute query is required"))?;
    if let Some(status) = string(attributes, "status")?
        && status != "QUEUED"
    {
        return Err(ApiError::bad_request(format!(
            "a new job's status must be \"QUEUED\", not {status:?}"
        )));
    }
    let result_type = string(attributes, "resultType")?;
    let kind = match collection {
        Collection::Query => match result_type.as_deref() {
            None | Some("EMBEDDED") => JobKind::Query,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resultType {other:?} is not available for an asyncQuery; use \"EMBEDDED\" or a tableExport"
                )));
            }
        },
        Collection::TableExport => {
            // Whether the service knows the format is checked at submit,
            // with the same 400.
            let format = match result_type.as_deref() {
                None => ExportFormat::CSV,
                Some(name) => ExportFormat::new(name)
                    .map_err(|e| ApiError::bad_request(format!("resultType: {e}")))?,
            };
            JobKind::TableExport { format }
        }
    };
    let mut request = match kind {
        JobKind::Query => SubmitRequest::query(query),
        JobKind::TableExport { format } => SubmitRequest::export(query, format),
    };
    if let Some(query_type) = string(attributes, "queryType")? {
        request = request.with_query_type(query_type);
    }
    match attributes.get("asyncAfterSeconds") {
        None | Some(Value::Null) => {}
        Some(value) => {
            let seconds = value
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                .ok_or_else(|| {
                    ApiError::bad_request("asyncAfterSeconds must be a number from 0 to 86400")
                })?;
            request = request.with_async_after(Duration::from_secs_f64(seconds));
        }
    }
    match string(attributes, "onWaitTimeout")?.as_deref() {
        None | Some("CONTINUE") => {}
        Some("CANCEL") => request = request.with_on_wait_timeout(crate::WaitTimeout::Cancel),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "onWaitTimeout must be \"CONTINUE\" or \"CANCEL\", not {other:?}"
            )));
        }
    }
    request = request.with_reuse(reuse(attributes)?);
    if let Some(id) = data.id {
        request = request.with_id(parse_id(&id)?);
    }
    Ok(request)
}

/// `force` and `reuseWithinSeconds` as a [`Reuse`](crate::Reuse).
fn reuse(attributes: &Map<String, Value>) -> Result<crate::Reuse, ApiError> {
    let force = match attributes.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err(ApiError::bad_request("force must be true or false")),
    };
    let within = match attributes.get("reuseWithinSeconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().filter(|s| *s <= 31_536_000).ok_or_else(|| {
            ApiError::bad_request("reuseWithinSeconds must be a whole number from 0 to 31536000")
        })?),
    };
    Ok(match (force, within) {
        (true, Some(_)) => {
            return Err(ApiError::bad_request(
                "force and reuseWithinSeconds exclude each other",
            ));
        }
        (true, None) => crate::Reuse::Force,
        (false, Some(seconds)) => crate::Reuse::Within(Duration::from_secs(seconds)),
        (false, None) => crate::Reuse::Configured,
    })
}
