//! Storage of the inbox: received message ids, dead letters, and the partition offsets of
//! consumers that keep them in the database (Kafka).

use super::InboundMessage;
use crate::error::Result;
use crate::uow::UnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A dead letter's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Dead,
    /// Requeued by an operator: the consumer handles it again.
    Requeued,
}

impl DeadLetterStatus {
    /// `"dead"` or `"requeued"`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dead => "dead",
            Self::Requeued => "requeued",
        }
    }

    /// The status stored as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "dead" => Some(Self::Dead),
            "requeued" => Some(Self::Requeued),
            _ => None,
        }
    }
}

/// A message a consumer gave up on, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The consumer.
    pub consumer: String,
    /// The message, as delivered.
    pub message: InboundMessage,
    /// The last error.
    pub error: String,
    /// Deliveries (and requeued attempts) so far.
    pub attempts: u32,
    /// Dead or requeued.
    pub status: DeadLetterStatus,
    /// When it was (last) dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// A partition of a topic, as a consumer that keeps its offsets in the database reads it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PartitionKey {
    /// The consumer.
    pub consumer: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl PartitionKey {
    /// Partition `partition` of `topic`, for `consumer`.
    pub fn new(consumer: impl Into<String>, topic: impl Into<String>, partition: i32) -> Self {
        Self {
            consumer: consumer.into(),
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}/{}", self.consumer, self.topic, self.partition)
    }
}

/// Where a consumer stands in a partition, and who reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionOffset {
    /// Which partition.
    pub key: PartitionKey,
    /// The offset of the next record to read: every record before it is applied.
    pub next_offset: i64,
    /// The instance holding the lease, if any.
    pub owner: Option<Uuid>,
    /// Until when the lease holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// The last change.
    pub updated_at: DateTime<Utc>,
}

/// A move of a partition's offset by the instance holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAdvance {
    /// The instance.
    pub owner: Uuid,
    /// Where the offset must stand.
    pub from: i64,
    /// Where it moves.
    pub to: i64,
    /// The lease's renewal.
    pub lease: Duration,
}

/// Storage of the inbox: `dtx_postgres::PgInbox`, and [`super::MemoryInbox`] in memory.
///
/// Every write that belongs with a handler's effects is made in the caller's unit of work
/// (`..._in`), so it commits or rolls back with them.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Begins a unit of work of this store's backend.
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>>;

    /// Records that `consumer` received `message`, in `uow`: `true` when it is new, `false`
    /// when the inbox holds it already (a redelivery). While another unit of work holds an
    /// uncommitted record of the same message, this waits for it (PostgreSQL) or fails with
    /// [`crate::Error::Inbox`] (in memory), so a message is never applied twice.
    async fn record_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
    ) -> Result<bool>;

    /// [`record_in`](Self::record_in) for several messages at once (PostgreSQL: one
    /// statement): for each, whether it is new. A message id that appears twice in `messages`
    /// is new at most once (the first time).
    async fn record_all_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        messages: &[&InboundMessage],
    ) -> Result<Vec<bool>> {
        let mut fresh = Vec::with_capacity(messages.len());
        for message in messages {
            fresh.push(self.record_in(uow, consumer, message).await?);
        }
        Ok(fresh)
    }

    /// Whether `consumer` has received the message `message_id`.
    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool>;

    /// Stores `message` as a dead letter of `consumer` with `error`, and records it in the
    /// inbox (so a redelivery is a duplicate), in `uow`. A dead letter already stored for it
    /// is updated (error, attempts, status dead).
    async fn dead_letter_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> Result<()>;

    /// The dead letters (both statuses), of `consumer` or of every consumer, oldest first.
    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>>;

    /// Operator: requeues a dead letter, so the consumer handles it again. `false` when
    /// `consumer` has no dead letter `message_id`.
    async fn requeue(&self, consumer: &str, message_id: Uuid) -> Result<bool>;

    /// Operator: deletes a dead letter (the message stays recorded as received). `false` when
    /// there is none.
    async fn discard(&self, consumer: &str, message_id: Uuid) -> Result<bool>;

    /// At most `limit` requeued dead letters of `consumer`, oldest first.
    async fn requeued(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Removes a requeued dead letter in `uow` (its handler runs there): `false` when it is no
    /// longer requeued (another instance took it, an operator discarded it).
    async fn resolve_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool>;

    /// A requeued dead letter failed again: back to dead with `error`, one more attempt.
    async fn fail_requeued(&self, consumer: &str, message_id: Uuid, error: &str) -> Result<()>;

    /// Retention: deletes the inbox records received before `now - older_than`, at most
    /// `limit` (call it again while it returns `limit`). Dead letters are kept. A message
    /// redelivered after its record was purged applies again: keep records longer than the
    /// broker may redeliver (the outbox relay's duplicate window, Kafka's retention).
    async fn purge(&self, older_than: Duration, limit: usize) -> Result<u64>;

    /// Takes the lease on `key` for `owner` (creating its offset at `initial` when it has none),
    /// or renews it: the offset of the next record, or `None` while another instance's lease
    /// holds.
    async fn acquire_partition(
        &self,
        key: &PartitionKey,
        owner: Uuid,
        lease: Duration,
        initial: i64,
    ) -> Result<Option<i64>>;

    /// Moves `key`'s offset as `step` says in `uow`, if `step.owner` holds it and it stands at
    /// `step.from`; otherwise [`crate::Error::Inbox`] (the caller rolls `uow` back).
    async fn advance_partition_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &PartitionKey,
        step: &OffsetAdvance,
    ) -> Result<()>;

    /// Gives the lease on `key` up, so another instance takes over at once.
    async fn release_partition(&self, key: &PartitionKey, owner: Uuid) -> Result<()>;

    /// The partition offsets of `consumer`, or of every consumer, ordered by key.
    async fn partitions(&self, consumer: Option<&str>) -> Result<Vec<PartitionOffset>>;
}

/// A shareable inbox store.
pub type SharedInboxStore = Arc<dyn InboxStore>;
