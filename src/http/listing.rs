//! `GET /asyncQuery` and `GET /tableExport`: the caller's job history (an
//! admin's: everyone's) as a JSON:API collection, filtered, sorted and
//! paged by an opaque cursor.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::document::{self, ApiError, Collection, respond};
use super::handlers::{download_link, principal};
use super::{App, PrincipalResolver};
use crate::dao::{HistoryOrder, KindFilter};
use crate::history::HistoryQuery;
use crate::model::QueryStatus;

fn invalid(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail)
}

/// The history query of a request's query string.
fn history_query(
    pairs: &[(String, String)],
    collection: Collection,
) -> Result<HistoryQuery, ApiError> {
    let mut query = HistoryQuery::new().with_kind(match collection {
        Collection::Query => KindFilter::Query,
        Collection::TableExport => KindFilter::TableExport,
    });
    let time = |name: &str, value: &str| {
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                invalid(format!(
                    "{name} must be an RFC 3339 time, not {value:?}: {e}"
                ))
            })
    };
    for (name, value) in pairs {
        match name.as_str() {
            "filter[status]" => {
                query.statuses = value
                    .split(',')
                    .map(|s| {
                        s.parse::<QueryStatus>()
                            .map_err(|e| invalid(format!("filter[status]: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "filter[createdFrom]" => query.created_from = Some(time(name, value)?),
            "filter[createdBefore]" => query.created_before = Some(time(name, value)?),
            "filter[principalName]" => query.principal = Some(value.clone()),
            "sort" => {
                query.order = match value.as_str() {
                    "-createdOn" => HistoryOrder::NewestFirst,
                    "createdOn" => HistoryOrder::OldestFirst,
                    other => {
                        return Err(invalid(format!(
                            "sort must be createdOn or -createdOn, not {other:?}"
                        )));
                    }
                }
            }
            "page[size]" => {
                let size = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "page[size] must be a positive integer, not {value:?}"
                        ))
                    })?;
                query.page_size = Some(size);
            }
            "page[cursor]" => query.cursor = Some(value.clone()),
            other if other.starts_with("filter[") || other.starts_with("page[") => {
                return Err(invalid(format!(
                    "unknown parameter {other}; filters are filter[status], filter[createdFrom], \
                     filter[createdBefore] and filter[principalName]; pages are page[size] and \
                     page[cursor]"
                )));
            }
            _ => {}
        }
    }
    Ok(query)
}

/// The path the client asked for (a nested router sees it without its
/// prefix, so the original URI is preferred) with `pairs`, and the cursor
/// `cursor` in place of any other.
fn link(parts: &Parts, pairs: &[(String, String)], cursor: Option<&str>) -> String {
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |original| original.0.path());
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if cursor.is_none() || name != "page[cursor]" {
            query.append_pair(name, value);
        }
    }
    if let Some(cursor) = cursor {
        query.append_pair("page[cursor]", cursor);
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

pub(super) async fn list<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    collection: Collection,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let principal = principal(&app, &parts).await?;
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let query = history_query(&pairs, collection)?;
    // The only requests `list` refuses are bad parameters (the cursor).
    let page = match app.service.list(&principal, &query).await {
        Err(crate::Error::InvalidRequest { reason }) => return Err(invalid(reason)),
        answer => answer?,
    };
    let mut data = Vec::with_capacity(page.jobs.len());
    for job in &page.jobs {
        let url = download_link(&app, job).await;
        data.push(document::resource(job, &app.options.export_url_prefix, url));
    }
    let mut links = json!({ "self": link(&parts, &pairs, None) });
    if let Some(next) = &page.next {
        links["next"] = json!(link(&parts, &pairs, Some(next)));
    }
    Ok(respond(
        StatusCode::OK,
        &json!({ "data": data, "links": links, "meta": { "pageSize": page.page_size } }),
    ))
}
