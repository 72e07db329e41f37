//! Durable saga state: [`SagaRecord`] and the [`SagaStore`] backends keep it in.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps are running (or due).
    Running,
    /// A step is waiting for an external event.
    Waiting,
    /// Completed steps are being undone.
    Compensating,
    /// Every step ran.
    Completed,
    /// Every completed step was undone.
    Compensated,
    /// A compensation kept failing; an operator must look (see `SagaOrchestrator::retry`).
    Failed,
}

impl SagaStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "compensating" => Self::Compensating,
            "completed" => Self::Completed,
            "compensated" => Self::Compensated,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Whether the saga will not move on its own any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }

    /// Whether a worker may claim it when due.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Waiting | Self::Compensating)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A completed step, with what it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedStep {
    /// The step's name.
    pub step: String,
    /// When its action completed.
    pub completed_at: DateTime<Utc>,
    /// Ids of the events it recorded in the saga's stream.
    pub events: Vec<Uuid>,
    /// Whether its compensation ran (or it had none), during compensation.
    #[serde(default)]
    pub compensated: bool,
}

/// An external event delivered to a waiting saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// The event's type, matched against what the saga awaits.
    pub event_type: String,
    /// Its payload, readable by later steps through `StepContext::event`.
    pub payload: serde_json::Value,
}

impl SagaEvent {
    /// An event from any serialisable payload.
    pub fn new(
        event_type: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_type: event_type.into(),
            payload: serde_json::to_value(payload)?,
        })
    }
}

/// One saga's persisted state.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    /// The saga's id.
    pub id: Uuid,
    /// Its registered name.
    pub name: String,
    /// The version of the definition it started on, and runs under to its end.
    pub definition_version: u32,
    /// The [fingerprint](super::SagaDefinition::fingerprint) of that definition: workers run the
    /// saga only under a definition with the same version and fingerprint. `None` for sagas
    /// stored before fingerprints were (the worker then checks the completed steps' names
    /// against the definition and records its fingerprint).
    pub definition_fingerprint: Option<String>,
    /// Its status.
    pub status: SagaStatus,
    /// Its data, as JSON.
    pub data: serde_json::Value,
    /// The index of the next step to run (forward), in its definition's version.
    pub step: u32,
    /// The completed steps, by name, in order (compensation finds them by name).
    pub completed: Vec<CompletedStep>,
    /// External events received, by type.
    pub received: HashMap<String, serde_json::Value>,
    /// Attempts of the current step or compensation so far.
    pub attempts: u32,
    /// When a worker should run it next.
    pub next_run_at: DateTime<Utc>,
    /// When the saga must be over, or compensate.
    pub deadline: Option<DateTime<Utc>>,
    /// The event type a waiting saga awaits.
    pub awaiting: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// The correlation id of the operation that started it.
    pub correlation_id: Option<Uuid>,
    /// Optimistic-concurrency version, bumped by every save.
    pub version: u64,
    /// The worker holding it, if any.
    pub lease_owner: Option<String>,
    /// Until when that worker holds it.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl SagaRecord {
    /// A new saga, due now, on version 1 of its definition and without a fingerprint (the
    /// orchestrator's `prepare` sets both from the definition it starts the saga on).
    pub fn new(
        name: &str,
        data: serde_json::Value,
        now: DateTime<Utc>,
        deadline: Option<DateTime<Utc>>,
        correlation_id: Option<Uuid>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            definition_version: 1,
            definition_fingerprint: None,
            status: SagaStatus::Running,
            data,
            step: 0,
            completed: Vec::new(),
            received: HashMap::new(),
            attempts: 0,
            next_run_at: now,
            deadline,
            awaiting: None,
            last_error: None,
            correlation_id,
            version: 1,
            lease_owner: None,
            lease_expires_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

impl SagaRecord {
    /// [`crate::Error::Unstorable`] unless every backend can store this record: no NUL
    /// character in its texts or in the strings of its JSON. Backends check it before every
    /// insert and save.
    pub fn check_storable(&self) -> crate::Result<()> {
        use crate::store::storable::{check_text, check_value};
        let what = |part: &str| format!("the {part} of saga {} (`{}`)", self.id, self.name);
        check_text(None, &self.name, || what("name"))?;
        check_value(None, &self.data, || what("data"))?;
        for step in &self.completed {
            check_text(None, &step.step, || what("completed steps"))?;
        }
        for (event_type, payload) in &self.received {
            check_text(None, event_type, || what("received events"))?;
            check_value(None, payload, || what("received events"))?;
        }
        for text in [
            &self.awaiting,
            &self.last_error,
            &self.lease_owner,
            &self.definition_fingerprint,
        ]
        .into_iter()
        .flatten()
        {
            check_text(None, text, || what("status texts"))?;
        }
        Ok(())
    }
}

impl SagaEvent {
    /// [`crate::Error::Unstorable`] unless every backend can store this event (checked before
    /// it is delivered to `saga`).
    pub fn check_storable(&self, saga: Uuid) -> crate::Result<()> {
        use crate::store::storable::{check_text, check_value};
        let what = || format!("the event `{}` delivered to saga {saga}", self.event_type);
        check_text(None, &self.event_type, what)?;
        check_value(None, &self.payload, what)
    }
}

/// What delivering an event to a saga found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered; the saga is due again.
    Delivered,
    /// No saga with that id.
    NotFound,
    /// The saga is not waiting for this event (it waits for `awaiting`, or nothing).
    NotAwaited {
        /// Its status.
        status: SagaStatus,
        /// What it waits for, if anything.
        awaiting: Option<String>,
    },
}

/// An unfinished saga of a correlation, as [`SagaStore::correlated`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlated {
    /// Its id.
    pub id: Uuid,
    /// Its saga's name.
    pub name: String,
    /// Its status.
    pub status: SagaStatus,
    /// The next step to run forward.
    pub step: u32,
    /// The event it awaits, if any.
    pub awaiting: Option<String>,
}

/// One transition to save, as [`SagaStore::save_many`] takes it: the arguments of
/// [`SagaStore::save`].
#[derive(Debug, Clone, Copy)]
pub struct SagaSave<'a> {
    /// The saga as it is to be stored, its `version` one more than the stored one.
    pub record: &'a SagaRecord,
    /// The worker that must still hold the saga's lease.
    pub owner: &'a str,
    /// The renewed lease's end (`None` releases it).
    pub lease_until: Option<DateTime<Utc>>,
}

/// Where sagas live: in memory ([`super::MemorySagaStore`]) or in PostgreSQL
/// (`dtx_postgres::PgSagaStore`). Both pass the same contract suite.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Stores a new saga; a saga with this id already stored is kept as it is (starting a saga
    /// under an id derived from what started it, twice, starts it once).
    async fn insert(&self, record: &SagaRecord) -> crate::Result<()>;

    /// [`SagaStore::insert`] as part of a unit of work: the saga starts if and only if the unit
    /// of work commits. The default refuses ([`crate::Error::UnitOfWork`]).
    async fn insert_in(
        &self,
        uow: &mut dyn crate::uow::UnitOfWork,
        record: &SagaRecord,
    ) -> crate::Result<()> {
        let _ = record;
        Err(crate::uow::refused::<Self>(uow))
    }

    /// Claims up to `limit` due sagas (active, `next_run_at <= now`, no live lease) for
    /// `owner` until `now + lease`, skipping sagas other workers hold.
    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> crate::Result<Vec<SagaRecord>>;

    /// Saves a transition if `owner` still holds the saga at `record.version - 1`; renews the
    /// lease to `lease_until` (`None` releases it). `false` means the lease was lost: another
    /// worker owns the saga now, and this one must stop working on it.
    async fn save(
        &self,
        record: &SagaRecord,
        owner: &str,
        lease_until: Option<DateTime<Utc>>,
    ) -> crate::Result<bool>;

    /// Saves several transitions of different sagas, each exactly as [`SagaStore::save`] would
    /// (the same lease and version check, the same outcome), in as few round trips as the
    /// backend can: one result per save, in the order given. One save's outcome never depends
    /// on another's (a lost lease or an unstorable record fails that save alone); a storage
    /// failure fails every save it took with it, none of them written.
    ///
    /// The default saves them one by one; the PostgreSQL store writes them in one statement.
    async fn save_many(&self, saves: &[SagaSave<'_>]) -> Vec<crate::Result<bool>> {
        let mut outcomes = Vec::with_capacity(saves.len());
        for save in saves {
            outcomes.push(self.save(save.record, save.owner, save.lease_until).await);
        }
        outcomes
    }

    /// Loads a saga.
    async fn get(&self, id: Uuid) -> crate::Result<Option<SagaRecord>>;

    /// Delivers an external event to a saga waiting for it, atomically.
    async fn deliver(
        &self,
        id: Uuid,
        event: &SagaEvent,
        now: DateTime<Utc>,
    ) -> crate::Result<Delivery>;

    /// The sagas started with `correlation_id` that are not finished: id, name, status and
    /// the event each awaits.
    async fn correlated(&self, correlation_id: Uuid) -> crate::Result<Vec<Correlated>>;

    /// [`SagaStore::correlated`] as `uow` sees the sagas: with those it started and has not
    /// committed yet. The default ignores the unit of work.
    async fn correlated_in(
        &self,
        uow: &mut dyn crate::uow::UnitOfWork,
        correlation_id: Uuid,
    ) -> crate::Result<Vec<Correlated>> {
        let _ = uow;
        self.correlated(correlation_id).await
    }

    /// Sagas in a status, oldest first.
    async fn list(&self, status: SagaStatus, limit: usize) -> crate::Result<Vec<SagaRecord>>;

    /// Counts sagas by status.
    async fn counts(&self) -> crate::Result<HashMap<SagaStatus, u64>>;

    /// Puts a failed saga back to compensating, due now (an operator's retry). `false` when
    /// it is not failed.
    async fn retry_failed(&self, id: Uuid, now: DateTime<Utc>) -> crate::Result<bool>;

    /// An operator's cancellation of a running or waiting saga that no worker holds at `now`,
    /// atomically: it becomes compensating, due now, with the decision kept in its record (see
    /// [`super::cancel`]); the workers then compensate it as after a failed step. Refuses a
    /// cancellation with a NUL character ([`crate::Error::Unstorable`]).
    async fn cancel(
        &self,
        id: Uuid,
        cancellation: &super::Cancellation,
        now: DateTime<Utc>,
    ) -> crate::Result<super::Cancel>;
}

/// The time source of the saga runtime (a [`ManualClock`] in tests).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Utc::now())))
    }
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
