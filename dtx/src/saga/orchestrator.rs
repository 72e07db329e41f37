//! The [`SagaOrchestrator`]: starts sagas, delivers external events to them, and reports on
//! them. Workers ([`super::SagaWorker`]) run what it starts.

use super::definition::{Saga, SagaDefinition, SagaRegistration};
use super::runtime::{ErasedSaga, Runner};
use super::store::{Clock, Delivery, SagaEvent, SagaRecord, SagaStatus, SagaStore, SystemClock};
use super::transition::to_chrono;
use crate::{Backoff, DtxConfig, Jitter, SharedEventStore};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
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
    /// Two sagas share a name and a version.
    #[error(
        "saga `{name}` version {version} is registered twice: give the newer definition the next \
         version (`#[saga(version = ..)]`, `SagaBuilder::version`)"
    )]
    DuplicateSaga {
        /// The name.
        name: &'static str,
        /// The version.
        version: u32,
    },
    /// A saga is started on a version the orchestrator does not have.
    #[error(
        "saga `{name}` version {version} is not registered (registered versions: {registered:?})"
    )]
    UnknownVersion {
        /// The saga's name.
        name: String,
        /// The version asked for.
        version: u32,
        /// The versions registered under the name.
        registered: Vec<u32>,
    },
    /// A saga is started on a version older than the newest registered one: new sagas start on
    /// the newest version, older ones are registered only so that the sagas started on them
    /// finish.
    #[error(
        "saga `{name}` version {version} is superseded by version {latest}: new sagas start on \
         the newest registered version; start it with that version's data"
    )]
    Superseded {
        /// The saga's name.
        name: &'static str,
        /// The version asked for.
        version: u32,
        /// The newest registered version.
        latest: u32,
    },
    /// A worker met a saga started on a version newer than any it has (a worker of an older
    /// deploy): it leaves the saga to the workers that have that version.
    #[error(
        "saga `{name}` {id} runs on version {version}, newer than this worker's ({registered:?}); \
         a worker with version {version} registered runs it"
    )]
    NewerVersion {
        /// The saga's id.
        id: Uuid,
        /// Its name.
        name: String,
        /// The version it runs on.
        version: u32,
        /// The versions this worker has.
        registered: Vec<u32>,
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
    /// An operator's cancellation of a saga that is neither running nor waiting.
    #[error("saga {id} is {status}: only a running or waiting saga can be cancelled")]
    NotCancellable {
        /// The id.
        id: Uuid,
        /// Its status.
        status: SagaStatus,
    },
    /// An operator's cancellation of a saga a worker holds (a step is running).
    #[error(
        "saga {id} is held by worker `{owner}` until {until} (a step is running); cancel it again once the step is over"
    )]
    Busy {
        /// The id.
        id: Uuid,
        /// The worker.
        owner: String,
        /// Until when it holds the saga.
        until: chrono::DateTime<chrono::Utc>,
    },
}

/// Retry and timing settings of the saga runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settings {
    /// Retries of a step or compensation when neither it nor its saga sets them.
    pub(super) max_retries: u32,
    /// How long a saga may take when its definition does not say.
    pub(super) deadline: Duration,
    /// The pauses between retries of steps and compensations.
    pub(super) backoff: Backoff,
}

/// What the clones of an orchestrator share.
pub(super) struct Inner {
    pub(super) store: Arc<dyn SagaStore>,
    pub(super) events: Option<SharedEventStore>,
    /// The registered definitions, by name and version.
    pub(super) sagas: HashMap<&'static str, BTreeMap<u32, Arc<dyn ErasedSaga>>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) settings: Settings,
    pub(super) state: crate::cqrs::context::StateMap,
}

/// Starts sagas, delivers external events to them, and reports on them.
///
/// Cheap to clone. Build it with [`SagaOrchestrator::builder`].
#[derive(Clone)]
pub struct SagaOrchestrator {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for SagaOrchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<(&str, Vec<u32>)> = self
            .inner
            .sagas
            .iter()
            .map(|(name, versions)| (*name, versions.keys().copied().collect()))
            .collect();
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

    /// Shared state steps read with [`StepContext::state`](super::StepContext::state) (service clients), by type.
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

    /// The first and the largest pause between retries of steps and compensations: a
    /// [`Backoff`] with [`Jitter::Equal`] (default 100 ms up to 30 s).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff = Backoff::new(base, max, Jitter::Equal);
        self
    }

    /// Registers a saga definition. Several versions of one name may be registered: new sagas
    /// start on the newest, and each started saga runs on the version it started on.
    #[must_use]
    pub fn saga<D>(mut self, definition: SagaDefinition<D>) -> Self
    where
        D: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.sagas.push(Arc::new(Runner(definition)));
        self
    }

    /// Registers every saga linked into this binary by `#[saga]`, every version.
    #[must_use]
    pub fn registry(mut self) -> Self {
        let mut all: Vec<&SagaRegistration> =
            inventory::iter::<SagaRegistration>.into_iter().collect();
        all.sort_by_key(|r| (r.name, r.version));
        self.sagas.extend(all.into_iter().map(|r| (r.runner)()));
        self
    }

    /// Checks the names and versions ([`SagaError::DuplicateSaga`] for a name and version
    /// registered twice) and builds the orchestrator.
    pub fn build(self) -> Result<SagaOrchestrator, SagaError> {
        let mut sagas: HashMap<&'static str, BTreeMap<u32, Arc<dyn ErasedSaga>>> = HashMap::new();
        for saga in self.sagas {
            let (name, version) = (saga.name(), saga.version());
            if sagas
                .entry(name)
                .or_default()
                .insert(version, saga)
                .is_some()
            {
                return Err(SagaError::DuplicateSaga { name, version });
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
                backoff: Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(30),
                    Jitter::Equal,
                ),
            },
            state: crate::cqrs::context::StateMap::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.inner.store
    }

    /// A new saga's record, not stored yet (for [`SagaStore::insert_in`]); to start a saga
    /// with the caller's other writes, [`SagaOrchestrator::start_in`] does both.
    ///
    /// New sagas start on the newest registered version of their name, which must be `S`'s
    /// ([`SagaError::Superseded`] otherwise).
    pub fn prepare<S: Saga>(
        &self,
        data: &S,
        correlation_id: Option<Uuid>,
    ) -> Result<SagaRecord, SagaError> {
        self.prepare_named(S::NAME, S::VERSION, data, correlation_id)
    }

    /// [`Self::prepare`] for version `version` of the saga registered as `name` (see
    /// `SagaHandle`).
    pub(crate) fn prepare_named<D: serde::Serialize>(
        &self,
        name: &'static str,
        version: u32,
        data: &D,
        correlation_id: Option<Uuid>,
    ) -> Result<SagaRecord, SagaError> {
        let saga = self.saga(name)?;
        if saga.version() != version {
            return Err(match self.inner.sagas.get(name) {
                Some(versions) if versions.contains_key(&version) => SagaError::Superseded {
                    name,
                    version,
                    latest: saga.version(),
                },
                _ => SagaError::UnknownVersion {
                    name: name.to_owned(),
                    version,
                    registered: self.versions(name),
                },
            });
        }
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
        record.definition_version = saga.version();
        record.definition_fingerprint = Some(saga.fingerprint());
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

    /// The versions registered under `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        self.inner
            .sagas
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// An operator's cancellation of a running or waiting saga: it compensates its completed
    /// steps in reverse order (run by the workers, as after a failed step), and its record
    /// keeps the decision ([`SagaRecord::cancellation`], and its last error). A saga a worker
    /// holds at the moment is refused with [`SagaError::Busy`]: cancel again after its step.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dtx::saga::{Cancellation, MemorySagaStore, SagaBuilder, SagaOrchestrator, SagaStatus};
    /// use std::sync::Arc;
    ///
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Order;
    /// let saga = SagaBuilder::<Order>::new("Order")
    ///     .add_step("reserve", |_, _| Box::pin(async { Ok(vec![]) }))
    ///     .build()?;
    /// let handle = saga.handle();
    /// let sagas = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new())).saga(saga).build()?;
    /// let id = handle.start(&sagas, Order).await?;
    /// sagas.cancel(id, &Cancellation::new("customer called", "alice")).await?;
    /// let record = sagas.status(id).await?;
    /// assert_eq!(record.status, SagaStatus::Compensating);
    /// assert_eq!(record.cancellation().unwrap().by, "alice");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn cancel(
        &self,
        saga_id: Uuid,
        cancellation: &super::Cancellation,
    ) -> Result<(), SagaError> {
        use super::Cancel;
        match self
            .inner
            .store
            .cancel(saga_id, cancellation, self.inner.clock.now())
            .await?
        {
            Cancel::Cancelled => {
                tracing::info!(
                    saga_id = %saga_id,
                    by = %cancellation.by,
                    reason = %cancellation.reason,
                    "saga cancelled by an operator"
                );
                Ok(())
            }
            Cancel::NotFound => Err(SagaError::NotFound { id: saga_id }),
            Cancel::NotCancellable { status } => Err(SagaError::NotCancellable {
                id: saga_id,
                status,
            }),
            Cancel::Busy { owner, until } => Err(SagaError::Busy {
                id: saga_id,
                owner,
                until,
            }),
        }
    }

    /// The steps of every saga registered with this orchestrator (its newest version), by
    /// name.
    pub fn shapes(&self) -> Vec<super::SagaShape> {
        let mut shapes: Vec<super::SagaShape> = self
            .inner
            .sagas
            .values()
            .filter_map(|versions| versions.values().next_back())
            .map(|saga| super::SagaShape::of(saga.as_ref()))
            .collect();
        shapes.sort_by_key(|s| s.name);
        shapes
    }

    /// The newest registered version of the saga of this name.
    pub(super) fn saga(&self, name: &str) -> Result<&Arc<dyn ErasedSaga>, SagaError> {
        self.inner
            .sagas
            .get(name)
            .and_then(|versions| versions.values().next_back())
            .ok_or_else(|| SagaError::UnknownSaga {
                name: name.to_owned(),
            })
    }

    /// The definition a claimed saga runs under: the registered one with the version and
    /// fingerprint it started on. A saga whose version is gone (older than the newest
    /// registered) or whose steps changed under the same version is to be parked, with the
    /// reason; one on a version newer than any registered here, or of a name not registered
    /// here, is an error (another worker runs it).
    pub(super) fn resolve(&self, saga: &SagaRecord) -> Result<Resolved, SagaError> {
        let versions =
            self.inner
                .sagas
                .get(saga.name.as_str())
                .ok_or_else(|| SagaError::UnknownSaga {
                    name: saga.name.clone(),
                })?;
        let stored = saga.definition_version;
        let fingerprint = saga.definition_fingerprint.as_deref().unwrap_or("none");
        let registered = || {
            versions
                .iter()
                .map(|(v, def)| format!("{v} (fingerprint {})", def.fingerprint()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let parked = |why: String| {
            format!(
                "saga `{}` {} started on version {stored} (fingerprint {fingerprint}); {why}. \
                 Registered versions: {}. It was parked without running a step of another \
                 version: register version {stored} with its original steps again, then \
                 `retry` compensates it under that version",
                saga.name,
                saga.id,
                registered()
            )
        };
        let Some(definition) = versions.get(&stored) else {
            let newest = versions.keys().next_back().copied().unwrap_or_default();
            if stored > newest {
                return Err(SagaError::NewerVersion {
                    id: saga.id,
                    name: saga.name.clone(),
                    version: stored,
                    registered: versions.keys().copied().collect(),
                });
            }
            return Ok(Resolved::Park(parked(format!(
                "version {stored} is no longer registered"
            ))));
        };
        let current = definition.fingerprint();
        if saga
            .definition_fingerprint
            .as_deref()
            .is_some_and(|f| f != current)
        {
            return Ok(Resolved::Park(parked(format!(
                "the steps of version {stored} changed since (its fingerprint is {current} now) \
                 without a new version"
            ))));
        }
        // Sagas stored before fingerprints were: their completed steps must be the first steps
        // of the definition, by name.
        let names_match = saga.completed.len() <= definition.steps()
            && saga
                .completed
                .iter()
                .enumerate()
                .all(|(i, c)| definition.step_name(i) == c.step);
        if !names_match {
            let done: Vec<&str> = saga.completed.iter().map(|c| c.step.as_str()).collect();
            let steps: Vec<&str> = (0..definition.steps())
                .map(|i| definition.step_name(i))
                .collect();
            return Ok(Resolved::Park(parked(format!(
                "its completed steps {done:?} are not the first steps of version {stored} \
                 ({steps:?})"
            ))));
        }
        Ok(Resolved::Run(Arc::clone(definition)))
    }
}

/// The definition a claimed saga runs under, or why it must not run.
pub(super) enum Resolved {
    /// Run it under this definition.
    Run(Arc<dyn ErasedSaga>),
    /// Park it as failed, for this reason.
    Park(String),
}
