//! The dashboard (feature `dashboard`): a page where people watch, cancel
//! and download their jobs, and admins watch the queue, served by the same
//! router at [`HttpOptions::dashboard_path`](super::HttpOptions::dashboard_path)
//! (default `/ui`).
//!
//! Its HTML, CSS and JavaScript are embedded in the crate (no CDN, no
//! build step, no framework) and talk only to this router's routes, so
//! every request of the page passes the host's
//! [`PrincipalResolver`](super::PrincipalResolver) as the API's do: a
//! resolver that reads a session cookie works for the page as it is. The
//! page itself holds no data and is served to anyone; the data behind it
//! is not.
//!
//! What it uses: the job listings, reads, `PATCH` cancellation, `POST`
//! submission and `/export` downloads; `/asyncEvents/stream` for live
//! changes, falling back to polling `/asyncEvents`; and, for admins,
//! `/asyncOverview` (a principal without the admin role gets 403 there,
//! which is how the page knows to show the user's view).

use std::sync::Arc;

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{App, PrincipalResolver, ROUTES};
use crate::{Error, ExportFormat, Result};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only this page's own files; no inline script, no other origin.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// `path` as the dashboard's route (one leading slash, no trailing one),
/// if the router can serve it beside the API.
pub(super) fn checked_path(path: &str) -> Result<String> {
    let trimmed = path.trim_matches('/');
    let refuse = |why: &str| {
        Err(Error::Config {
            reason: format!("the dashboard path {path:?} {why}"),
        })
    };
    if trimmed.is_empty() {
        return refuse("is empty");
    }
    if !trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
    {
        return refuse("may hold only letters, digits, '-', '.', '_', '~' and '/'");
    }
    // A browser drops `.` and `..` segments and may merge `//` before it
    // asks, so a page there could never be reached.
    if trimmed.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return refuse("has an empty, '.' or '..' segment");
    }
    let first = trimmed.split('/').next().unwrap_or_default();
    let taken = ROUTES
        .iter()
        .any(|(route, _)| route.trim_start_matches('/').split('/').next() == Some(first));
    if taken {
        return refuse(&format!(
            "starts with /{first}, which is one of the API's routes"
        ));
    }
    Ok(format!("/{trimmed}"))
}

/// The page and its two assets under `path`.
pub(super) fn routes<R: PrincipalResolver>(path: &str) -> Router<Arc<App<R>>> {
    Router::new()
        .route(path, get(page::<R>))
        .route(&format!("{path}/"), get(page::<R>))
        .route(
            &format!("{path}/app.js"),
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            &format!("{path}/style.css"),
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (headers(content_type), body).into_response()
}

/// What every file of the page is served with.
fn headers(content_type: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers
}

/// Escapes `text` for an HTML attribute value.
fn attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page, told where the API is mounted (the part of the request's
/// path before this router's own) and which export formats exist.
async fn page<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Response {
    let api = original
        .path()
        .strip_suffix(uri.path())
        .unwrap_or_default()
        .to_owned();
    let root = format!("{api}{}", app.options.dashboard_path);
    let formats: Vec<&str> = app
        .service
        .formats()
        .names()
        .map(ExportFormat::as_str)
        .collect();
    let body = INDEX
        .replace("{{api}}", &attribute(&api))
        .replace("{{root}}", &attribute(&root))
        .replace("{{formats}}", &attribute(&formats.join(",")))
        .replace(
            "{{max_async_after}}",
            &app.service.config().max_async_after.as_secs().to_string(),
        );
    let mut headers = headers("text/html; charset=utf-8");
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    (headers, body).into_response()
}
