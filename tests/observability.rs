//! Tracing spans: submit, claim, run, store, cancel and clean, each with
//! the job's id and principal where there is one.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_query::{Config, ExportFormat, SubmitRequest};
use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's name and fields.
type Span = (String, HashMap<String, String>);

/// Each span, in the order they were created.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Span>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((attrs.metadata().name().to_owned(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(spans.len() - 1);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(&index) = span.extensions().get::<usize>() else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[index].1));
    }
}

impl Spans {
    /// The fields of the spans called `name`.
    fn named(&self, name: &str) -> Vec<HashMap<String, String>> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn the_lifecycle_is_traced_with_job_and_principal() {
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let h = harness(Config {
        pool_size: 1,
        cleaner_interval: Duration::from_secs(1),
        ..config()
    });
    let job = submit(&h.service, SubmitRequest::query("sleep 10")).await;
    let export = submit(
        &h.service,
        SubmitRequest::export("rows 3", ExportFormat::CSV),
    )
    .await;
    // One slot busy, so the next job waits and is claimed.
    let blocking = submit(
        &h.service,
        SubmitRequest::query("block").with_async_after(Duration::ZERO),
    )
    .await;
    let queued = submit(
        &h.service,
        SubmitRequest::query("sleep 1").with_async_after(Duration::ZERO),
    )
    .await;
    h.service.cancel(&alice(), blocking.id).await.unwrap();
    h.service
        .wait(&alice(), queued.id, 10 * SECOND)
        .await
        .unwrap();
    tokio::time::sleep(2 * SECOND).await;

    let of = |name: &str, id: uuid::Uuid| {
        spans
            .named(name)
            .into_iter()
            .find(|fields| fields.get("job") == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no {name} span for {id}"))
    };
    for id in [job.id, export.id, blocking.id, queued.id] {
        assert_eq!(of("submit", id)["principal"], "alice");
        assert_eq!(of("run", id)["principal"], "alice");
    }
    assert_eq!(of("store", export.id)["format"], "CSV");
    assert_eq!(of("cancel", blocking.id)["principal"], "alice");
    let claims = spans.named("claim");
    assert!(
        claims
            .iter()
            .any(|fields| fields.get("claimed").is_some_and(|n| n != "0")),
        "a claim span says how many it claimed: {claims:?}"
    );
    assert!(
        !spans.named("clean").is_empty(),
        "the cleaner's sweeps are spans"
    );
}
