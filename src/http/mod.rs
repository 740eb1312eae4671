//! An axum router with Elide-compatible JSON:API routes (feature `axum`).
//!
//! The crate itself stays HTTP-agnostic; this module is the ready adapter
//! most hosts want. Nest [`router`] into your own app and tell it how a
//! request becomes a [`Principal`](crate::Principal) by implementing [`PrincipalResolver`]
//! (or passing a closure):
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_query::http::{self, AuthError};
//! use async_query::{AsyncQueryService, Principal};
//! # struct Exec;
//! # #[async_trait::async_trait]
//! # impl async_query::QueryExecutor for Exec {
//! #     async fn execute(&self, _: &async_query::AsyncQuery, _: async_query::ExecutionContext)
//! #         -> Result<async_query::QueryOutput, async_query::BoxError> {
//! #         Ok(async_query::QueryOutput::body("[]", 0))
//! #     }
//! # }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = AsyncQueryService::builder().executor(Arc::new(Exec)).build()?;
//! // However your app authenticates: here, a user your auth middleware put
//! // into the request's extensions.
//! #[derive(Clone)]
//! struct User(String);
//! let resolve = |request: &axum::http::request::Parts| {
//!     request
//!         .extensions
//!         .get::<User>()
//!         .map(|user| Principal::new(user.0.clone()))
//!         .ok_or_else(|| AuthError::unauthorized("log in first"))
//! };
//! let app = axum::Router::new().nest("/api/v1", http::router(service, resolve));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Routes
//!
//! | method and path | what it does | success |
//! |---|---|---|
//! | `POST /asyncQuery`, `POST /tableExport` | submit; answers after the async-after wait | 201 with `Location: …/{type}/{id}` |
//! | `GET /asyncQuery`, `GET /tableExport` | the caller's jobs of that kind (an admin's: everyone's), newest first; `filter[status]=A,B`, `filter[createdFrom]`, `filter[createdBefore]` (RFC 3339), `filter[principalName]` (admins), `sort=createdOn` or `-createdOn`, `page[size]` (default 100, at most 1,000), `page[cursor]`; `links.next` is the next page | 200 |
//! | `GET /asyncQuery/{id}`, `GET /tableExport/{id}` | the record | 200 |
//! | `PATCH /asyncQuery/{id}`, `PATCH /tableExport/{id}` | `status: "CANCELLED"` cancels | 200 |
//! | `GET /export/{id}[.ext]` | the stored export; `Range` gives 206; with `?expires=…&signature=…` (see [`DownloadLinks`]) no principal is needed | 200, 206 |
//! | `GET /asyncEvents?last_id=N&limit=M` | the caller's status changes after cursor `N` | 200 |
//! | `GET /asyncOverview` | for admins: queued and running jobs per instance and per principal, the oldest queued job, expired leases, the cleaner's recent sweeps ([`AsyncQueryService::overview`]) | 200 |
//! | `GET /asyncEvents/stream` | the same changes pushed as Server-Sent Events, resumable with `Last-Event-ID` (or `?last_id=N`); see below | 200 `text/event-stream` |
//!
//! # The dashboard (feature `dashboard`)
//!
//! With the feature `dashboard` the same router also serves a page at
//! [`HttpOptions::dashboard_path`] (default `/ui`; a path that collides
//! with the API's is refused), with its script and
//! stylesheet under it: users watch their jobs live, cancel them, download
//! finished exports, read failures and submit queries and exports; admins
//! also see everyone's jobs and the overview. Its assets are embedded in
//! the crate (no CDN, no build step) and it calls only the routes above,
//! sending the browser's cookies, so every request passes `resolver` as
//! the API's do; a resolver that reads the host's session cookie is all it
//! needs ([`HeaderPrincipal`] is not enough, since a browser cannot add
//! headers to an event stream or a download link). The page itself is
//! served to anyone and holds no data.
//!
//! ```
//! # #[cfg(feature = "dashboard")] {
//! use async_query::http::{self, HttpOptions};
//! # use async_query::AsyncQueryService;
//! # fn mount(service: AsyncQueryService, resolver: impl http::PrincipalResolver) -> async_query::Result<axum::Router> {
//! // The API, and the dashboard at /jobs/ops.
//! let options = HttpOptions::default().with_dashboard_path("/ops")?;
//! Ok(axum::Router::new().nest("/jobs", http::router_with_options(service, resolver, options)))
//! # }
//! # }
//! ```
//!
//! # The event stream
//!
//! `GET /asyncEvents/stream` answers `text/event-stream` and keeps the
//! connection open, in the spirit of Superset's WebSocket transport:
//!
//! - `ready` first, with `id:` the position the stream starts after (the
//!   client's `Last-Event-ID` or `last_id`; without one, the newest change,
//!   so only changes from now on follow). A client that shows a list of
//!   jobs reloads it when `ready` arrives; from then on nothing is missed.
//! - `asyncEvent` for each status or progress change, with `id:` its
//!   position and as data the same `asyncEvent` resource object
//!   `/asyncEvents` returns. A browser's `EventSource` reconnects by
//!   itself and sends the last `id:` as `Last-Event-ID`, so the stream
//!   resumes where it broke off.
//! - `missed` when changes after the cursor are no longer kept: reload.
//! - `closing` (the service is shutting down, see
//!   [`AsyncQueryService::closing`]) or `failure` (the event store
//!   failed) as the last event before the server ends the stream.
//!
//! Comments (`:`) keep idle connections alive every
//! [`HttpOptions::event_stream_keep_alive`]. Each stream holds at most one
//! page ([`HttpOptions::events_page_limit`]) of events and reads the next
//! only when the client has taken them, and at most
//! [`HttpOptions::max_event_streams`] are open at once (one more gets 503
//! `too_many_streams` with `Retry-After`).
//!
//! Documents use the media type `application/vnd.api+json` (requests may
//! also say `application/json`). Attribute names follow Elide's
//! `AsyncQuery` and `TableExport` models; `docs/openapi.json` in the
//! repository describes every route and is checked against this router by
//! a test.
//!
//! # Errors
//!
//! Every error is a JSON:API error document
//! (`{"errors":[{"status","code","title","detail"}]}`):
//!
//! | status | when |
//! |---|---|
//! | 400 | malformed JSON or document, bad UUID, unknown attribute, bad query parameter, a query the executor or the host's [`SubmitPolicy`](crate::policy::SubmitPolicy) rejects as invalid |
//! | 401 | the [`PrincipalResolver`] found no principal ([`HeaderPrincipal`]: no `X-User`), or one without a name |
//! | 403 | a change that is not allowed: setting a read-only attribute, `/asyncOverview` for a non-admin, or any `PATCH` other than `status: "CANCELLED"`; a download link that was changed (`link_invalid`) or has expired (`link_expired`); a submission the host's `SubmitPolicy` forbids this principal (`forbidden`) |
//! | 404 | unknown route, unknown id, or a job of another principal (the same answer, so ids cannot be probed); an export without a stored result |
//! | 405 | a method the route does not have (with `Allow`) |
//! | 410 | an export whose result outlived [`Config::result_lifetime`](crate::Config::result_lifetime) (the record stays and says so) |
//! | 409 | a client id already taken: `duplicate_id` to whoever may see that job, `id_unavailable` (saying nothing of whose) to anyone else; `type` or `id` in the document does not match the URL |
//! | 413 | request body above [`HttpOptions::max_body_bytes`] |
//! | 415 | a body that is not `application/vnd.api+json` / `application/json` |
//! | 416 | a `Range` outside the file (with `Content-Range: bytes */len`) |
//! | 429 | the queue is full (with `Retry-After`) |
//! | 503 | the service is shutting down, or its database or storage failed |

#[cfg(feature = "dashboard")]
mod dashboard;
mod document;
mod handlers;
mod links;
mod listing;
mod overview;
mod principal;
mod range;
mod stream;
mod submission;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::AsyncQueryService;

pub use links::{DownloadLinks, LinkRefused, MIN_KEY_BYTES};
pub use principal::{AuthError, HeaderPrincipal, PrincipalResolver};

/// The JSON:API media type.
pub const JSON_API: &str = "application/vnd.api+json";

/// Every route of [`router`] with its methods (`HEAD` is implied by `GET`),
/// for documentation and tests.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/asyncQuery", &["GET", "POST"]),
    ("/asyncQuery/{id}", &["GET", "PATCH"]),
    ("/tableExport", &["GET", "POST"]),
    ("/tableExport/{id}", &["GET", "PATCH"]),
    ("/export/{id}", &["GET"]),
    ("/asyncEvents", &["GET"]),
    ("/asyncEvents/stream", &["GET"]),
    ("/asyncOverview", &["GET"]),
];

/// Settings of the HTTP adapter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Prefix of the `url` attribute of a finished table export: the path
    /// at which the host serves this router's `/export` route. Default
    /// `"/export"` (right for a router served at the root); set it to
    /// `"/api/v1/export"` when nesting under `/api/v1`, or to an absolute
    /// URL.
    pub export_url_prefix: String,
    /// How many status changes the service keeps for `/asyncEvents`
    /// (see [`AsyncQueryService::enable_event_log`]). Default 10,000.
    pub event_log_capacity: usize,
    /// The most events one `/asyncEvents` answer holds (and the default
    /// `limit`). Default 100.
    pub events_page_limit: usize,
    /// The largest request body accepted. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Expiring download links as finished exports' `url`; see
    /// [`DownloadLinks`]. Default `None`: the `url` is the plain
    /// `/export/{id}` path, served to the job's principal only.
    pub download_links: Option<DownloadLinks>,
    /// The most `/asyncEvents/stream` connections open at once; one more
    /// is answered 503 `too_many_streams`. Default 1,000.
    pub max_event_streams: usize,
    /// How often an idle event stream sends a comment, so that proxies
    /// and load balancers keep it open. Default 15 s.
    pub event_stream_keep_alive: Duration,
    /// Where the router serves the dashboard page (feature `dashboard`);
    /// read with [`dashboard_path`](Self::dashboard_path), set with
    /// [`with_dashboard_path`](Self::with_dashboard_path), which checks it.
    #[cfg(feature = "dashboard")]
    dashboard_path: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            export_url_prefix: "/export".into(),
            event_log_capacity: 10_000,
            events_page_limit: 100,
            max_body_bytes: 1 << 20,
            download_links: None,
            max_event_streams: 1_000,
            event_stream_keep_alive: Duration::from_secs(15),
            #[cfg(feature = "dashboard")]
            dashboard_path: "/ui".into(),
        }
    }
}

impl HttpOptions {
    /// Sets [`download_links`](Self::download_links).
    pub fn with_download_links(mut self, links: DownloadLinks) -> Self {
        self.download_links = Some(links);
        self
    }

    /// Where the router serves the dashboard page (feature `dashboard`),
    /// relative to where the router is mounted: one leading slash, no
    /// trailing one. Default `"/ui"`.
    #[cfg(feature = "dashboard")]
    pub fn dashboard_path(&self) -> &str {
        &self.dashboard_path
    }

    /// Sets [`dashboard_path`](Self::dashboard_path) (feature `dashboard`);
    /// slashes around it are normalised, so `"ops/"` serves `/ops`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for a path that is empty,
    /// whose first segment is one of the API's ([`ROUTES`]: the page would
    /// hide or collide with a route), that holds a character the router
    /// treats as a pattern (`{`, `}`, `*`) or that a URL cannot carry as it
    /// is, or that has an empty, `.` or `..` segment (a browser would never
    /// ask for it).
    #[cfg(feature = "dashboard")]
    pub fn with_dashboard_path(mut self, path: impl AsRef<str>) -> crate::Result<Self> {
        self.dashboard_path = dashboard::checked_path(path.as_ref())?;
        Ok(self)
    }

    /// Sets [`export_url_prefix`](Self::export_url_prefix).
    pub fn with_export_url_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.export_url_prefix = prefix.into();
        self
    }
}

struct App<R> {
    service: AsyncQueryService,
    resolver: R,
    options: HttpOptions,
    /// One permit per open event stream.
    streams: Arc<tokio::sync::Semaphore>,
}

/// The routes, with [`HttpOptions::default`]. See the [module docs](self).
pub fn router<R: PrincipalResolver>(service: AsyncQueryService, resolver: R) -> Router {
    router_with_options(service, resolver, HttpOptions::default())
}

/// The routes with explicit [`HttpOptions`]. Turns on the service's event
/// log for `/asyncEvents`.
pub fn router_with_options<R: PrincipalResolver>(
    service: AsyncQueryService,
    resolver: R,
    options: HttpOptions,
) -> Router {
    use document::Collection::{Query, TableExport};
    use handlers::{create, download, events, method_not_allowed, no_route, read, update};

    service.enable_event_log(options.event_log_capacity);
    let app = Arc::new(App {
        service,
        resolver,
        streams: Arc::new(tokio::sync::Semaphore::new(options.max_event_streams)),
        options,
    });
    let on = |collection| {
        (
            post(move |state, req| create(state, collection, req))
                .get(move |state, req| listing::list(state, collection, req))
                .fallback(method_not_allowed),
            get(move |state, req| read(state, collection, req))
                .patch(move |state, req| update(state, collection, req))
                .fallback(method_not_allowed),
        )
    };
    let (query_collection, query_item) = on(Query);
    let (export_collection, export_item) = on(TableExport);
    #[cfg(feature = "dashboard")]
    let page = dashboard::routes::<R>(&app.options.dashboard_path);
    #[cfg(not(feature = "dashboard"))]
    let page = Router::new();
    Router::new()
        .route("/asyncQuery", query_collection)
        .route("/asyncQuery/{id}", query_item)
        .route("/tableExport", export_collection)
        .route("/tableExport/{id}", export_item)
        .route(
            "/export/{id}",
            get(download::<R>).fallback(method_not_allowed),
        )
        .route(
            "/asyncEvents",
            get(events::<R>).fallback(method_not_allowed),
        )
        .route(
            "/asyncEvents/stream",
            get(stream::event_stream::<R>).fallback(method_not_allowed),
        )
        .route(
            "/asyncOverview",
            get(overview::overview::<R>).fallback(method_not_allowed),
        )
        .merge(page)
        .fallback(no_route)
        .with_state(app)
}
