//! What a [`HealthCheck`](super::HealthCheck) finds: one [`HealthReport`] per look.

use chrono::{DateTime, Utc};
use dtx::projection::{CheckpointKey, Failure, ProjectionStatus};
use dtx::saga::SagaStatus;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Everything an operator looks at first, read at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// When it was read (the database's clock).
    pub at: DateTime<Utc>,
    /// The global feed's horizon and what holds it back.
    pub feed: FeedHealth,
    /// The transactional outbox.
    pub outbox: OutboxHealth,
    /// Sagas.
    pub sagas: SagaHealth,
    /// Projections, by checkpoint key.
    pub projections: Vec<ProjectionHealth>,
    /// The inbox's dead letters.
    pub inbox: InboxHealth,
}

/// The global feed: readers (projections, the outbox relay) see only events below the horizon,
/// the oldest transaction still running anywhere in the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct FeedHealth {
    /// The horizon: `pg_snapshot_xmin(pg_current_snapshot())`, a transaction id.
    pub horizon: u64,
    /// The global position of the newest event in feed order, if any.
    pub head: Option<u64>,
    /// Committed events at or above the horizon: readers wait for the transaction holding it.
    pub waiting: u64,
    /// When the oldest of them was recorded.
    pub oldest_waiting: Option<DateTime<Utc>>,
    /// The oldest transaction with an id (it holds the horizon), if any.
    pub oldest_transaction: Option<OpenTransaction>,
}

/// A transaction that holds the feed's horizon back.
#[derive(Debug, Clone, Serialize)]
pub struct OpenTransaction {
    /// Its server process, `None` for a prepared (two-phase) transaction.
    pub pid: Option<i32>,
    /// The database it runs in (the horizon is shared by the whole cluster).
    pub database: Option<String>,
    /// The application name its client set.
    pub application: Option<String>,
    /// Its client's address.
    pub client: Option<String>,
    /// `active`, `idle in transaction`, ... or `prepared`.
    pub state: Option<String>,
    /// How long it has been open.
    #[serde(serialize_with = "seconds")]
    pub age: Duration,
    /// Its last (or current) statement, cut to 300 characters; visible to superusers and
    /// members of `pg_read_all_stats` only.
    pub query: Option<String>,
    /// The global id of a prepared transaction.
    pub prepared_gid: Option<String>,
}

/// The outbox's counts and lag.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxHealth {
    /// Messages waiting to be published.
    pub pending: u64,
    /// The age of the oldest pending message (the outbox lag).
    #[serde(serialize_with = "opt_seconds")]
    pub oldest_pending_age: Option<Duration>,
    /// Dead letters: the keys they block stop until they are requeued.
    pub dead: u64,
    /// Published messages not yet removed by retention.
    pub published: u64,
    /// The first dead letters (at most 5), oldest first.
    pub first_dead: Vec<OutboxDead>,
}

/// A dead outbox message, as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxDead {
    /// Its row id (what `requeue` takes).
    pub id: i64,
    /// Its key.
    pub key: String,
    /// Its type.
    pub message_type: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
}

/// Sagas by status, the oldest unfinished one and the expired leases.
#[derive(Debug, Clone, Serialize)]
pub struct SagaHealth {
    /// How many sagas are in each status (by its stored name; a status without sagas is 0).
    pub counts: BTreeMap<String, u64>,
    /// The oldest saga that is not finished (running, waiting or compensating).
    pub oldest_running: Option<SagaBrief>,
    /// Unfinished sagas whose worker's lease expired (the worker died, or no worker runs):
    /// the first 10, longest expired first.
    pub expired_leases: Vec<SagaBrief>,
    /// The first failed sagas (at most 5), oldest first.
    pub failed: Vec<SagaBrief>,
}

/// One saga, as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct SagaBrief {
    /// Its id.
    pub id: Uuid,
    /// Its saga's name.
    pub name: String,
    /// Its status.
    pub status: SagaStatus,
    /// The next step to run forward.
    pub step: u32,
    /// Since when it exists.
    pub created_at: DateTime<Utc>,
    /// The worker whose lease it holds (or held).
    pub lease_owner: Option<String>,
    /// Until when.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Its last error.
    pub last_error: Option<String>,
}

/// One projection checkpoint and how far behind the feed it is.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionHealth {
    /// Which checkpoint.
    pub key: CheckpointKey,
    /// Running or failed.
    pub status: ProjectionStatus,
    /// Its position on the feed (`commit/sequence`).
    pub position: String,
    /// Events applied since it was created or reset.
    pub applied: u64,
    /// Visible events on the feed after it, counted up to [`LAG_CAP`](super::LAG_CAP).
    pub lag: u64,
    /// When the first of them was recorded (how far behind it is in time).
    pub oldest_unapplied: Option<DateTime<Utc>>,
    /// Where and why it stopped, when failed.
    pub failure: Option<Failure>,
    /// The runner holding it.
    pub owner: Option<Uuid>,
    /// Until when.
    pub lease_until: Option<DateTime<Utc>>,
}

/// The inbox's dead letters, by consumer.
#[derive(Debug, Clone, Serialize)]
pub struct InboxHealth {
    /// Dead letters waiting for an operator.
    pub dead: u64,
    /// Dead letters requeued and not handled yet.
    pub requeued: u64,
    /// Dead letters waiting, by consumer.
    pub dead_by_consumer: BTreeMap<String, u64>,
    /// When the oldest waiting dead letter was dead-lettered.
    pub oldest_dead: Option<DateTime<Utc>>,
}

pub(crate) fn seconds<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

#[expect(
    clippy::ref_option,
    reason = "serde's `serialize_with` passes the field by reference"
)]
pub(crate) fn opt_seconds<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.map(|d| d.as_secs_f64()).serialize(serializer)
}
