//! `GET /asyncEvents/stream`: the caller's status changes pushed as
//! Server-Sent Events, resumable with `Last-Event-ID`.
//!
//! Each connection holds one subscription (a wake-up, nothing buffered
//! beyond the channel) and at most one page of the event log
//! ([`HttpOptions::events_page_limit`](super::HttpOptions::events_page_limit)
//! events): the next page is read only after the client has taken the
//! last one, so a slow client slows its own stream and nobody else's. At
//! most [`HttpOptions::max_event_streams`](super::HttpOptions::max_event_streams)
//! streams are open at once; one more is answered 503 with `Retry-After`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{FutureExt, Stream};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::document::{self, ApiError};
use super::handlers::{Answer, principal};
use super::{App, PrincipalResolver};
use crate::Principal;
use crate::event::{LoggedEvent, Subscription};

/// How long a client waits before reconnecting, sent with the first event.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// Where a stream starts: after the client's cursor, or from now.
fn cursor(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let parse = |what: &str, value: &str| {
        value.trim().parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "{what} must be a non-negative integer (an event id), not {value:?}"
            ))
        })
    };
    if let Some(value) = headers.get("last-event-id") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?;
        return parse("Last-Event-ID", value);
    }
    for pair in query.unwrap_or_default().split('&') {
        if let Some(value) = pair.strip_prefix("last_id=") {
            return parse("last_id", value);
        }
    }
    Ok(None)
}

pub(super) async fn event_stream<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    request: Request,
) -> Answer {
    let (parts, _) = request.into_parts();
    let principal = principal(&app, &parts).await?;
    let after = cursor(&parts.headers, parts.uri.query())?;
    let Ok(permit) = Arc::clone(&app.streams).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open; retry later, or poll /asyncEvents",
        )
        .with_header(RETRY_AFTER, HeaderValue::from_static("5")));
    };
    // Subscribed before the first read: a change made after that read
    // wakes the stream.
    let subscription = app.service.subscribe(&principal);
    let cursor = match after {
        Some(after) => after,
        // From now: the newest position of the caller's stream.
        None => app.service.events_after(&principal, None, 1).await?.newest,
    };
    let keep_alive = KeepAlive::new().interval(app.options.event_stream_keep_alive);
    let state = Live {
        app,
        principal,
        subscription,
        cursor,
        pending: VecDeque::new(),
        phase: Phase::Ready,
        _permit: permit,
    };
    let mut response = Sse::new(events(state))
        .keep_alive(keep_alive)
        .into_response();
    // Proxies must not hold the stream back (nginx buffers by default).
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

enum Phase {
    /// The first event is still to be sent.
    Ready,
    Live,
    Ended,
}

/// One open stream.
struct Live<R> {
    app: Arc<App<R>>,
    principal: Principal,
    subscription: Subscription,
    /// The id of the last event sent (or of the position it started at).
    cursor: u64,
    /// Read from the log, not yet sent: at most one page.
    pending: VecDeque<LoggedEvent>,
    phase: Phase,
    /// Counts this stream in `max_event_streams` while it lives.
    _permit: OwnedSemaphorePermit,
}

fn events<R: PrincipalResolver>(
    state: Live<R>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok(event), state))
    })
}

impl<R: PrincipalResolver> Live<R> {
    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        match self.phase {
            Phase::Ended => return None,
            Phase::Ready => {
                self.phase = Phase::Live;
                return Some(
                    Event::default()
                        .event("ready")
                        .id(self.cursor.to_string())
                        .retry(RECONNECT_AFTER)
                        .data(json!({ "lastId": self.cursor.to_string() }).to_string()),
                );
            }
            Phase::Live => {}
        }
        loop {
            if self.app.service.closing().now_or_never().is_some() {
                return Some(self.end("closing", "the service is shutting down"));
            }
            if let Some(logged) = self.pending.pop_front() {
                self.cursor = logged.seq;
                return Some(
                    Event::default()
                        .event("asyncEvent")
                        .id(logged.seq.to_string())
                        .data(document::event(&logged).to_string()),
                );
            }
            let limit = self.app.options.events_page_limit.max(1);
            let page = match self
                .app
                .service
                .events_after(&self.principal, Some(self.cursor), limit)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    // The client reconnects with its cursor and resumes.
                    tracing::warn!(error = %e, "reading events for a stream failed; ending it");
                    return Some(self.end("failure", &e.to_string()));
                }
            };
            if page.missed {
                self.cursor = page.last_id;
                return Some(
                    Event::default()
                        .event("missed")
                        .id(page.last_id.to_string())
                        .data(json!({ "lastId": page.last_id.to_string() }).to_string()),
                );
            }
            if !page.events.is_empty() {
                self.pending.extend(page.events);
                continue;
            }
            tokio::select! {
                () = self.app.service.closing() => {}
                _ = self.subscription.recv() => {}
                // A change of another instance, or one the subscription
                // lagged behind on, is seen within one poll interval.
                () = tokio::time::sleep(self.app.service.config().poll_interval) => {}
            }
        }
    }

    /// A last event saying why the stream ends.
    fn end(&mut self, name: &'static str, detail: &str) -> Event {
        self.phase = Phase::Ended;
        Event::default()
            .event(name)
            .data(json!({ "detail": detail }).to_string())
    }
}
