//! [`ScriptedExecutor`]: an executor whose query text says what to do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::executor::{ExecutionContext, QueryExecutor, QueryOutput};
use crate::model::{AsyncQuery, JobKind};
use crate::progress::Progress;

/// An executor driven by its query text, for lifecycle tests:
///
/// | query | what it does |
/// |---|---|
/// | `sleep <ms>` | sleeps on Tokio's clock, then returns `{"slept_ms":<ms>}` |
/// | `fail <message>` | returns an error with `message` |
/// | `flaky <n>` | on attempts 1 to `n` returns a [`Transient`](crate::Transient) error `flaky: attempt <i>`; then `{"attempt":<i>}` |
/// | `stall <n>` | on attempts 1 to `n` never finishes by itself (as `block`); then `{"attempt":<i>}` |
/// | `panic <message>` | panics with `message` |
/// | `block` | never finishes by itself (until cancelled or timed out) |
/// | `rows <n>` | an export of `n` rows (`id`, `name`, `note`); a body of `n` for a query |
/// | `rows <n> fail <k>` | an export whose stream fails at row `k` |
/// | `rows <n> flaky <k>` | an export whose stream fails transiently at row `k` on the first attempt |
/// | `rows <n> every <ms>` | an export yielding one row every `ms` milliseconds of Tokio time |
/// | `progress <n> every <ms>` | `n` steps of `ms` milliseconds of Tokio time, reporting [`Progress`](crate::Progress) `i` of `n` (message `step i`) after each; returns `{"steps":<n>}` |
/// | anything else | returns the query text as the body |
///
/// Exports report their rows as progress (`i` of `n`) as they yield them.
///
/// It records the order in which queries started.
#[derive(Debug, Default)]
pub struct ScriptedExecutor {
    started: Mutex<Vec<String>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl ScriptedExecutor {
    /// A new executor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Query texts in the order their execution started.
    pub fn started(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The most queries that ran at the same time.
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }
}

struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, BoxError> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected a number, got {text:?}").into())
}

#[async_trait]
impl QueryExecutor for ScriptedExecutor {
    async fn execute(
        &self,
        job: &AsyncQuery,
        ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job.query.to_string());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let _running = Running(&self.running);
        let (verb, arg) = job.query.split_once(' ').unwrap_or((&job.query, ""));
        match verb {
            "sleep" => {
                let ms: u64 = parse(arg)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(QueryOutput::body(format!("{{\"slept_ms\":{ms}}}"), 1))
            }
            "progress" => {
                let (n, ms) = arg
                    .split_once(" every ")
                    .ok_or("expected progress <n> every <ms>")?;
                let (n, every): (u64, u64) = (parse(n)?, parse(ms)?);
                for i in 1..=n {
                    tokio::time::sleep(Duration::from_millis(every)).await;
                    let step = Progress::records(i).of(n).with_message(format!("step {i}"));
                    ctx.report_progress(step);
                }
                Ok(QueryOutput::body(format!("{{\"steps\":{n}}}"), n))
            }
            "fail" => Err(arg.to_owned().into()),
            "flaky" => {
                let failing: u32 = parse(arg)?;
                if job.attempt <= failing {
                    let error = format!("flaky: attempt {}", job.attempt);
                    return Err(crate::Transient::new(error).into());
                }
                Ok(QueryOutput::body(
                    format!("{{\"attempt\":{}}}", job.attempt),
                    1,
                ))
            }
            "panic" => panic!("{arg}"),
            "stall" if job.attempt > parse::<u32>(arg)? => Ok(QueryOutput::body(
                format!("{{\"attempt\":{}}}", job.attempt),
                1,
            )),
            "block" | "stall" => {
                futures::future::pending::<()>().await;
                unreachable!("pending() never completes")
            }
            "rows" => {
                let (arg, every) = match arg.split_once(" every ") {
                    Some((n, ms)) => (n, Some(Duration::from_millis(parse(ms)?))),
                    None => (arg, None),
                };
                let (n, fail_at) = match arg.split_once(" fail ") {
                    Some((n, k)) => (parse::<u64>(n)?, Some(parse::<u64>(k)?)),
                    None => match arg.split_once(" flaky ") {
                        Some((n, k)) if job.attempt == 1 => {
                            (parse::<u64>(n)?, Some(parse::<u64>(k)?))
                        }
                        Some((n, _)) => (parse::<u64>(n)?, None),
                        None => (parse::<u64>(arg)?, None),
                    },
                };
                let transient = arg.contains(" flaky ");
                if job.kind == JobKind::Query {
                    return Ok(QueryOutput::body(n.to_string(), n));
                }
                let ctx = std::sync::Arc::new(ctx);
                let rows = futures::stream::iter(0..n).then(move |i| {
                    let ctx = std::sync::Arc::clone(&ctx);
                    async move {
                        if let Some(every) = every {
                            tokio::time::sleep(every).await;
                        }
                        ctx.report_progress(Progress::records(i + 1).of(n));
                        if Some(i) == fail_at {
                            let error = format!("row source failed at row {i}");
                            return Err(if transient {
                                crate::Transient::new(error).into()
                            } else {
                                BoxError::from(error)
                            });
                        }
                        Ok(vec![
                            serde_json::json!(i),
                            serde_json::json!(format!("name {i}")),
                            if i % 2 == 0 {
                                serde_json::Value::Null
                            } else {
                                serde_json::json!("a,\"b\"\nc")
                            },
                        ])
                    }
                });
                Ok(QueryOutput::records(
                    vec!["id".into(), "name".into(), "note".into()],
                    rows,
                ))
            }
            _ => Ok(QueryOutput::body(Arc::clone(&job.query), 1)),
        }
    }
}

use futures::StreamExt as _;
