//! The event store: streams of versioned events plus a global feed, with two backends
//! (in memory here, PostgreSQL in `dtx-postgres`) that pass one contract test suite.

mod memory;
pub(crate) mod storable;

pub use memory::MemoryEventStore;

pub use crate::stream::{ExpectedVersion, StreamId};

use crate::error::{Error, Result};
use crate::event::{DecodeError, EventMetadata};
use crate::uow::UnitOfWork;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;

impl StreamId {
    /// Validates a stream id.
    ///
    /// ```
    /// # use dtx::StreamId;
    /// assert!(StreamId::new("Order-42").is_ok());
    /// assert!(StreamId::new("").is_err());
    /// ```
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id: String = id.into();
        check_name("stream id", &id, Self::MAX_LEN)?;
        Ok(Self(id.into()))
    }
}

pub(crate) fn check_name(what: &'static str, value: &str, max: usize) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > max {
        Some("too long")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::Invalid {
            what,
            value: value.chars().take(80).collect(),
            reason,
        }),
    }
}

/// Checks that the `versions` a read of `stream` from `from_version` returned follow each other
/// without a gap, starting at `from_version` (0 reads as 1): a stream with a missing version
/// must not load as if it were complete.
///
/// Backends call it on every stream read; [`crate::Repository`] calls it on every load, from
/// the snapshot's version on. A gap is [`Error::Decode`] with [`DecodeError::VersionGap`],
/// naming the stream and the missing version.
///
/// ```
/// # use dtx::{StreamId, store::check_contiguous};
/// let stream = StreamId::new("Order-1")?;
/// assert!(check_contiguous(&stream, 3, [3, 4, 5]).is_ok());
/// assert!(check_contiguous(&stream, 1, [1, 3]).is_err());
/// assert!(check_contiguous(&stream, 2, [3]).is_err());
/// # Ok::<(), dtx::Error>(())
/// ```
pub fn check_contiguous(
    stream: &StreamId,
    from_version: u64,
    versions: impl IntoIterator<Item = u64>,
) -> Result<()> {
    for (expected, found) in (from_version.max(1)..).zip(versions) {
        if found != expected {
            return Err(Error::Decode {
                stream: stream.clone(),
                version: expected,
                source: DecodeError::VersionGap { expected, found },
            });
        }
    }
    Ok(())
}

/// A position in the global feed, ordered first by commit horizon, then by sequence.
///
/// Positions only grow in the order the feed yields events; pass the last one seen to
/// [`EventStore::read_all`] to continue. [`GlobalPosition::START`] reads from the beginning.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GlobalPosition {
    /// The commit-order key (on PostgreSQL, derived from the writing transaction's id).
    pub commit: u64,
    /// The sequence number the event got when it was written.
    pub sequence: u64,
}

impl GlobalPosition {
    /// Before the first event.
    pub const START: Self = Self {
        commit: 0,
        sequence: 0,
    };
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.commit, self.sequence)
    }
}

/// An event to append: id, type, schema version, JSON payload and metadata.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Unique id (UUID v7 by default); appending an id that is already stored in the stream is
    /// an idempotent no-op.
    pub event_id: Uuid,
    /// The stored type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload.
    pub data: Box<RawValue>,
    /// Correlation, causation and trace context.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Encodes a [`crate::DomainEvent`] with a fresh UUID v7.
    pub fn encode<E: crate::DomainEvent>(
        stream: &StreamId,
        event: &E,
        metadata: EventMetadata,
    ) -> Result<Self> {
        let data = event.to_payload().map_err(|source| Error::Encode {
            stream: stream.clone(),
            what: "event",
            source,
        })?;
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            data,
            metadata,
        })
    }

    /// A raw event from a type name and any serialisable payload.
    pub fn from_json(
        event_type: impl Into<String>,
        payload: &impl serde::Serialize,
    ) -> std::result::Result<Self, serde_json::Error> {
        Ok(Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data: serde_json::value::to_raw_value(payload)?,
            metadata: EventMetadata::default(),
        })
    }
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream (1-based, contiguous).
    pub version: u64,
    /// Its position in the global feed.
    pub position: GlobalPosition,
    /// Its id.
    pub event_id: Uuid,
    /// The stored type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload as JSON text (decoded only by [`RecordedEvent::decode`], never on read).
    pub data: Box<str>,
    /// Correlation, causation and trace context.
    pub metadata: EventMetadata,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Decodes the payload into its [`crate::DomainEvent`] enum; the error names the stream and
    /// version.
    pub fn decode<E: crate::DomainEvent>(&self) -> Result<E> {
        E::from_payload(&self.event_type, self.schema_version, &self.data).map_err(|source| {
            Error::Decode {
                stream: self.stream_id.clone(),
                version: self.version,
                source,
            }
        })
    }
}

/// What rebuilding an aggregate needs of a stored event: version, type and payload.
///
/// Read with [`EventStore::read_stream_data`], which skips the metadata columns.
#[derive(Debug, Clone)]
pub struct EventData {
    /// Its version in the stream.
    pub version: u64,
    /// The stored type name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload as JSON text.
    pub data: Box<str>,
}

impl EventData {
    /// Decodes the payload; the error names the stream and version.
    pub fn decode<E: crate::DomainEvent>(&self, stream: &StreamId) -> Result<E> {
        E::from_payload(&self.event_type, self.schema_version, &self.data).map_err(|source| {
            Error::Decode {
                stream: stream.clone(),
                version: self.version,
                source,
            }
        })
    }
}

impl From<RecordedEvent> for EventData {
    fn from(event: RecordedEvent) -> Self {
        Self {
            version: event.version,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data: event.data,
        }
    }
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The version of the first appended event.
    pub first_version: u64,
    /// The stream's version after the append (the last appended event's version).
    pub last_version: u64,
    /// The global positions of the appended events, in order.
    pub positions: Vec<GlobalPosition>,
    /// `true` when every event id was already stored: nothing new was written.
    pub deduplicated: bool,
}

/// A stored aggregate snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The stream version the state reflects.
    pub version: u64,
    /// The hash of the state's schema; a snapshot with another hash is not used.
    pub schema_hash: u64,
    /// The serialised state.
    pub state: Box<RawValue>,
}

/// Bounds on one append, checked before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most events in one append.
    pub max_batch_events: usize,
    /// Largest payload of one event, in bytes.
    pub max_event_bytes: usize,
    /// Largest total payload of one append, in bytes.
    pub max_batch_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_batch_events: 10_000,
            max_event_bytes: 1024 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
        }
    }
}

impl StoreLimits {
    /// Checks a batch against the limits, event type names against their format, and payloads
    /// and metadata against what every backend can store ([`Error::Unstorable`]).
    pub fn check(&self, stream: &StreamId, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Err(Error::EmptyAppend {
                stream: stream.clone(),
            });
        }
        if events.len() > self.max_batch_events {
            return Err(Error::BatchTooLarge {
                stream: stream.clone(),
                events: events.len(),
                max: self.max_batch_events,
            });
        }
        if events.len() > 1 {
            let mut ids = std::collections::HashSet::with_capacity(events.len());
            if let Some(event) = events.iter().find(|e| !ids.insert(e.event_id)) {
                return Err(Error::Invalid {
                    what: "batch",
                    value: event.event_id.to_string(),
                    reason: "this event id appears twice in one append",
                });
            }
        }
        let mut total = 0usize;
        for (index, event) in events.iter().enumerate() {
            check_name("event type", &event.event_type, 255)?;
            if event.schema_version == 0 || i32::try_from(event.schema_version).is_err() {
                return Err(Error::Invalid {
                    what: "schema version",
                    value: event.schema_version.to_string(),
                    reason: "must be between 1 and 2147483647",
                });
            }
            check_storable(stream, index, event)?;
            let bytes = event.data.get().len();
            if bytes > self.max_event_bytes {
                return Err(Error::PayloadTooLarge {
                    stream: stream.clone(),
                    what: format!("event {}", event.event_id),
                    bytes,
                    max: self.max_event_bytes,
                });
            }
            total += bytes;
        }
        if total > self.max_batch_bytes {
            return Err(Error::PayloadTooLarge {
                stream: stream.clone(),
                what: "batch".to_owned(),
                bytes: total,
                max: self.max_batch_bytes,
            });
        }
        Ok(())
    }
}

/// [`Error::Unstorable`] for an event whose payload or metadata PostgreSQL cannot store,
/// naming the stream and the event's index, type and id.
fn check_storable(stream: &StreamId, index: usize, event: &NewEvent) -> Result<()> {
    let what = |part: &str| {
        format!(
            "the {part} of event {index} (`{}`, id {}) appended to stream `{stream}`",
            event.event_type, event.event_id
        )
    };
    storable::check_json(Some(stream), event.data.get(), || what("payload"))?;
    if let Some(traceparent) = &event.metadata.traceparent {
        storable::check_text(Some(stream), traceparent, || what("traceparent"))?;
    }
    Ok(())
}

impl Snapshot {
    /// [`Error::Unstorable`] unless every backend can store this snapshot (its state is JSON
    /// PostgreSQL's `jsonb` takes); backends check it before saving.
    pub fn check_storable(&self, stream: &StreamId) -> Result<()> {
        let what = || {
            format!(
                "the snapshot at version {} of stream `{stream}`",
                self.version
            )
        };
        storable::check_text(Some(stream), &self.aggregate_type, what)?;
        storable::check_json(Some(stream), self.state.get(), what)
    }
}

/// Storage of event streams, the global feed and snapshots.
///
/// Backends: [`MemoryEventStore`] (embedded default) and `dtx_postgres::PgEventStore`. Both pass
/// the contract suite in `dtx::testing` (feature `testing`), which a third-party backend can run
/// too.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events atomically if the stream is at `expected`.
    ///
    /// - A stream at another version gives [`Error::Conflict`] (with [`ExpectedVersion::Any`]
    ///   the backend retries internally instead).
    /// - If every event id is already stored in this stream, nothing is written and the stored
    ///   versions are returned with `deduplicated: true` (a safe retry after
    ///   [`Error::OutcomeUnknown`]); if only some are, [`Error::DuplicateEvent`].
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult>;

    /// Reads up to `max_count` events of a stream, starting at version `from_version` (1 = the
    /// beginning), in version order. A missing stream reads as empty; an archived one is
    /// [`Error::StreamArchived`] (see [`EventStore::read_archived_stream_data`]).
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Like [`EventStore::read_stream`], but only what rebuilding state needs: the path
    /// [`crate::Repository::load`] takes. Backends override it to skip the metadata.
    async fn read_stream_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        let events = self.read_stream(stream, from_version, max_count).await?;
        Ok(events.into_iter().map(EventData::from).collect())
    }

    /// Reads up to `max_count` events of the global feed after `after`.
    ///
    /// The feed never yields an event behind a position it has already yielded: an event
    /// committed late appears only once every event before it in feed order is final.
    async fn read_all(&self, after: GlobalPosition, max_count: usize)
    -> Result<Vec<RecordedEvent>>;

    /// Reads the global feed after `after` like [`EventStore::read_all`], looking at up to
    /// `max_scan` events and returning only those whose type is in `event_types` (all of them
    /// when it is empty). The filter runs where the events are stored: a reader of a few types
    /// does not receive the others. [`FeedPage::scanned_to`] is the position of the last event
    /// looked at, so a reader can move past a stretch of events it does not handle.
    async fn read_feed(
        &self,
        after: GlobalPosition,
        event_types: &[&str],
        max_scan: usize,
    ) -> Result<FeedPage> {
        let events = self.read_all(after, max_scan).await?;
        let scanned_to = events.last().map_or(after, |e| e.position);
        let events = events
            .into_iter()
            .filter(|e| event_types.is_empty() || event_types.contains(&e.event_type.as_str()))
            .collect();
        Ok(FeedPage {
            events,
            scanned_to,
            unreadable: None,
        })
    }

    /// What wakes a reader of the feed waiting for new events, if this backend has it (else
    /// readers poll). Readers sharing the store share it.
    fn feed_waker(&self) -> Option<Arc<dyn FeedWaker>> {
        None
    }

    /// The stream's current version (0 when it does not exist).
    async fn stream_version(&self, stream: &StreamId) -> Result<u64>;

    /// The latest snapshot of a stream, if any.
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>>;

    /// Stores a snapshot unless a newer one is stored already.
    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()>;

    /// [`EventStore::append`] as part of a [`UnitOfWork`]: the events commit with the unit of
    /// work's other writes, or not at all.
    ///
    /// A stream at another version is [`Error::Conflict`] for every expectation (a lost race
    /// cannot be retried inside the unit of work): roll it back and run it again. The
    /// positions of the appended events are known only after the commit on some backends (the
    /// in-memory one returns none). The default refuses: a backend joins units of work by
    /// overriding this, [`EventStore::read_stream_data_in`] and [`EventStore::save_snapshot_in`].
    async fn append_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let _ = (stream, expected, events);
        Err(crate::uow::refused::<Self>(uow))
    }

    /// [`EventStore::read_stream_data`] as `uow` sees the stream: with the events appended in
    /// it and not committed yet.
    async fn read_stream_data_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        let _ = (stream, from_version, max_count);
        Err(crate::uow::refused::<Self>(uow))
    }

    /// Closes a stream (a tombstone): from then on every append to it, in or out of a unit of
    /// work, is refused with [`Error::StreamClosed`]; its events stay readable, in the stream and
    /// in the feed. Closing a closed stream changes nothing. Returns the stream's last version:
    /// an append that raced with the close either landed before it (and is counted) or was
    /// refused.
    ///
    /// The default refuses ([`Error::Unsupported`]).
    async fn close_stream(&self, stream: &StreamId) -> Result<u64> {
        let _ = stream;
        Err(unsupported::<Self>("closing streams"))
    }

    /// Moves the events of a closed stream out of the hot store into the archive and returns
    /// how many it moved (0 when it was archived already). Afterwards plain reads of the stream
    /// ([`EventStore::read_stream`], [`EventStore::read_stream_data`], loads) refuse with
    /// [`Error::StreamArchived`]; [`EventStore::read_archived_stream_data`] and
    /// [`crate::Repository::load_archived`] read it, and the global feed still yields its
    /// events at their positions, once each, to every reader (one that started before the
    /// archiving included). A stream that is not closed is [`Error::Archive`].
    ///
    /// The default refuses ([`Error::Unsupported`]).
    async fn archive_stream(&self, stream: &StreamId) -> Result<u64> {
        let _ = stream;
        Err(unsupported::<Self>("archiving streams"))
    }

    /// Whether the stream is open, closed or archived.
    ///
    /// The default: every stream is open.
    async fn stream_state(&self, stream: &StreamId) -> Result<StreamState> {
        let _ = stream;
        Ok(StreamState::Open)
    }

    /// [`EventStore::read_stream_data`] of a stream whose events may be archived: reads the
    /// archive as well as the hot store (an archived stream, or any other).
    ///
    /// The default reads the hot store only.
    async fn read_archived_stream_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        self.read_stream_data(stream, from_version, max_count).await
    }

    /// Forgets the data subject `subject` (crypto-shredding, see [`crate::personal`]): deletes
    /// its key in one statement, so that from then on every read — stream reads and loads,
    /// snapshots, the feed and what follows it — yields its personal values as forgotten, and
    /// the rest of each event as it was. `false` when the subject had no key.
    ///
    /// The default refuses: a backend keeps personal data by overriding it, sealing what it
    /// writes and opening what it reads with a [`crate::personal::PersonalData`].
    async fn forget(&self, subject: &str) -> Result<bool> {
        let _ = subject;
        Err(Error::Invalid {
            what: "event store",
            value: std::any::type_name::<Self>().to_owned(),
            reason: "this backend keeps no personal data keys",
        })
    }

    /// [`EventStore::save_snapshot`] as part of a [`UnitOfWork`].
    async fn save_snapshot_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<()> {
        let _ = (stream, snapshot);
        Err(crate::uow::refused::<Self>(uow))
    }
}

/// Where a stream is in its life (see [`EventStore::close_stream`] and
/// [`EventStore::archive_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum StreamState {
    /// Takes appends (a stream with no events is open too).
    Open,
    /// Closed: refuses appends; its events are in the hot store.
    Closed {
        /// Its last version.
        version: u64,
    },
    /// Closed, and its events moved to the archive.
    Archived {
        /// Its last version.
        version: u64,
    },
}

impl StreamState {
    /// Whether appends are refused.
    pub fn is_closed(self) -> bool {
        !matches!(self, Self::Open)
    }
}

/// [`Error::Unsupported`] for a backend `S` asked to do `operation`.
fn unsupported<S: ?Sized>(operation: &'static str) -> Error {
    Error::Unsupported {
        backend: std::any::type_name::<S>(),
        operation,
    }
}

/// A page of the global feed read by [`EventStore::read_feed`].
#[derive(Debug, Clone, Default)]
pub struct FeedPage {
    /// The events of the requested types, in feed order.
    pub events: Vec<RecordedEvent>,
    /// The position of the last event looked at (the `after` position when there was none):
    /// every event up to it of another type was passed over.
    pub scanned_to: GlobalPosition,
    /// A stored row of a requested type that cannot be read (a value dtx never writes): the
    /// page stops before it, and a reader reports it with its position instead of failing on
    /// every read.
    pub unreadable: Option<Unreadable>,
}

/// A row of the feed that cannot be read as a [`RecordedEvent`], as [`FeedPage`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its position.
    pub position: GlobalPosition,
    /// Its stream id as stored.
    pub stream_id: String,
    /// Its event id, when that could be read.
    pub event_id: Option<Uuid>,
    /// Why it cannot be read.
    pub error: String,
}

/// The state of a [`FeedWaker`] when a reader last looked: pass it back to
/// [`FeedWaker::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeTicket {
    /// Changes whenever the waker arms or is woken.
    pub epoch: u64,
    /// Whether a commit of new events wakes the waiters from now on.
    pub armed: bool,
}

/// Wakes readers of the global feed when new events commit, so they need not poll.
///
/// A reader takes a [`ticket`](Self::ticket) *before* reading; when the read finds nothing new
/// it calls [`wait`](Self::wait) with that ticket, which returns as soon as anything changed
/// since the ticket (then the reader reads again), and otherwise waits for new events or the
/// timeout. A ticket taken while the waker is armed guarantees that an event committed after
/// the read wakes the wait; with an unarmed ticket, `wait` arms the waker and returns so the
/// reader reads once more.
#[async_trait]
pub trait FeedWaker: Send + Sync + 'static {
    /// The waker's state now.
    fn ticket(&self) -> WakeTicket;

    /// Waits until the state differs from `ticket` (armed, or woken by new events), or
    /// `timeout` passes.
    async fn wait(&self, ticket: WakeTicket, timeout: std::time::Duration);
}

/// A shareable, type-erased event store.
pub type SharedEventStore = Arc<dyn EventStore>;
