//! The transactional outbox: messages written in the same transaction as the events they carry,
//! published at least once, in order per stream key, by a relay.
//!
//! This module holds what every backend shares: the message types, the [`Publisher`] trait a
//! broker client implements, the relay settings ([`RelayOptions`]), the embedded
//! [`MemoryOutbox`] (fed atomically by [`crate::MemoryEventStore::with_outbox`]) and the
//! [`MemoryPublisher`]. The PostgreSQL outbox and its relay live in `dtx-postgres`
//! (`PgOutbox`, `OutboxRelay`), with a NATS `JetStream` publisher behind its `nats` feature and a
//! Kafka publisher behind its `kafka` feature.
//!
//! Delivery is at least once: a message published just before its relay dies is published again.
//! Every message carries its id in the [`headers::EVENT_ID`] header for consumers to dedupe on.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dtx::outbox::{MemoryOutbox, MemoryPublisher, RelayOptions};
//! use dtx::{EventStore, ExpectedVersion, MemoryEventStore, NewEvent, StreamId};
//!
//! let outbox = MemoryOutbox::new();
//! let store = MemoryEventStore::new().with_outbox(outbox.clone());
//! let stream = StreamId::new("Order-1")?;
//! let event = NewEvent::from_json("OrderPlaced", &serde_json::json!({"total": 5})).unwrap();
//! store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//!
//! let publisher = MemoryPublisher::new();
//! let published = outbox.publish_pending(&publisher, &RelayOptions::default()).await;
//! assert_eq!(published, 1);
//! assert_eq!(publisher.published()[0].key, "Order-1");
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

use crate::error::BoxError;
use crate::store::{NewEvent, StreamId};
use crate::{Backoff, Jitter};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// The header names every outbox message carries (when the value is known).
pub mod headers {
    /// The message id (the event id for events): consumers dedupe on it.
    pub const EVENT_ID: &str = "dtx-event-id";
    /// The stored event type name.
    pub const EVENT_TYPE: &str = "dtx-event-type";
    /// The stream (ordering key) the message belongs to.
    pub const STREAM_ID: &str = "dtx-stream-id";
    /// The correlation id of the business operation.
    pub const CORRELATION_ID: &str = "dtx-correlation-id";
    /// The id of the command or event that caused this one.
    pub const CAUSATION_ID: &str = "dtx-causation-id";
    /// The W3C trace context of the span that produced the message.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Where a stored outbox message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxStatus {
    /// Waiting to be published (possibly after a failed attempt, see `next_attempt_at`).
    Pending,
    /// Published; removed by retention later.
    Published,
    /// Failed more than `max_retries` times; its key stops until it is requeued.
    Dead,
}

impl OutboxStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "published" => Some(Self::Published),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to add to the outbox.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    /// The ordering key: messages of one key are published in the order they were written.
    pub key: String,
    /// The message id brokers and consumers dedupe on.
    pub message_id: Uuid,
    /// The message type name.
    pub message_type: String,
    /// The JSON payload.
    pub payload: Box<RawValue>,
    /// Extra headers (the [`headers::EVENT_ID`], [`headers::EVENT_TYPE`] and
    /// [`headers::STREAM_ID`] headers are added from the fields above).
    pub headers: BTreeMap<String, String>,
}

impl NewOutboxMessage {
    /// A message with a fresh UUID v7 and any serialisable payload.
    pub fn new(
        key: impl Into<String>,
        message_type: impl Into<String>,
        payload: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            key: key.into(),
            message_id: Uuid::now_v7(),
            message_type: message_type.into(),
            payload: serde_json::value::to_raw_value(payload)?,
            headers: BTreeMap::new(),
        })
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The headers a published message carries: the extra ones plus id, type and key.
    pub fn all_headers(&self) -> BTreeMap<String, String> {
        let mut all = self.headers.clone();
        all.insert(headers::EVENT_ID.to_owned(), self.message_id.to_string());
        all.insert(headers::EVENT_TYPE.to_owned(), self.message_type.clone());
        all.insert(headers::STREAM_ID.to_owned(), self.key.clone());
        all
    }
}

/// The headers of an event's outbox message (the same the PostgreSQL append writes).
pub fn event_headers(stream: &StreamId, event: &NewEvent) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    all.insert(headers::EVENT_ID.to_owned(), event.event_id.to_string());
    all.insert(headers::EVENT_TYPE.to_owned(), event.event_type.clone());
    all.insert(headers::STREAM_ID.to_owned(), stream.to_string());
    let meta = &event.metadata;
    if let Some(id) = meta.correlation_id {
        all.insert(headers::CORRELATION_ID.to_owned(), id.to_string());
    }
    if let Some(id) = meta.causation_id {
        all.insert(headers::CAUSATION_ID.to_owned(), id.to_string());
    }
    if let Some(traceparent) = &meta.traceparent {
        all.insert(headers::TRACEPARENT.to_owned(), traceparent.clone());
    }
    all
}

/// A stored outbox message, as a relay hands it to a [`Publisher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row id (the order of messages within one key).
    pub id: i64,
    /// The ordering key (the stream id for events).
    pub key: String,
    /// The event's version in its stream, for events.
    pub sequence: Option<u64>,
    /// The message id (the event id for events).
    pub message_id: Uuid,
    /// The message type name.
    pub message_type: String,
    /// The JSON payload as text.
    pub payload: Box<str>,
    /// The headers, see [`headers`].
    pub headers: BTreeMap<String, String>,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the message was written.
    pub created_at: DateTime<Utc>,
}

/// A failed publish. Every failure is retried (with backoff) up to
/// [`RelayOptions::max_retries`]; then the message is dead-lettered.
#[derive(Debug, thiserror::Error)]
#[error("publishing failed: {message}")]
pub struct PublishError {
    /// What went wrong.
    pub message: String,
    /// The broker client's error.
    #[source]
    pub source: Option<BoxError>,
}

impl PublishError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Wraps a broker client's error.
    pub fn from_source(error: impl Into<BoxError>) -> Self {
        let source = error.into();
        Self {
            message: source.to_string(),
            source: Some(source),
        }
    }
}

/// Sends outbox messages to a broker.
///
/// `publish` returns `Ok` only once the broker has durably accepted the message (for `JetStream`:
/// the publish ack); the relay marks the message published after that. An error is retried.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an outbox publisher",
    note = "implement `dtx::outbox::Publisher` (with `#[async_trait]`), or use `MemoryPublisher` or a broker publisher of dtx-postgres"
)]
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; `Ok` means the broker has it.
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError>;
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        (**self).publish(message).await
    }
}

/// Publishes one message as every relay does: inside a `dtx.outbox.publish` span that continues
/// the trace of the write that produced the message (its `traceparent` header), recording the
/// outbox lag when the broker has it.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::outbox::{MemoryPublisher, OutboxMessage, publish_traced};
///
/// let publisher = MemoryPublisher::new();
/// let message = OutboxMessage {
///     id: 1,
///     key: "Order-1".into(),
///     sequence: Some(1),
///     message_id: uuid::Uuid::now_v7(),
///     message_type: "OrderPlaced".into(),
///     payload: r#"{"total":3}"#.into(),
///     headers: Default::default(),
///     attempts: 0,
///     last_error: None,
///     created_at: chrono::Utc::now(),
/// };
/// publish_traced(&publisher, &message).await?;
/// assert_eq!(publisher.published().len(), 1);
/// # Ok::<(), dtx::outbox::PublishError>(())
/// # }).unwrap();
/// ```
///
/// # Errors
/// The publisher's error, as it returned it.
pub async fn publish_traced<P: Publisher + ?Sized>(
    publisher: &P,
    message: &OutboxMessage,
) -> Result<(), PublishError> {
    let span = tracing::info_span!(
        "dtx.outbox.publish",
        stream = %message.key,
        message_type = %message.message_type,
    );
    crate::telemetry::set_parent(
        &span,
        message
            .headers
            .get(headers::TRACEPARENT)
            .map(String::as_str),
    );
    tracing::Instrument::instrument(publisher.publish(message), span).await?;
    let lag = (Utc::now() - message.created_at).to_std();
    crate::telemetry::record_outbox_published(lag.unwrap_or_default());
    Ok(())
}

/// How a relay claims, publishes, retries and cleans up.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Most messages claimed at once (default 100). Part of a relay's cost is paid per batch
    /// (a transaction, its checkpoint or marks), so under thousands of appends a second a larger
    /// batch (say 500) spends less of the database on relaying.
    pub batch_size: usize,
    /// Failed attempts retried before a message is dead-lettered (default 5): a message is tried
    /// at most `max_retries + 1` times.
    pub max_retries: u32,
    /// Backoff after the first failure; doubled after each further one (default 100 ms).
    pub base_backoff: Duration,
    /// Longest backoff (default 30 s).
    pub max_backoff: Duration,
    /// How often an idle relay looks for work without a wake-up: the fallback to
    /// `LISTEN/NOTIFY` (default 1 s).
    pub poll_interval: Duration,
    /// How long a busy relay waits after a pass that found several messages but did not fill its
    /// batch before it claims the next one (default 20 ms): under a steady stream of writes,
    /// batches of many messages cost the database far less than many batches of a few. A pass
    /// that filled its batch, or found a single message, is followed at once, so a lone message
    /// is never held back.
    pub linger: Duration,
    /// How long published messages are kept before they are deleted (default 7 days; `None`
    /// keeps them; zero deletes a message as soon as it is published and keeps no copy). On
    /// PostgreSQL this is the archive of the messages the relay takes from its backlog table;
    /// the events it publishes straight from the feed stay in the event store. In memory it is
    /// the [`MemoryOutbox`]'s archive of published messages.
    pub retention: Option<Duration>,
    /// Rows one retention statement deletes (default 1000), so no delete holds long locks.
    pub retention_batch: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_retries: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            linger: Duration::from_millis(20),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_batch: 1000,
        }
    }
}

impl RelayOptions {
    /// The wait before attempt `failures + 1`: a [`Backoff`] from
    /// [`base_backoff`](Self::base_backoff), doubling up to [`max_backoff`](Self::max_backoff),
    /// with [`Jitter::Equal`] (between half and all of it) so retries of many messages spread out.
    pub fn backoff(&self, failures: u32) -> Duration {
        Backoff::new(self.base_backoff, self.max_backoff, Jitter::Equal).delay(failures)
    }

    /// Whether a message that has now failed `failures` times is dead.
    pub fn is_dead(&self, failures: u32) -> bool {
        failures > self.max_retries
    }
}

/// Counts of outbox messages by status, and the outbox lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Messages waiting to be published.
    pub pending: u64,
    /// Published messages not yet removed by retention.
    pub published: u64,
    /// Dead-lettered messages.
    pub dead: u64,
    /// The age of the oldest pending message (the outbox lag); `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// A [`Publisher`] that keeps what it publishes in memory: the embedded default and the
/// publisher of tests. It can be told to reject every message of some keys (a poison key).
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    inner: Arc<Mutex<PublisherState>>,
    published: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct PublisherState {
    messages: Vec<OutboxMessage>,
    rejected_keys: HashSet<String>,
    rejections: u64,
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher")
            .field("published", &self.lock().messages.len())
            .finish_non_exhaustive()
    }
}

impl MemoryPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PublisherState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rejects every message of `key` from now on.
    pub fn reject_key(&self, key: impl Into<String>) {
        self.lock().rejected_keys.insert(key.into());
    }

    /// Accepts `key` again.
    pub fn accept_key(&self, key: &str) {
        self.lock().rejected_keys.remove(key);
    }

    /// Every message published so far, in publish order (duplicates included).
    pub fn published(&self) -> Vec<OutboxMessage> {
        self.lock().messages.clone()
    }

    /// How many messages were published so far.
    pub fn count(&self) -> usize {
        self.lock().messages.len()
    }

    /// How many publishes were rejected so far.
    pub fn rejections(&self) -> u64 {
        self.lock().rejections
    }

    /// Waits until at least `count` messages were published; `false` on timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.published.notified();
            if self.count() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= count;
            }
        }
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        {
            let mut state = self.lock();
            if state.rejected_keys.contains(&message.key) {
                state.rejections += 1;
                return Err(PublishError::new(format!(
                    "key `{}` is rejected by this publisher",
                    message.key
                )));
            }
            state.messages.push(message.clone());
        }
        self.published.notify_waiters();
        Ok(())
    }
}

/// The embedded outbox: fed atomically by [`crate::MemoryEventStore::with_outbox`] (or
/// [`MemoryOutbox::enqueue`]), published by [`MemoryOutbox::publish_pending`] or
/// [`MemoryOutbox::run`], with the same ordering, retry and dead-letter rules as the PostgreSQL
/// relay. Clones share the same messages.
///
/// Published messages leave the queue at once (a pass only ever looks at what is still to be
/// published) for an archive kept as [`RelayOptions::retention`] says: none with a zero
/// retention, otherwise until [`MemoryOutbox::run`] purges them after the retention or
/// [`MemoryOutbox::purge_published`] is called. A long-running embedded relay thus holds only
/// its backlog and the retention's worth of messages.
#[derive(Clone, Default)]
pub struct MemoryOutbox {
    inner: Arc<Mutex<OutboxState>>,
    wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct OutboxState {
    next_id: i64,
    /// The messages not yet published (pending or dead), in id order.
    rows: Vec<MemoryRow>,
    /// The published messages kept, with when they were published, oldest first.
    archive: std::collections::VecDeque<(std::time::Instant, OutboxMessage)>,
}

struct MemoryRow {
    message: OutboxMessage,
    status: OutboxStatus,
    next_attempt: std::time::Instant,
}

impl fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryOutbox")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, state: &mut OutboxState, message: OutboxMessage) {
        let _ = self;
        state.rows.push(MemoryRow {
            message,
            status: OutboxStatus::Pending,
            next_attempt: std::time::Instant::now(),
        });
    }

    /// Adds the outbox messages of appended events (called by the event store while it holds its
    /// append lock, so outbox order is append order).
    pub(crate) fn push_events(&self, stream: &StreamId, first_version: u64, events: &[NewEvent]) {
        let now = Utc::now();
        let mut state = self.lock();
        for (version, event) in (first_version..).zip(events) {
            state.next_id += 1;
            let message = OutboxMessage {
                id: state.next_id,
                key: stream.to_string(),
                sequence: Some(version),
                message_id: event.event_id,
                message_type: event.event_type.clone(),
                payload: event.data.get().into(),
                headers: event_headers(stream, event),
                attempts: 0,
                last_error: None,
                created_at: now,
            };
            self.push(&mut state, message);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Adds messages.
    pub fn enqueue(&self, messages: Vec<NewOutboxMessage>) {
        let now = Utc::now();
        let mut state = self.lock();
        for new in messages {
            state.next_id += 1;
            let message = OutboxMessage {
                id: state.next_id,
                headers: new.all_headers(),
                key: new.key,
                sequence: None,
                message_id: new.message_id,
                message_type: new.message_type,
                payload: new.payload.get().into(),
                attempts: 0,
                last_error: None,
                created_at: now,
            };
            self.push(&mut state, message);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Publishes one batch of due messages (keys in order, a key stopping at its first message
    /// that is dead or waiting for a retry); returns how many it tried.
    pub async fn publish_pending(
        &self,
        publisher: &dyn Publisher,
        options: &RelayOptions,
    ) -> usize {
        let now = std::time::Instant::now();
        let batch: Vec<OutboxMessage> = {
            let state = self.lock();
            let mut blocked = HashSet::new();
            let mut batch = Vec::new();
            for row in &state.rows {
                if batch.len() >= options.batch_size {
                    break;
                }
                if blocked.contains(&row.message.key) {
                    continue;
                }
                if row.status == OutboxStatus::Dead || row.next_attempt > now {
                    blocked.insert(row.message.key.clone());
                    continue;
                }
                batch.push(row.message.clone());
            }
            batch
        };
        let mut failed_keys = HashSet::new();
        let mut outcomes = HashMap::new();
        for message in &batch {
            if failed_keys.contains(&message.key) {
                continue;
            }
            let outcome = publish_traced(publisher, message).await;
            if outcome.is_err() {
                failed_keys.insert(message.key.clone());
            }
            outcomes.insert(message.id, outcome);
        }
        let tried = outcomes.len();
        let keep = options.retention.is_none_or(|r| !r.is_zero());
        let published_at = std::time::Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        for row in &mut state.rows {
            match outcomes.remove(&row.message.id) {
                Some(Ok(())) => {
                    row.status = OutboxStatus::Published;
                    if keep {
                        state.archive.push_back((published_at, row.message.clone()));
                    }
                }
                Some(Err(error)) => {
                    row.message.attempts += 1;
                    row.message.last_error = Some(error.to_string());
                    if options.is_dead(row.message.attempts) {
                        tracing::warn!(key = %row.message.key, id = row.message.id, %error, "outbox message dead-lettered");
                        crate::telemetry::record_outbox_dead_letter();
                        row.status = OutboxStatus::Dead;
                    } else {
                        row.next_attempt =
                            std::time::Instant::now() + options.backoff(row.message.attempts);
                    }
                }
                None => {}
            }
        }
        state.rows.retain(|r| r.status != OutboxStatus::Published);
        tried
    }

    /// Publishes until `shutdown` completes, woken by every write, polling
    /// [`RelayOptions::poll_interval`] for retries. Deletes published messages past
    /// [`RelayOptions::retention`] about once a minute.
    pub async fn run(
        &self,
        publisher: &dyn Publisher,
        options: &RelayOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut purged = std::time::Instant::now();
        loop {
            let woken = self.wake.notified();
            let tried = tokio::select! {
                () = &mut shutdown => return,
                tried = self.publish_pending(publisher, options) => tried,
            };
            if let Some(retention) = options.retention
                && purged.elapsed() > Duration::from_secs(60)
            {
                purged = std::time::Instant::now();
                self.purge_published_before(retention);
            }
            if tried > 0 {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = woken => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }

    /// Counts by status and the outbox lag.
    pub fn counts(&self) -> OutboxCounts {
        let state = self.lock();
        let mut counts = OutboxCounts {
            published: u64::try_from(state.archive.len()).unwrap_or(u64::MAX),
            ..OutboxCounts::default()
        };
        let now = Utc::now();
        for row in &state.rows {
            match row.status {
                OutboxStatus::Pending => {
                    counts.pending += 1;
                    if counts.oldest_pending_age.is_none() {
                        counts.oldest_pending_age = (now - row.message.created_at)
                            .to_std()
                            .ok()
                            .or(Some(Duration::ZERO));
                    }
                }
                // published messages leave the queue for the archive counted above
                OutboxStatus::Published => {}
                OutboxStatus::Dead => counts.dead += 1,
            }
        }
        counts
    }

    /// The dead-lettered messages, oldest first.
    pub fn dead(&self) -> Vec<OutboxMessage> {
        self.lock()
            .rows
            .iter()
            .filter(|r| r.status == OutboxStatus::Dead)
            .map(|r| r.message.clone())
            .collect()
    }

    /// Puts a dead message back to pending with its attempts reset; `false` if no dead message
    /// has this id.
    pub fn requeue(&self, id: i64) -> bool {
        let mut state = self.lock();
        let Some(row) = state
            .rows
            .iter_mut()
            .find(|r| r.message.id == id && r.status == OutboxStatus::Dead)
        else {
            return false;
        };
        row.status = OutboxStatus::Pending;
        row.message.attempts = 0;
        row.next_attempt = std::time::Instant::now();
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Deletes every published message kept (see [`RelayOptions::retention`]); returns how many.
    pub fn purge_published(&self) -> usize {
        self.purge_published_before(Duration::ZERO)
    }

    /// Deletes the published messages kept for longer than `retention`; returns how many.
    pub fn purge_published_before(&self, retention: Duration) -> usize {
        let mut state = self.lock();
        let before = state.archive.len();
        while state
            .archive
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= retention)
        {
            state.archive.pop_front();
        }
        before - state.archive.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventStore, ExpectedVersion, MemoryEventStore};

    fn options() -> RelayOptions {
        RelayOptions {
            max_retries: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RelayOptions::default()
        }
    }

    #[tokio::test]
    async fn appends_feed_the_outbox_and_a_poison_key_is_dead_lettered_alone() {
        let outbox = MemoryOutbox::new();
        let store = MemoryEventStore::new().with_outbox(outbox.clone());
        for key in ["A", "B"] {
            let stream = StreamId::new(key).unwrap();
            for n in 0..3 {
                let event = NewEvent::from_json("Happened", &n).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
            }
        }
        let publisher = MemoryPublisher::new();
        publisher.reject_key("A");
        let options = options();
        for _ in 0..50 {
            outbox.publish_pending(&publisher, &options).await;
            if outbox.counts().dead == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let counts = outbox.counts();
        assert_eq!((counts.published, counts.dead, counts.pending), (3, 1, 2));
        let dead = outbox.dead();
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].sequence, Some(1));
        let b: Vec<_> = publisher.published().iter().map(|m| m.sequence).collect();
        assert_eq!(b, [Some(1), Some(2), Some(3)]);

        publisher.accept_key("A");
        assert!(outbox.requeue(dead[0].id));
        outbox.publish_pending(&publisher, &options).await;
        let a: Vec<_> = publisher
            .published()
            .into_iter()
            .filter(|m| m.key == "A")
            .map(|m| m.sequence)
            .collect();
        assert_eq!(a, [Some(1), Some(2), Some(3)]);
        assert_eq!(outbox.purge_published(), 6);
    }

    #[tokio::test]
    async fn published_messages_leave_the_queue_and_are_kept_as_long_as_the_retention_says() {
        let messages = |n: usize| {
            (0..n)
                .map(|i| NewOutboxMessage::new(format!("K-{}", i % 10), "Sent", &i).unwrap())
                .collect::<Vec<_>>()
        };
        let publisher = MemoryPublisher::new();

        let kept = MemoryOutbox::new();
        kept.enqueue(messages(1000));
        let options = RelayOptions {
            batch_size: 1000,
            ..RelayOptions::default()
        };
        assert_eq!(kept.publish_pending(&publisher, &options).await, 1000);
        let counts = kept.counts();
        assert_eq!((counts.pending, counts.published), (0, 1000));
        assert_eq!(
            kept.lock().rows.len(),
            0,
            "the queue holds only what is unpublished"
        );
        assert_eq!(kept.purge_published_before(Duration::from_secs(3600)), 0);
        assert_eq!(kept.purge_published(), 1000);
        assert_eq!(kept.counts().published, 0);

        let unkept = MemoryOutbox::new();
        unkept.enqueue(messages(100));
        let options = RelayOptions {
            retention: Some(Duration::ZERO),
            ..RelayOptions::default()
        };
        assert_eq!(unkept.publish_pending(&publisher, &options).await, 100);
        assert_eq!(
            unkept.counts().published,
            0,
            "a zero retention keeps nothing"
        );
        assert_eq!(publisher.published().len(), 1100);
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let options = RelayOptions::default();
        assert!(options.backoff(1) <= Duration::from_millis(100));
        assert!(options.backoff(3) >= Duration::from_millis(200));
        assert!(options.backoff(30) <= Duration::from_secs(30));
        assert!(!options.is_dead(5));
        assert!(options.is_dead(6));
    }
}
