//! [`AsyncQueryServiceBuilder`]: the parts and settings of a service.

use std::sync::Arc;

use super::AsyncQueryService;
use crate::config::Config;
use crate::dao::{AsyncApiDao, MemoryDao};
use crate::error::{Error, Result};
use crate::executor::QueryExecutor;
use crate::format::{ExportEncoding, Formats};
use crate::policy::SubmitPolicy;
use crate::runtime::{Runtime, StopOnDrop};
use crate::storage::{MemoryStorage, ResultStorageEngine};

/// Builds an [`AsyncQueryService`]; only the executor is required.
#[must_use]
pub struct AsyncQueryServiceBuilder {
    config: Config,
    dao: Option<Arc<dyn AsyncApiDao>>,
    storage: Option<Arc<dyn ResultStorageEngine>>,
    executor: Option<Arc<dyn QueryExecutor>>,
    policy: Option<Arc<dyn SubmitPolicy>>,
    formats: Formats,
    clock_skew: chrono::TimeDelta,
}

impl AsyncQueryServiceBuilder {
    /// Settings (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Where job records live (default: a new [`MemoryDao`]).
    pub fn dao(mut self, dao: Arc<dyn AsyncApiDao>) -> Self {
        self.dao = Some(dao);
        self
    }

    /// Where export results live (default: a new [`MemoryStorage`]).
    pub fn storage(mut self, storage: Arc<dyn ResultStorageEngine>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The host's query executor (required).
    pub fn executor(mut self, executor: Arc<dyn QueryExecutor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Adds an export format, or replaces the one of its name (see
    /// [`format`](crate::format) for an example). Submits may then name it
    /// in [`SubmitRequest::export`](crate::SubmitRequest::export) and HTTP `resultType`; without it they
    /// are refused with [`Error::InvalidRequest`] (HTTP 400). Every
    /// instance that runs exports needs the same formats.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the format's content type or extension cannot
    /// be used in a download (see [`Formats::register`]).
    pub fn format(mut self, encoding: Arc<dyn ExportEncoding>) -> Result<Self> {
        self.formats.register(encoding)?;
        Ok(self)
    }

    /// The host's rules for new jobs (default: none); see [`SubmitPolicy`].
    pub fn policy(mut self, policy: Arc<dyn SubmitPolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Test hook: makes this instance read its machine's clock `skew` off
    /// (positive: ahead), as a host whose clock is wrong would. With a job
    /// store that has a clock ([`AsyncApiDao::now`], PostgreSQL) the
    /// service sets its clock by the store's and the skew has no effect on
    /// the times it writes; otherwise every time it writes is off by
    /// `skew`.
    #[cfg(feature = "test-util")]
    pub fn clock_skew(mut self, skew: chrono::TimeDelta) -> Self {
        self.clock_skew = skew;
        self
    }

    /// Starts the service's background tasks on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if no executor was given, a setting is out of range,
    /// or there is no Tokio runtime.
    pub fn build(self) -> Result<AsyncQueryService> {
        self.config.validate()?;
        let executor = self.executor.ok_or_else(|| Error::Config {
            reason: "no executor: call .executor(Arc::new(YourExecutor)) before build()".into(),
        })?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::Config {
            reason: "build() must be called inside a Tokio runtime".into(),
        })?;
        let inner = Runtime::new(
            self.config,
            self.dao.unwrap_or_else(|| Arc::new(MemoryDao::new())),
            self.storage
                .unwrap_or_else(|| Arc::new(MemoryStorage::new())),
            executor,
            self.formats,
            handle,
            self.clock_skew,
        );
        inner.start();
        let guard = StopOnDrop(Arc::clone(&inner));
        Ok(AsyncQueryService {
            inner,
            policy: self.policy,
            _stop_on_drop: Arc::new(guard),
        })
    }
}

impl AsyncQueryService {
    /// A builder with the default configuration and in-memory back-ends.
    pub fn builder() -> AsyncQueryServiceBuilder {
        AsyncQueryServiceBuilder {
            config: Config::default(),
            dao: None,
            storage: None,
            executor: None,
            policy: None,
            formats: Formats::default(),
            clock_skew: chrono::TimeDelta::zero(),
        }
    }
}
