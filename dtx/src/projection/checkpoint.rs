//! Checkpoints: where each projection stands on the feed, its status and its lease.

use crate::error::Result;
use crate::store::{GlobalPosition, RecordedEvent};
use crate::uow::UnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Which checkpoint: a projection's name and version, and the partition of its streams
/// (`0` of `1` when it is not partitioned).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CheckpointKey {
    /// The projection's name.
    pub name: String,
    /// The projection's version: each version has a checkpoint of its own.
    pub version: u32,
    /// The partition (`0..partitions`).
    pub partition: u32,
    /// How many partitions the projection's streams are split into.
    pub partitions: u32,
}

impl CheckpointKey {
    /// The key of an unpartitioned projection.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
            partition: 0,
            partitions: 1,
        }
    }

    /// The key of partition `partition` of `partitions`.
    #[must_use]
    pub fn partition(mut self, partition: u32, partitions: u32) -> Self {
        self.partition = partition;
        self.partitions = partitions.max(1);
        self
    }
}

impl fmt::Display for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.name, self.version)?;
        if self.partitions > 1 {
            write!(f, " [{}/{}]", self.partition, self.partitions)?;
        }
        Ok(())
    }
}

/// A checkpoint's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionStatus {
    /// Following the feed.
    Running,
    /// Stopped at an event it could not apply; see [`Checkpoint::failure`].
    Failed,
}

impl ProjectionStatus {
    /// `"running"` or `"failed"`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Failed => "failed",
        }
    }
}

/// The event a projection stopped at, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// Its position on the feed.
    pub position: GlobalPosition,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its id.
    pub event_id: Uuid,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
}

impl Failure {
    /// The failure of `event` with `error`, after `attempts` tries.
    pub fn of(event: &RecordedEvent, error: String, attempts: u32) -> Self {
        Self {
            position: event.position,
            stream_id: event.stream_id.to_string(),
            version: event.version,
            event_id: event.event_id,
            error,
            attempts,
        }
    }
}

/// Where a projection stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Which checkpoint.
    pub key: CheckpointKey,
    /// Every event up to this position is applied (or was passed over: not handled, or
    /// skipped by an operator).
    pub position: GlobalPosition,
    /// Running or failed.
    pub status: ProjectionStatus,
    /// Events applied since the checkpoint was created or reset.
    pub applied: u64,
    /// Where and why it stopped, while [`ProjectionStatus::Failed`].
    pub failure: Option<Failure>,
    /// The runner holding the lease, if any.
    pub owner: Option<Uuid>,
    /// Until when the lease holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// The last change.
    pub updated_at: DateTime<Utc>,
}

/// An operator's skip of a failed event, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkipRecord {
    /// The projection's name.
    pub name: String,
    /// The projection's version.
    pub version: u32,
    /// The partition.
    pub partition: u32,
    /// The event that was skipped, and its error.
    pub failure: Failure,
    /// Why the operator skipped it.
    pub reason: String,
    /// When.
    pub skipped_at: DateTime<Utc>,
}

/// A lease a runner took on a checkpoint, with the checkpoint as it was then.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// `true` when the checkpoint did not exist and was created at the start of the feed (the
    /// runner clears the read model first).
    pub created: bool,
}

/// Storage of projection checkpoints: [`super::MemoryCheckpointStore`] and
/// `dtx_postgres::PgCheckpointStore`.
///
/// Every move of a checkpoint is a compare-and-set on its owner and position: a runner that
/// lost its lease, or whose checkpoint an operator moved (reset, skip), fails to advance and
/// its unit of work is rolled back, so two runners never both apply a batch.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Begins a unit of work of this store's backend, for the handlers' writes and the
    /// checkpoint's move.
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>>;

    /// Takes the lease on `key` for `owner` (creating the checkpoint at the start of the feed
    /// if it does not exist), or renews it; `None` while another owner's lease holds.
    async fn acquire(
        &self,
        key: &CheckpointKey,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Lease>>;

    /// Moves the checkpoint as `step` says in `uow`, if `step.owner` holds it and it still
    /// stands at `step.from`; otherwise [`crate::Error::Projection`] (the caller rolls `uow`
    /// back).
    async fn advance_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &CheckpointKey,
        step: &Advance,
    ) -> Result<()>;

    /// [`advance_in`](Self::advance_in) on its own (a subscription, or a stretch of events the
    /// projection does not handle).
    async fn advance(&self, key: &CheckpointKey, step: &Advance) -> Result<()>;

    /// Stops the checkpoint at `failure` (status failed) if `owner` holds it; the lease is
    /// kept, so the runner keeps watching for an operator's skip or resume.
    async fn fail(&self, key: &CheckpointKey, owner: Uuid, failure: &Failure) -> Result<()>;

    /// Gives the lease up (a runner stopping), so another runner takes over at once.
    async fn release(&self, key: &CheckpointKey, owner: Uuid) -> Result<()>;

    /// Every checkpoint, ordered by key.
    async fn list(&self) -> Result<Vec<Checkpoint>>;

    /// Operator: moves a failed checkpoint past the event it stopped at and sets it running,
    /// recording the skip with `reason`. [`crate::Error::Projection`] if it has not failed.
    async fn skip(&self, key: &CheckpointKey, reason: &str) -> Result<SkipRecord>;

    /// Operator: sets a failed checkpoint running again at the same event (after a fix).
    async fn resume(&self, key: &CheckpointKey) -> Result<()>;

    /// The skips recorded for the projection `name`, oldest first.
    async fn skips(&self, name: &str) -> Result<Vec<SkipRecord>>;

    /// Moves the checkpoint back to the start of the feed, running, in `uow` (with the
    /// projection's clear hook, see [`super::ProjectionRunner::reset`]); a runner holding it
    /// fails its next advance and starts over.
    async fn reset_in(&self, uow: &mut dyn UnitOfWork, key: &CheckpointKey) -> Result<()>;
}

/// A move of a checkpoint by the runner holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The runner.
    pub owner: Uuid,
    /// Where the checkpoint must stand.
    pub from: GlobalPosition,
    /// Where it moves.
    pub to: GlobalPosition,
    /// Events applied on the way.
    pub applied: u64,
    /// The lease's renewal.
    pub lease: Duration,
}

/// A shareable checkpoint store.
pub type SharedCheckpointStore = Arc<dyn CheckpointStore>;
