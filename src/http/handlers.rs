//! The route handlers. Each takes the whole request and answers every
//! failure itself, so no extractor rejection (plain text) ever reaches a
//! client.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use super::document::{self, ApiError, Collection, respond};
use super::links::LinkRefused;
use super::range::{self, Requested};
use super::{App, PrincipalResolver};
use crate::model::{AsyncQuery, Principal, QueryStatus, ResultBody};
use crate::request::CancelOutcome;

pub(super) type Answer = Result<Response, ApiError>;

pub(super) async fn principal<R: PrincipalResolver>(
    app: &App<R>,
    parts: &Parts,
) -> Result<Principal, ApiError> {
    app.resolver.resolve(parts).await.map_err(|e| {
        ApiError::new(
            e.status,
            if e.status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "unauthorized"
            },
            e.detail,
        )
    })
}

/// A refusal sent before the request's body was read: the connection is
/// closed after it (the unread body would be taken for the next request),
/// so the client is told not to reuse it.
fn unread(error: ApiError) -> ApiError {
    error.with_header(header::CONNECTION, HeaderValue::from_static("close"))
}

/// The body of a request that must carry a JSON:API document.
async fn document_body<R>(app: &App<R>, parts: &Parts, body: Body) -> Result<Bytes, ApiError> {
    let media_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let accepted = matches!(
        media_type.as_deref(),
        Some(super::JSON_API | "application/json")
    ) || media_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json;"));
    if !accepted {
        return Err(unread(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the document as {} (without media type parameters)",
                super::JSON_API
            ),
        )));
    }
    axum::body::to_bytes(body, app.options.max_body_bytes)
        .await
        .map_err(|_| {
            unread(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body could not be read or is above {} bytes",
                    app.options.max_body_bytes
                ),
            ))
        })
}

/// The last path segment: the `{id}` of every item route.
fn last_segment(parts: &Parts) -> &str {
    parts.uri.path().rsplit('/').next().unwrap_or_default()
}

pub(super) async fn create<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    collection: Collection,
    request: Request,
) -> Answer {
    let (parts, body) = request.into_parts();
    let principal = principal(&app, &parts).await?;
    let body = document_body(&app, &parts, body).await?;
    let mut submission = super::submission::submission(&body, collection)?;
    if let crate::model::JobKind::TableExport { format } = &submission.kind
        && app.service.formats().get(format).is_none()
    {
        let known: Vec<&str> = app.service.formats().names().map(|f| f.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "resultType {format} is not a format this service exports; use one of {}",
            known.join(", ")
        )));
    }
    if let Some(header) = parts.headers.get("idempotency-key") {
        let key = header.to_str().map_err(|_| {
            ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
        })?;
        submission = submission.with_idempotency_key(key);
    }
    let job = app.service.submit(&principal, submission).await?;
    let mut response = respond(StatusCode::CREATED, &job_document(&app, &job, None).await);
    if let Ok(location) = HeaderValue::try_from(location(&parts, job.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Where the created job can be read: the path the client posted to, as
/// the client sent it (a router nested under a prefix sees the path
/// without it, so the original URI is preferred), plus `/{id}`.
fn location(parts: &Parts, id: Uuid) -> String {
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |original| original.0.path());
    format!("{}/{id}", path.trim_end_matches('/'))
}

/// `{"data": <job>}`, with `meta` if given.
async fn job_document<R>(app: &App<R>, job: &AsyncQuery, meta: Option<Value>) -> Value {
    let link = download_link(app, job).await;
    let mut document =
        json!({ "data": document::resource(job, &app.options.export_url_prefix, link) });
    if let Some(meta) = meta {
        document["meta"] = meta;
    }
    document
}

/// With download links configured, the link to a finished export: the
/// store's presigned URL if it can sign, else the `/export` path signed
/// with the links' key.
pub(super) async fn download_link<R>(app: &App<R>, job: &AsyncQuery) -> Option<String> {
    let links = app.options.download_links.as_ref()?;
    let name = match &job.result {
        Some(result) if job.status == QueryStatus::Complete => match &result.body {
            ResultBody::Stored(name) => name,
            _ => return None,
        },
        _ => return None,
    };
    let storage = app.service.runtime().storage();
    match storage.signed_url(name, links.valid_for()).await {
        Ok(Some(url)) => return Some(url),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "the result store could not sign a download URL; handing out a signed /export link instead");
        }
    }
    let path = document::export_path(&app.options.export_url_prefix, name);
    Some(format!("{path}?{}", links.sign(job.id, Utc::now())))
}

/// What entitles a request to a download.
enum Access {
    /// The request's principal, who must be allowed to see the job.
    Principal(Principal),
    /// A valid signed link to this job's export (a bearer secret).
    Link,
}

impl Access {
    async fn download<R>(
        &self,
        app: &App<R>,
        id: Uuid,
        range: Option<std::ops::Range<u64>>,
    ) -> crate::error::Result<crate::storage::Download> {
        match self {
            Access::Principal(principal) => app.service.download(principal, id, range).await,
            Access::Link => app.service.runtime().download_by_link(id, range).await,
        }
    }
}

/// A valid signed link (`expires` and `signature`) if the request carries
/// one, else the request's own principal.
async fn download_access<R: PrincipalResolver>(
    app: &App<R>,
    parts: &Parts,
    id: Uuid,
) -> Result<Access, ApiError> {
    let (mut expires, mut signature) = (None, None);
    for pair in parts.uri.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("expires", value)) => expires = Some(value),
            Some(("signature", value)) => signature = Some(value),
            _ => {}
        }
    }
    let (expires, signature) = match (expires, signature) {
        (None, None) => return Ok(Access::Principal(principal(app, parts).await?)),
        (Some(expires), Some(signature)) => (expires, signature),
        // Half a link is a link that is not valid.
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "link_invalid",
                "a download link needs both `expires` and `signature`",
            ));
        }
    };
    let invalid = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "link_invalid",
            "this download link is not valid",
        )
    };
    let Some(links) = &app.options.download_links else {
        return Err(invalid());
    };
    let expires: i64 = expires.parse().map_err(|_| invalid())?;
    match links.verify(id, expires, signature, Utc::now()) {
        Ok(()) => Ok(Access::Link),
        Err(LinkRefused::Expired) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "link_expired",
            "this download link has expired; read the export's record again for a new one",
        )),
        Err(_) => Err(invalid()),
    }
}

/// The job an item route names, if the caller may see it and it belongs
/// to this collection (another collection's job is not found here).
async fn job_of<R: PrincipalResolver>(
    app: &App<R>,
    principal: &Principal,
    id: Uuid,
    collection: Collection,
) -> Result<AsyncQuery, ApiError> {
    let job = app.service.get(principal, id).await?;
    if Collection::of(&job.kind) != collection {
        return Err(crate::error::Error::NotFound { id }.into());
    }
    Ok(job)
}

/// An item route's request (`/{type}/{id}`): its parts and body, the
/// caller, and the id.
async fn item_request<R: PrincipalResolver>(
    app: &App<R>,
    request: Request,
) -> Result<(Parts, Body, Principal, Uuid), ApiError> {
    let (parts, body) = request.into_parts();
    let principal = principal(app, &parts).await?;
    let id = document::parse_id(last_segment(&parts))?;
    Ok((parts, body, principal, id))
}

pub(super) async fn read<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    collection: Collection,
    request: Request,
) -> Answer {
    let (_, _, principal, id) = item_request(&app, request).await?;
    let job = job_of(&app, &principal, id, collection).await?;
    Ok(respond(
        StatusCode::OK,
        &job_document(&app, &job, None).await,
    ))
}

pub(super) async fn update<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    collection: Collection,
    request: Request,
) -> Answer {
    let (parts, body, principal, id) = item_request(&app, request).await?;
    let body = document_body(&app, &parts, body).await?;
    document::cancellation(&body, collection, id)?;
    // `cancel` reads the record again; this read checks the collection.
    job_of(&app, &principal, id, collection).await?;
    let (job, meta) = match app.service.cancel(&principal, id).await? {
        CancelOutcome::Cancelled(job) => (job, json!({ "cancelled": true })),
        CancelOutcome::AlreadyFinished(job) => {
            let detail = format!("the job had already finished ({})", job.status);
            (job, json!({ "cancelled": false, "detail": detail }))
        }
    };
    Ok(respond(
        StatusCode::OK,
        &job_document(&app, &job, Some(meta)).await,
    ))
}

pub(super) async fn download<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    request: Request,
) -> Answer {
    let (parts, _) = request.into_parts();
    // `/export/<id>` or `/export/<id>.<ext>`.
    let name = last_segment(&parts);
    let id = match name.split_once('.') {
        None => document::parse_id(name)?,
        Some((id, extension)) if app.service.formats().knows_extension(extension) => {
            document::parse_id(id)?
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!(
                    "{name:?} is not a job id, with the extension of an export format (.csv, …) or without"
                ),
            ));
        }
    };
    let access = download_access(&app, &parts, id).await?;
    let requested = range::parse(
        parts
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok()),
    );
    let range = match requested {
        Requested::Whole => None,
        Requested::From(range) => Some(range),
        Requested::Suffix(n) => {
            // The length is needed first; opening is cheap.
            let whole = access.download(&app, id, None).await?;
            let len = whole.stream.total_len;
            if n == 0 {
                return Err(crate::error::Error::RangeNotSatisfiable {
                    start: len,
                    end: len,
                    len,
                }
                .into());
            }
            Some(len.saturating_sub(n)..len)
        }
    };
    let partial = range.is_some();
    let download = access.download(&app, id, range).await?;
    let stream = download.stream;
    let served = stream.range.clone();
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = Response::new(Body::from_stream(stream.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        // Formats are registered with visible-ASCII content types only.
        HeaderValue::from_str(&download.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(served.end - served.start),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // The name is a UUID and an extension: safe to quote as is.
    let disposition = format!("attachment; filename=\"{id}.{}\"", download.extension);
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if partial {
        let content_range = format!(
            "bytes {}-{}/{}",
            served.start,
            served.end.saturating_sub(1),
            stream.total_len
        );
        if let Ok(value) = HeaderValue::from_str(&content_range) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

pub(super) async fn events<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    request: Request,
) -> Answer {
    let (parts, _) = request.into_parts();
    let principal = principal(&app, &parts).await?;
    let max = app.options.events_page_limit.max(1);
    let (mut after, mut limit) = (None, max);
    for pair in parts.uri.query().unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value.parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("{what} must be a non-negative integer, not {value:?}"),
                )
            })
        };
        match key {
            "last_id" => after = Some(number("last_id")?),
            "limit" => match number("limit")? {
                0 => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        "limit must be at least 1",
                    ));
                }
                n => limit = usize::try_from(n).unwrap_or(max).min(max),
            },
            _ => {}
        }
    }
    let page = app.service.events_after(&principal, after, limit).await?;
    Ok(respond(StatusCode::OK, &document::events(&page)))
}

pub(super) async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not support that method; see the Allow header",
    )
    .into_response()
}

pub(super) async fn no_route(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
    .into_response()
}
