//! Graceful shutdown: close, wait for running jobs with the grace, end the
//! rest, then stop and await every task.

use std::time::Duration;

use tokio::time::Instant;

use super::Runtime;
use super::ending::Ending;
use crate::error::{Error, Result};
use crate::request::ShutdownReport;

impl Runtime {
    /// Stops accepting work, lets running jobs finish within `grace`, ends
    /// the rest `TIMEDOUT`, and stops every task. Jobs still `QUEUED` stay
    /// queued in the DAO for another instance or the next start.
    pub(crate) async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport> {
        self.tasks.close();
        self.jobs.drain(Instant::now() + grace).await;
        // What still runs is abandoned first (its executor stops, nothing
        // more is written by it), then ended here.
        let running = self.jobs.running();
        self.stop_now();
        let marked = async {
            let mut stopped = Vec::new();
            let now = self.clock.now();
            for id in running {
                let Some(job) = self.dao.get(id).await? else {
                    continue;
                };
                if self
                    .end_orphan(&job, &Ending::Shutdown, now)
                    .await?
                    .is_some()
                {
                    stopped.push(id);
                }
            }
            Ok::<_, Error>(stopped)
        }
        .await;
        self.tasks.wait().await;
        Ok(ShutdownReport { stopped: marked? })
    }
}
