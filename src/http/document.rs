//! JSON:API documents: parsing submissions and changes, rendering records,
//! events and errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::JSON_API;
use crate::error::Error;
use crate::event::{EventPage, LoggedEvent};
use crate::model::{AsyncQuery, JobKind, QueryStatus, ResultBody};

/// The two resource types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Collection {
    Query,
    TableExport,
}

impl Collection {
    pub(super) fn type_name(self) -> &'static str {
        match self {
            Collection::Query => "asyncQuery",
            Collection::TableExport => "tableExport",
        }
    }

    pub(super) fn of(kind: &JobKind) -> Self {
        match kind {
            JobKind::Query => Collection::Query,
            JobKind::TableExport { .. } => Collection::TableExport,
        }
    }
}

/// An error answered as a JSON:API error document.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub(super) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_document", detail)
    }

    pub(super) fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden_change", detail)
    }

    pub(super) fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub(super) fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match e {
            Error::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", detail),
            Error::Forbidden { .. } => Self::new(StatusCode::FORBIDDEN, "forbidden", detail),
            Error::InvalidPrincipal { .. } => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            }
            Error::NoResult { .. } => Self::new(StatusCode::NOT_FOUND, "no_result", detail),
            Error::ResultExpired { .. } => Self::new(StatusCode::GONE, "result_expired", detail),
            Error::DuplicateId { .. } => Self::new(StatusCode::CONFLICT, "duplicate_id", detail),
            Error::IdUnavailable { .. } => {
                Self::new(StatusCode::CONFLICT, "id_unavailable", detail)
            }
            Error::IdempotencyKeyTaken { .. } => {
                Self::new(StatusCode::CONFLICT, "idempotency_key_taken", detail)
            }
            Error::IdempotencyKeyReused { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
            Error::InvalidTransition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", detail)
            }
            Error::QueueFull { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", detail)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            Error::PrincipalQueueFull { retry_after, .. } => {
                let seconds = retry_after.as_secs().max(1);
                Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "principal_queue_full",
                    detail,
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
            }
            Error::InvalidRequest { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
            }
            Error::InvalidName { .. } => Self::new(StatusCode::BAD_REQUEST, "invalid_id", detail),
            Error::RangeNotSatisfiable { len, .. } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                detail,
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            ),
            Error::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", detail)
            }
            Error::Dao { .. } | Error::Storage { .. } | Error::EventsLagged { .. } => {
                tracing::warn!(error = %detail, "async-query HTTP request failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
            Error::Config { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "misconfigured", detail)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({
            "errors": [{
                "status": self.status.as_str(),
                "code": self.code,
                "title": title,
                "detail": self.detail,
            }]
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// A JSON:API document answer.
pub(super) fn respond(status: StatusCode, document: &Value) -> Response {
    let mut response = (status, document.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API));
    response
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Where the router serves the stored object `name`.
pub(super) fn export_path(export_url_prefix: &str, name: &str) -> String {
    format!("{}/{name}", export_url_prefix.trim_end_matches('/'))
}

/// The `data` member of a job's document; a finished export's `url` is
/// `link` if given (a download link), the plain `/export` path otherwise.
pub(super) fn resource(job: &AsyncQuery, export_url_prefix: &str, link: Option<String>) -> Value {
    let mut attributes = Map::new();
    attributes.insert("query".into(), json!(job.query));
    attributes.insert("queryType".into(), json!(job.query_type));
    attributes.insert("status".into(), json!(job.status.as_str()));
    attributes.insert("asyncAfterSeconds".into(), json!(job.async_after.as_secs()));
    attributes.insert("principalName".into(), json!(job.principal.name));
    attributes.insert("createdOn".into(), json!(time(job.created_on)));
    attributes.insert("updatedOn".into(), json!(time(job.updated_on)));
    if let Some(key) = &job.idempotency_key {
        attributes.insert("idempotencyKey".into(), json!(key));
    }
    attributes.insert("progress".into(), json!(job.progress));
    attributes.insert("attempt".into(), json!(job.attempt));
    attributes.insert("retryAt".into(), json!(job.retry_at.map(time)));
    let http_status = match job.status {
        QueryStatus::Complete => 200,
        QueryStatus::TimedOut => 408,
        _ => 500,
    };
    let result = job.result.as_ref().map(|r| {
        let mut result = Map::new();
        result.insert("recordCount".into(), json!(r.record_count));
        result.insert("httpStatus".into(), json!(http_status));
        result.insert("completedOn".into(), json!(time(r.completed_on)));
        result.insert("message".into(), json!(r.message));
        match &job.kind {
            JobKind::Query => {
                result.insert("contentLength".into(), json!(r.content_length));
                result.insert("responseBody".into(), json!(r.inline_body()));
            }
            JobKind::TableExport { .. } => {
                let url = match &r.body {
                    ResultBody::Stored(_) if link.is_some() => link.clone(),
                    ResultBody::Stored(name) => Some(export_path(export_url_prefix, name)),
                    _ => None,
                };
                result.insert("url".into(), json!(url));
                result.insert("contentLength".into(), json!(r.content_length));
                result.insert("truncated".into(), json!(r.truncated));
            }
        }
        Value::Object(result)
    });
    match &job.kind {
        JobKind::Query => {
            attributes.insert("resultType".into(), json!("EMBEDDED"));
        }
        JobKind::TableExport { format } => {
            attributes.insert("resultType".into(), json!(format.as_str()));
        }
    }
    attributes.insert("result".into(), result.unwrap_or(Value::Null));
    json!({
        "type": Collection::of(&job.kind).type_name(),
        "id": job.id.to_string(),
        "attributes": attributes,
    })
}

/// One logged event as an `asyncEvent` resource object.
pub(super) fn event(logged: &LoggedEvent) -> Value {
    let e = &logged.event;
    let mut attributes = json!({
        "jobId": e.id.to_string(),
        "jobType": Collection::of(&e.kind).type_name(),
        "status": e.to.as_str(),
        "previousStatus": e.from.map(QueryStatus::as_str),
        "at": time(e.at),
    });
    if let Some(progress) = &e.progress {
        attributes["progress"] = json!(progress);
    }
    json!({
        "type": "asyncEvent",
        "id": logged.seq.to_string(),
        "attributes": attributes,
    })
}

/// The `/asyncEvents` answer.
pub(super) fn events(page: &EventPage) -> Value {
    let data: Vec<Value> = page.events.iter().map(event).collect();
    json!({
        "data": data,
        "meta": {
            "lastId": page.last_id.to_string(),
            "missed": page.missed,
            "newest": page.newest.to_string(),
        },
    })
}

/// The `data` member of a request document.
pub(super) struct Data {
    type_name: String,
    pub(super) id: Option<String>,
    pub(super) attributes: Map<String, Value>,
}

/// Parses a body as a JSON:API document with one resource object.
fn parse(body: &[u8]) -> Result<Data, ApiError> {
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut document) = document else {
        return Err(ApiError::bad_request(
            "the body must be a JSON:API document (an object)",
        ));
    };
    let Some(Value::Object(mut data)) = document.remove("data") else {
        return Err(ApiError::bad_request(
            "the document needs a \"data\" member holding one resource object",
        ));
    };
    let type_name = match data.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(ApiError::bad_request("data.type must be a string")),
    };
    let id = match data.remove("id") {
        None => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => return Err(ApiError::bad_request("data.id must be a string")),
    };
    let attributes = match data.remove("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => return Err(ApiError::bad_request("data.attributes must be an object")),
    };
    if let Some(other) = data
        .keys()
        .find(|k| !matches!(k.as_str(), "links" | "meta"))
    {
        return Err(ApiError::bad_request(format!(
            "data.{other} is not supported by this API"
        )));
    }
    Ok(Data {
        type_name,
        id,
        attributes,
    })
}

/// [`parse`], and the resource type must be `collection`'s (409 if not).
pub(super) fn parse_for(body: &[u8], collection: Collection) -> Result<Data, ApiError> {
    let data = parse(body)?;
    if data.type_name != collection.type_name() {
        return Err(ApiError::conflict(format!(
            "data.type is {:?}, but this is the {} collection",
            data.type_name,
            collection.type_name()
        )));
    }
    Ok(data)
}

/// A job id: a UUID in its hyphenated form (`8-4-4-4-12` hex digits), the
/// form the API hands out and `docs/openapi.json` describes.
pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    let hyphenated = id.len() == 36
        && id
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    hyphenated
        .then(|| Uuid::try_parse(id).ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!("{id:?} is not a UUID"),
            )
        })
}

pub(super) const READ_ONLY: [&str; 8] = [
    "principalName",
    "createdOn",
    "updatedOn",
    "result",
    "idempotencyKey",
    "progress",
    "attempt",
    "retryAt",
];

pub(super) fn string(
    attributes: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match attributes.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "attribute {name} must be a string"
        ))),
    }
}

/// A change document: the only allowed change is `status: "CANCELLED"`.
pub(super) fn cancellation(body: &[u8], collection: Collection, id: Uuid) -> Result<(), ApiError> {
    let data = parse_for(body, collection)?;
    let Some(given) = data.id else {
        return Err(ApiError::bad_request("data.id is required in a change"));
    };
    if parse_id(&given).ok() != Some(id) {
        return Err(ApiError::conflict(format!(
            "data.id {given:?} does not match the URL's id {id}"
        )));
    }
    let only_cancel = data.attributes.len() == 1
        && data.attributes.get("status") == Some(&Value::String("CANCELLED".into()));
    if !only_cancel {
        return Err(ApiError::forbidden(
            "the only change allowed is {\"status\": \"CANCELLED\"}",
        ));
    }
    Ok(())
}
