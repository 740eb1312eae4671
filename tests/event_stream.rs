//! `GET /asyncEvents/stream`: status changes pushed as Server-Sent Events
//! over a real TCP connection, resumed with `Last-Event-ID`, scoped to the
//! caller, bounded in number, and ended cleanly by a shutdown.
#![cfg(feature = "axum")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_query::http::{HeaderPrincipal, HttpOptions, JSON_API, router_with_options};
use async_query::testing::ScriptedExecutor;
use async_query::{AsyncQueryService, Config, MemoryDao};
use futures::StreamExt;
use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug, Clone, Default)]
struct Sse {
    event: String,
    id: Option<String>,
    data: String,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
    /// `(jobId, status)` of an `asyncEvent`.
    fn change(&self) -> (String, String) {
        assert_eq!(self.event, "asyncEvent", "{self:?}");
        let attributes = &self.json()["attributes"];
        (
            attributes["jobId"].as_str().expect("jobId").to_owned(),
            attributes["status"].as_str().expect("status").to_owned(),
        )
    }
}

/// Reads events off an open `text/event-stream` response.
struct Reader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Reader {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().expect("text");
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Reader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); `None` once the server ended
    /// the stream. Fails the test after 10 s without one.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse::default();
                let mut fields = 0;
                for line in frame.lines() {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match name {
                        "" => continue, // a keep-alive comment
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => event.data.push_str(value),
                        _ => {}
                    }
                    fields += 1;
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")?;
            let chunk = chunk.expect("the stream reads");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next `asyncEvent` of job `id`, skipping others.
    async fn change_of(&mut self, id: &str) -> (Sse, String) {
        loop {
            let event = self.next().await.expect("the stream is open");
            if event.event == "asyncEvent" && event.change().0 == id {
                let status = event.change().1;
                return (event, status);
            }
        }
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
    service: AsyncQueryService,
}

impl Server {
    async fn start(options: HttpOptions) -> Self {
        let service = AsyncQueryService::builder()
            .config(Config {
                poll_interval: Duration::from_millis(200),
                ..Config::default()
            })
            .dao(Arc::new(MemoryDao::new()))
            .executor(Arc::new(ScriptedExecutor::new()))
            .build()
            .expect("service");
        let app = router_with_options(service.clone(), HeaderPrincipal, options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            base,
            client: reqwest::Client::new(),
            service,
        }
    }

    async fn open(&self, user: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .get(format!("{}/asyncEvents/stream", self.base))
            .header("X-User", user);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("an answer")
    }

    /// `user` submits `query`, answered at once (async-after 0); its id.
    async fn submit(&self, user: &str, query: &str) -> String {
        let document = json!({ "data": { "type": "asyncQuery", "attributes": {
            "query": query, "queryType": "SQL", "asyncAfterSeconds": 0 } } });
        let response = self
            .client
            .post(format!("{}/asyncQuery", self.base))
            .header("X-User", user)
            .header("Content-Type", JSON_API)
            .body(document.to_string())
            .send()
            .await
            .expect("an answer");
        let (status, body) = common::parsed(response).await;
        assert_eq!(status, 201, "{body}");
        body["data"]["id"].as_str().expect("an id").to_owned()
    }
}

#[tokio::test]
async fn changes_arrive_live_and_a_reconnect_with_last_event_id_resumes() {
    let server = Server::start(HttpOptions::default()).await;
    let mut stream = Reader::new(server.open("alice", None).await);
    let ready = stream.next().await.expect("ready");
    assert_eq!(ready.event, "ready");
    assert_eq!(
        ready.id.as_deref(),
        Some("0"),
        "a new stream starts at the newest"
    );

    let slow = server.submit("alice", "sleep 300").await;
    let (running, status) = stream.change_of(&slow).await;
    assert_eq!(status, "PROCESSING");
    let (_, status) = stream.change_of(&slow).await;
    assert_eq!(status, "COMPLETE", "pushed, with no reload");
    drop(stream);

    // Reconnecting after the PROCESSING event replays what followed it.
    let resume = running.id.clone().expect("events carry ids");
    let mut stream = Reader::new(server.open("alice", Some(&resume)).await);
    let ready = stream.next().await.expect("ready");
    assert_eq!(ready.id.as_deref(), Some(resume.as_str()));
    let replayed = stream.next().await.expect("the missed change");
    assert_eq!(replayed.change(), (slow.clone(), "COMPLETE".into()));
    let resumed_at: u64 = resume.parse().expect("a number");
    assert_eq!(replayed.id, Some((resumed_at + 1).to_string()));

    // The same cursor as a query parameter, for a first connection.
    let response = server
        .client
        .get(format!("{}/asyncEvents/stream?last_id=0", server.base))
        .header("X-User", "alice")
        .send()
        .await
        .expect("an answer");
    let mut stream = Reader::new(response);
    assert_eq!(stream.next().await.expect("ready").event, "ready");
    let first = stream.next().await.expect("the oldest change");
    assert_eq!(first.id.as_deref(), Some("1"));
    assert_eq!(first.change().0, slow);
}

#[tokio::test]
async fn a_stream_carries_only_the_callers_jobs() {
    let server = Server::start(HttpOptions::default()).await;
    let mut bobs = Reader::new(server.open("bob", None).await);
    assert_eq!(bobs.next().await.expect("ready").event, "ready");
    let alices = server.submit("alice", "sleep 10").await;
    let own = server.submit("bob", "sleep 10").await;
    // Bob's first change is his own job's; Alice's never reach him.
    loop {
        let event = bobs.next().await.expect("open");
        let (job, status) = event.change();
        assert_ne!(job, alices, "Bob saw Alice's job");
        assert_eq!(job, own);
        if status == "COMPLETE" {
            break;
        }
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_a_closing_event() {
    let server = Server::start(HttpOptions::default()).await;
    let mut stream = Reader::new(server.open("alice", None).await);
    assert_eq!(stream.next().await.expect("ready").event, "ready");
    server
        .service
        .shutdown(Duration::from_secs(1))
        .await
        .expect("shutdown");
    let last = stream.next().await.expect("a last event");
    assert_eq!(last.event, "closing", "{last:?}");
    assert!(stream.next().await.is_none(), "the server ended the stream");
}

#[tokio::test]
async fn streams_are_bounded_and_a_freed_slot_is_reused() {
    let mut options = HttpOptions::default();
    options.max_event_streams = 1;
    options.event_stream_keep_alive = Duration::from_millis(50);
    let server = Server::start(options).await;
    let mut first = Reader::new(server.open("alice", None).await);
    assert_eq!(first.next().await.expect("ready").event, "ready");

    let refused = server.open("bob", None).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let (_, body) = common::parsed(refused).await;
    assert_eq!(body["errors"][0]["code"], "too_many_streams");

    // Once the first client goes, the server notices at its next
    // keep-alive and frees the slot.
    drop(first);
    let mut tries = 0;
    let mut again = loop {
        let response = server.open("bob", None).await;
        if response.status() == 200 {
            break Reader::new(response);
        }
        tries += 1;
        assert!(tries < 100, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.next().await.expect("ready").event, "ready");
}

#[tokio::test]
async fn a_bad_cursor_is_400_and_no_principal_401() {
    let server = Server::start(HttpOptions::default()).await;
    let (status, body) = common::parsed(server.open("alice", Some("seven")).await).await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .expect("detail")
            .contains("Last-Event-ID"),
        "{body}"
    );
    let response = server
        .client
        .get(format!("{}/asyncEvents/stream", server.base))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 401);
}
