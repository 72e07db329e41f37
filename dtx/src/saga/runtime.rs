//! Running sagas: the [`SagaOrchestrator`] (start, events, status) and [`SagaWorker`]s.

use super::definition::{Saga, SagaDefinition, SagaRegistration, StepContext, StepError, StepFn};
use super::store::{
    Clock, CompletedStep, Delivery, SagaEvent, SagaRecord, SagaStatus, SagaStore, SystemClock,
};
use crate::{DtxConfig, EventStore, ExpectedVersion, NewEvent, SharedEventStore, StreamId};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// Why a saga operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// No saga has this id.
    #[error("no saga {id}")]
    NotFound {
        /// The id.
        id: Uuid,
    },
    /// The saga is over.
    #[error("saga {id} is {status}; it takes no more events")]
    Finished {
        /// The id.
        id: Uuid,
        /// How it ended.
        status: SagaStatus,
    },
    /// The saga is not waiting for this event.
    #[error("saga {id} is {status} and awaits {awaiting:?}, not `{event}`")]
    NotWaiting {
        /// The id.
        id: Uuid,
        /// Its status.
        status: SagaStatus,
        /// What it awaits, if anything.
        awaiting: Option<String>,
        /// The event delivered.
        event: String,
    },
    /// No saga of this name is registered with the orchestrator.
    #[error("no saga named `{name}` is registered (is the crate that declares it linked?)")]
    UnknownSaga {
        /// The name.
        name: String,
    },
    /// Two sagas share a name.
    #[error("two sagas are named `{name}`")]
    DuplicateSaga {
        /// The name.
        name: &'static str,
    },
    /// The saga's data could not be serialised.
    #[error("cannot encode the data of saga `{name}`: {source}")]
    Encode {
        /// The saga's name.
        name: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

/// A saga definition with its data type erased: what workers run by name.
#[doc(hidden)]
#[async_trait]
pub trait ErasedSaga: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn steps(&self) -> usize;
    fn step_name(&self, step: usize) -> &'static str;
    fn await_event(&self, step: usize) -> Option<(&'static str, Duration)>;
    fn has_compensation(&self, step: usize) -> bool;
    fn max_retries(&self, step: usize) -> Option<u32>;
    fn saga_max_retries(&self) -> Option<u32>;
    fn step_timeout(&self) -> Option<Duration>;
    fn deadline(&self) -> Option<Duration>;
    async fn run(
        &self,
        step: usize,
        compensation: bool,
        data: &serde_json::Value,
        ctx: &StepContext,
    ) -> Result<(serde_json::Value, Vec<NewEvent>), StepError>;
}

/// The runner of one typed definition.
pub(crate) struct Runner<D>(pub(crate) SagaDefinition<D>);

#[async_trait]
impl<D> ErasedSaga for Runner<D>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.0.name
    }
    fn steps(&self) -> usize {
        self.0.steps.len()
    }
    fn step_name(&self, step: usize) -> &'static str {
        self.0.steps[step].name
    }
    fn await_event(&self, step: usize) -> Option<(&'static str, Duration)> {
        self.0.steps[step].await_event
    }
    fn has_compensation(&self, step: usize) -> bool {
        self.0.steps[step].compensation.is_some()
    }
    fn max_retries(&self, step: usize) -> Option<u32> {
        self.0.steps[step].max_retries
    }
    fn saga_max_retries(&self) -> Option<u32> {
        self.0.max_retries
    }
    fn step_timeout(&self) -> Option<Duration> {
        self.0.step_timeout
    }
    fn deadline(&self) -> Option<Duration> {
        self.0.deadline
    }

    async fn run(
        &self,
        step: usize,
        compensation: bool,
        data: &serde_json::Value,
        ctx: &StepContext,
    ) -> Result<(serde_json::Value, Vec<NewEvent>), StepError> {
        let def = &self.0.steps[step];
        let f: &StepFn<D> = if compensation {
            match &def.compensation {
                Some(c) => c,
                None => return Ok((data.clone(), Vec::new())),
            }
        } else {
            &def.action
        };
        let mut value: D = serde_json::from_value(data.clone()).map_err(|e| {
            StepError::permanent(format!(
                "the data of saga `{}` does not decode: {e}",
                self.0.name
            ))
        })?;
        let events = f(&mut value, ctx).await?;
        let data = serde_json::to_value(&value).map_err(|e| {
            StepError::permanent(format!(
                "the data of saga `{}` does not encode: {e}",
                self.0.name
            ))
        })?;
        Ok((data, events))
    }
}

/// Retry and timing settings of the saga runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    max_retries: u32,
    deadline: Duration,
    base_backoff: Duration,
    max_backoff: Duration,
}

struct Inner {
    store: Arc<dyn SagaStore>,
    events: Option<SharedEventStore>,
    sagas: HashMap<&'static str, Arc<dyn ErasedSaga>>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    state: crate::cqrs::context::StateMap,
}

/// Starts sagas, delivers external events to them, and reports on them.
///
/// Cheap to clone. Build it with [`SagaOrchestrator::builder`].
#[derive(Clone)]
pub struct SagaOrchestrator {
    inner: Arc<Inner>,
}

impl fmt::Debug for SagaOrchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.inner.sagas.keys().copied().collect();
        names.sort_unstable();
        f.debug_struct("SagaOrchestrator")
            .field("sagas", &names)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SagaOrchestrator`].
pub struct SagaOrchestratorBuilder {
    store: Arc<dyn SagaStore>,
    events: Option<SharedEventStore>,
    sagas: Vec<Arc<dyn ErasedSaga>>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    state: crate::cqrs::context::StateMap,
}

impl fmt::Debug for SagaOrchestratorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaOrchestratorBuilder")
            .field("sagas", &self.sagas.len())
            .finish_non_exhaustive()
    }
}

impl SagaOrchestratorBuilder {
    /// The event store steps' events are recorded in (each saga has its stream
    /// `{name}-{id}`); without one, events returned by steps are refused.
    #[must_use]
    pub fn events(mut self, events: SharedEventStore) -> Self {
        self.events = Some(events);
        self
    }

    /// Shared state steps read with [`StepContext::state`] (service clients), by type.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.state.insert(state);
        self
    }

    /// The clock (a [`super::ManualClock`] in tests).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// `SAGA_MAX_RETRIES` and `SAGA_TIMEOUT_MINUTES` from the configuration.
    #[must_use]
    pub fn config(mut self, config: &DtxConfig) -> Self {
        self.settings.max_retries = config.saga_max_retries;
        self.settings.deadline =
            Duration::from_secs(config.saga_timeout_minutes.saturating_mul(60));
        self
    }

    /// The first and the largest pause between retries (exponential, full jitter).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.base_backoff = base;
        self.settings.max_backoff = max;
        self
    }

    /// Registers a saga definition.
    #[must_use]
    pub fn saga<D>(mut self, definition: SagaDefinition<D>) -> Self
    where
        D: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.sagas.push(Arc::new(Runner(definition)));
        self
    }

    /// Registers every saga linked into this binary by `#[saga]`.
    #[must_use]
    pub fn registry(mut self) -> Self {
        let mut all: Vec<&SagaRegistration> =
            inventory::iter::<SagaRegistration>.into_iter().collect();
        all.sort_by_key(|r| r.name);
        self.sagas.extend(all.into_iter().map(|r| (r.runner)()));
        self
    }

    /// Checks the names and builds the orchestrator.
    pub fn build(self) -> Result<SagaOrchestrator, SagaError> {
        let mut sagas = HashMap::new();
        for saga in self.sagas {
            let name = saga.name();
            if sagas.insert(name, saga).is_some() {
                return Err(SagaError::DuplicateSaga { name });
            }
        }
        Ok(SagaOrchestrator {
            inner: Arc::new(Inner {
                store: self.store,
                events: self.events,
                sagas,
                clock: self.clock,
                settings: self.settings,
                state: self.state,
            }),
        })
    }
}

impl SagaOrchestrator {
    /// A builder over a saga store.
    pub fn builder(store: Arc<dyn SagaStore>) -> SagaOrchestratorBuilder {
        let defaults = DtxConfig::default();
        SagaOrchestratorBuilder {
            store,
            events: None,
            sagas: Vec::new(),
            clock: Arc::new(SystemClock),
            settings: Settings {
                max_retries: defaults.saga_max_retries,
                deadline: Duration::from_secs(defaults.saga_timeout_minutes * 60),
                base_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(30),
            },
            state: crate::cqrs::context::StateMap::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    /// A new saga's record, not stored yet: store it yourself inside your transaction (e.g.
    /// `PgSagaStore::insert_in`) so that the saga starts if and only if your write commits.
    pub fn prepare<S: Saga>(
        &self,
        data: &S,
        correlation_id: Option<Uuid>,
    ) -> Result<SagaRecord, SagaError> {
        self.prepare_named(S::NAME, data, correlation_id)
    }

    /// [`Self::prepare`] for the saga registered as `name` (see `SagaHandle`).
    pub(crate) fn prepare_named<D: Serialize>(
        &self,
        name: &'static str,
        data: &D,
        correlation_id: Option<Uuid>,
    ) -> Result<SagaRecord, SagaError> {
        let saga = self.saga(name)?;
        let now = self.inner.clock.now();
        let data =
            serde_json::to_value(data).map_err(|source| SagaError::Encode { name, source })?;
        let deadline = saga.deadline().unwrap_or(self.inner.settings.deadline);
        let mut record = SagaRecord::new(
            name,
            data,
            now,
            Some(now + to_chrono(deadline)),
            correlation_id,
        );
        // Every step continues the trace of the operation that started the saga.
        if let Some(traceparent) = crate::telemetry::current_traceparent() {
            record.received.insert(
                crate::telemetry::SAGA_TRACEPARENT.to_owned(),
                serde_json::Value::String(traceparent),
            );
        }
        Ok(record)
    }

    /// Starts a saga: stores it, due now, and returns its id.
    pub async fn start<S: Saga>(&self, data: S) -> Result<Uuid, SagaError> {
        self.start_correlated(data, None).await
    }

    /// Starts a saga within a business operation's correlation.
    pub async fn start_correlated<S: Saga>(
        &self,
        data: S,
        correlation_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let record = self.prepare(&data, correlation_id)?;
        self.inner.store.insert(&record).await?;
        crate::telemetry::record_saga_transition(S::NAME, SagaStatus::Running.as_str());
        tracing::info!(saga = S::NAME, saga_id = %record.id, "saga started");
        Ok(record.id)
    }

    /// Delivers an external event to a saga waiting for it; the saga is due again.
    pub async fn handle_event(&self, saga_id: Uuid, event: SagaEvent) -> Result<(), SagaError> {
        match self
            .inner
            .store
            .deliver(saga_id, &event, self.inner.clock.now())
            .await?
        {
            Delivery::Delivered => Ok(()),
            Delivery::NotFound => Err(SagaError::NotFound { id: saga_id }),
            Delivery::NotAwaited { status, .. } if status.is_finished() => {
                Err(SagaError::Finished {
                    id: saga_id,
                    status,
                })
            }
            Delivery::NotAwaited { status, awaiting } => Err(SagaError::NotWaiting {
                id: saga_id,
                status,
                awaiting,
                event: event.event_type,
            }),
        }
    }

    /// A saga's current state.
    pub async fn status(&self, saga_id: Uuid) -> Result<SagaRecord, SagaError> {
        self.inner
            .store
            .get(saga_id)
            .await?
            .ok_or(SagaError::NotFound { id: saga_id })
    }

    /// Sagas in a status, oldest first.
    pub async fn list(
        &self,
        status: SagaStatus,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, SagaError> {
        Ok(self.inner.store.list(status, limit).await?)
    }

    /// How many sagas are in each status.
    pub async fn counts(&self) -> Result<HashMap<SagaStatus, u64>, SagaError> {
        Ok(self.inner.store.counts().await?)
    }

    /// An operator's retry of a failed saga: its compensation runs again.
    pub async fn retry(&self, saga_id: Uuid) -> Result<(), SagaError> {
        if self
            .inner
            .store
            .retry_failed(saga_id, self.inner.clock.now())
            .await?
        {
            return Ok(());
        }
        let saga = self.status(saga_id).await?;
        Err(SagaError::NotWaiting {
            id: saga_id,
            status: saga.status,
            awaiting: None,
            event: "retry (only failed sagas are retried)".to_owned(),
        })
    }

    /// A worker that runs this orchestrator's sagas.
    pub fn worker(&self, options: WorkerOptions) -> SagaWorker {
        SagaWorker {
            orchestrator: self.clone(),
            options,
        }
    }

    fn saga(&self, name: &str) -> Result<&Arc<dyn ErasedSaga>, SagaError> {
        self.inner
            .sagas
            .get(name)
            .ok_or_else(|| SagaError::UnknownSaga {
                name: name.to_owned(),
            })
    }
}

/// How a [`SagaWorker`] claims and runs sagas.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name in leases (unique per worker; default: a fresh UUID).
    pub id: String,
    /// How long a claim lasts without renewal; a dead worker's sagas are resumed after it.
    pub lease: Duration,
    /// How many due sagas one claim takes.
    pub batch: usize,
    /// How long an idle worker sleeps before it looks again.
    pub poll_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", Uuid::new_v4()),
            lease: Duration::from_secs(30),
            batch: 16,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Claims due sagas (`FOR UPDATE SKIP LOCKED` and a lease on PostgreSQL) and runs them. Run
/// any number of workers, in any number of processes.
#[derive(Debug, Clone)]
pub struct SagaWorker {
    orchestrator: SagaOrchestrator,
    options: WorkerOptions,
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl SagaWorker {
    /// Claims one batch of due sagas and runs each as far as it goes now; returns how many it
    /// claimed.
    pub async fn run_once(&self) -> Result<usize, SagaError> {
        let inner = &self.orchestrator.inner;
        let claimed = inner
            .store
            .claim(
                &self.options.id,
                inner.clock.now(),
                self.options.lease,
                self.options.batch,
            )
            .await?;
        let count = claimed.len();
        let mut running = tokio::task::JoinSet::new();
        for record in claimed {
            let worker = self.clone();
            running.spawn(async move { worker.advance(record).await });
        }
        while let Some(done) = running.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "saga transition failed; it is retried after its lease");
                }
                Err(panic) => {
                    tracing::error!(%panic, "a saga step panicked; it is retried after its lease");
                }
            }
        }
        Ok(count)
    }

    /// Runs until `shutdown` completes: claims due sagas, sleeps `poll_interval` when idle.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SagaError> {
        tokio::pin!(shutdown);
        loop {
            // Sagas in flight always finish their current transition: shutdown is honoured
            // between claims, so a graceful stop never strands a leased saga.
            let stop = tokio::select! {
                biased;
                () = &mut shutdown => true,
                () = std::future::ready(()) => false,
            };
            if stop {
                return Ok(());
            }
            match self.run_once().await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(error) => tracing::warn!(%error, "claiming sagas failed"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }

    /// Runs until no saga is due (for tests and examples); returns how many claims it made.
    pub async fn run_until_idle(&self) -> Result<usize, SagaError> {
        let mut total = 0;
        loop {
            match self.run_once().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Persists a transition; `Ok(false)` when the lease was lost.
    async fn save(&self, record: &mut SagaRecord, keep: bool) -> Result<bool, SagaError> {
        let inner = &self.orchestrator.inner;
        let now = inner.clock.now();
        record.version += 1;
        record.updated_at = now;
        let lease_until = keep.then(|| now + to_chrono(self.options.lease));
        let saved = inner
            .store
            .save(record, &self.options.id, lease_until)
            .await?;
        if !saved {
            tracing::warn!(saga_id = %record.id, "lease lost; another worker has this saga now");
        }
        Ok(saved)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let settings = &self.orchestrator.inner.settings;
        crate::retry::equal_jitter(settings.base_backoff, settings.max_backoff, attempt)
    }

    fn start_compensating(record: &mut SagaRecord, reason: String) {
        tracing::info!(saga = %record.name, saga_id = %record.id, %reason, "compensating");
        record.status = SagaStatus::Compensating;
        crate::telemetry::record_saga_transition(&record.name, SagaStatus::Compensating.as_str());
        record.attempts = 0;
        record.awaiting = None;
        record.last_error = Some(reason);
    }

    /// Runs one claimed saga as far as it can go now, persisting every transition.
    #[allow(
        clippy::too_many_lines,
        reason = "one state machine, read top to bottom"
    )]
    async fn advance(&self, mut record: SagaRecord) -> Result<(), SagaError> {
        let inner = &self.orchestrator.inner;
        let saga = Arc::clone(self.orchestrator.saga(&record.name)?);
        let stream = StreamId::new(format!("{}-{}", record.name, record.id))?;
        loop {
            let now = inner.clock.now();
            match record.status {
                SagaStatus::Running => {
                    if record.deadline.is_some_and(|d| d <= now) {
                        Self::start_compensating(
                            &mut record,
                            "the saga's deadline passed".to_owned(),
                        );
                        if !self.save(&mut record, true).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    let step = record.step as usize;
                    if step >= saga.steps() {
                        record.status = SagaStatus::Completed;
                        crate::telemetry::record_saga_transition(
                            &record.name,
                            SagaStatus::Completed.as_str(),
                        );
                        record.last_error = None;
                        self.save(&mut record, false).await?;
                        tracing::info!(saga = %record.name, saga_id = %record.id, "saga completed");
                        return Ok(());
                    }
                    let attempt = record.attempts + 1;
                    match self
                        .run_step(&saga, &record, &stream, step, false, attempt)
                        .await
                    {
                        Ok((data, events)) => {
                            record.data = data;
                            record.completed.push(CompletedStep {
                                step: saga.step_name(step).to_owned(),
                                completed_at: now,
                                events,
                                compensated: false,
                            });
                            record.step += 1;
                            record.attempts = 0;
                            record.last_error = None;
                            if let Some((event, timeout)) = saga.await_event(step) {
                                record.status = SagaStatus::Waiting;
                                crate::telemetry::record_saga_transition(
                                    &record.name,
                                    SagaStatus::Waiting.as_str(),
                                );
                                record.awaiting = Some(event.to_owned());
                                record.next_run_at = now + to_chrono(timeout);
                                self.save(&mut record, false).await?;
                                return Ok(());
                            }
                            if record.step as usize >= saga.steps() {
                                // The last step: completing is part of the same transition.
                                record.status = SagaStatus::Completed;
                                crate::telemetry::record_saga_transition(
                                    &record.name,
                                    SagaStatus::Completed.as_str(),
                                );
                                self.save(&mut record, false).await?;
                                tracing::info!(saga = %record.name, saga_id = %record.id, "saga completed");
                                return Ok(());
                            }
                            if !self.save(&mut record, true).await? {
                                return Ok(());
                            }
                        }
                        Err(error) => {
                            let max = saga
                                .max_retries(step)
                                .or(saga.saga_max_retries())
                                .unwrap_or(inner.settings.max_retries);
                            if error.retryable && attempt <= max {
                                record.attempts = attempt;
                                record.next_run_at = now + to_chrono(self.backoff(attempt));
                                crate::telemetry::record_saga_step_retry(
                                    &record.name,
                                    saga.step_name(step),
                                );
                                record.last_error = Some(format!(
                                    "step `{}` attempt {attempt}: {error}",
                                    saga.step_name(step)
                                ));
                                self.save(&mut record, false).await?;
                                return Ok(());
                            }
                            Self::start_compensating(
                                &mut record,
                                format!(
                                    "step `{}` failed after {attempt} attempt{}: {error}",
                                    saga.step_name(step),
                                    if attempt == 1 { "" } else { "s" }
                                ),
                            );
                            if !self.save(&mut record, true).await? {
                                return Ok(());
                            }
                        }
                    }
                }
                SagaStatus::Waiting => {
                    // Claimed only once the wait is over: the event did not come in time.
                    let awaited = record.awaiting.clone().unwrap_or_default();
                    Self::start_compensating(
                        &mut record,
                        format!("no `{awaited}` event arrived in time"),
                    );
                    if !self.save(&mut record, true).await? {
                        return Ok(());
                    }
                }
                SagaStatus::Compensating => {
                    let Some(index) = record.completed.iter().rposition(|c| !c.compensated) else {
                        record.status = SagaStatus::Compensated;
                        crate::telemetry::record_saga_transition(
                            &record.name,
                            SagaStatus::Compensated.as_str(),
                        );
                        self.save(&mut record, false).await?;
                        tracing::info!(saga = %record.name, saga_id = %record.id, "saga compensated");
                        return Ok(());
                    };
                    // Completed steps are a prefix of the definition, in order.
                    let step = index;
                    if !saga.has_compensation(step) {
                        record.completed[index].compensated = true;
                        if !self.save(&mut record, true).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    let attempt = record.attempts + 1;
                    match self
                        .run_step(&saga, &record, &stream, step, true, attempt)
                        .await
                    {
                        Ok((data, events)) => {
                            record.data = data;
                            record.completed[index].compensated = true;
                            record.completed[index].events.extend(events);
                            record.attempts = 0;
                            if !self.save(&mut record, true).await? {
                                return Ok(());
                            }
                        }
                        Err(error) => {
                            let max = saga
                                .max_retries(step)
                                .or(saga.saga_max_retries())
                                .unwrap_or(inner.settings.max_retries);
                            record.last_error = Some(format!(
                                "compensation of `{}` attempt {attempt}: {error}",
                                saga.step_name(step)
                            ));
                            if error.retryable && attempt <= max {
                                record.attempts = attempt;
                                record.next_run_at = now + to_chrono(self.backoff(attempt));
                                crate::telemetry::record_saga_step_retry(
                                    &record.name,
                                    saga.step_name(step),
                                );
                            } else {
                                record.status = SagaStatus::Failed;
                                crate::telemetry::record_saga_transition(
                                    &record.name,
                                    SagaStatus::Failed.as_str(),
                                );
                                record.attempts = attempt;
                                tracing::error!(saga = %record.name, saga_id = %record.id, error = %error, "compensation failed; saga needs an operator");
                            }
                            self.save(&mut record, false).await?;
                            return Ok(());
                        }
                    }
                }
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => {
                    self.save(&mut record, false).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Runs a step or compensation with its timeout, and records its events in the saga's
    /// stream with ids derived from the saga, step and phase (so a re-run stores them once).
    async fn run_step(
        &self,
        saga: &Arc<dyn ErasedSaga>,
        record: &SagaRecord,
        stream: &StreamId,
        step: usize,
        compensation: bool,
        attempt: u32,
    ) -> Result<(serde_json::Value, Vec<Uuid>), StepError> {
        let inner = &self.orchestrator.inner;
        let phase = if compensation {
            "compensation"
        } else {
            "action"
        };
        let ctx = StepContext {
            saga_id: record.id,
            saga_name: saga.name(),
            step: saga.step_name(step),
            phase,
            attempt,
            received: Arc::new(record.received.clone()),
            correlation_id: record.correlation_id,
            stream: stream.clone(),
            state: inner.state.clone(),
        };
        let span = tracing::info_span!(
            "dtx.saga.step",
            saga = saga.name(),
            saga_id = %record.id,
            step = saga.step_name(step),
            phase,
            attempt,
            outcome = tracing::field::Empty,
        );
        crate::telemetry::set_parent(
            &span,
            record
                .received
                .get(crate::telemetry::SAGA_TRACEPARENT)
                .and_then(serde_json::Value::as_str),
        );
        let run = saga.run(step, compensation, &record.data, &ctx);
        let result = match saga.step_timeout() {
            Some(timeout) => match tokio::time::timeout(timeout, run)
                .instrument(span.clone())
                .await
            {
                Ok(result) => result,
                Err(_) => Err(StepError::transient(format!("timed out after {timeout:?}"))),
            },
            None => run.instrument(span.clone()).await,
        };
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        let (data, mut events) = result?;
        if events.is_empty() {
            return Ok((data, Vec::new()));
        }
        let Some(store) = &inner.events else {
            return Err(StepError::permanent(
                "this step returns events, but the orchestrator has no event store (`.events(..)`)",
            ));
        };
        let traceparent = span.in_scope(crate::telemetry::current_traceparent);
        for (n, event) in events.iter_mut().enumerate() {
            event.event_id =
                Uuid::new_v5(&record.id, format!("{}/{phase}/{n}", ctx.step).as_bytes());
            if event.metadata.traceparent.is_none() {
                event.metadata.traceparent.clone_from(&traceparent);
            }
            event.metadata.correlation_id = record.correlation_id;
            event.metadata.causation_id = Some(record.id);
        }
        let ids = events.iter().map(|e| e.event_id).collect();
        append_step_events(store.as_ref(), stream, events).await?;
        Ok((data, ids))
    }
}

async fn append_step_events(
    store: &dyn EventStore,
    stream: &StreamId,
    events: Vec<NewEvent>,
) -> Result<(), StepError> {
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .map(|_| ())
        .map_err(StepError::transient)
}

/// Registers a `#[saga]` type's definition: used by generated code.
pub(crate) fn runner<S: Saga>() -> Arc<dyn ErasedSaga> {
    Arc::new(Runner(S::definition()))
}
