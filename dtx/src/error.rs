//! The error type shared by every dtx component.

use crate::event::DecodeError;
use crate::stream::{ExpectedVersion, StreamId};
use std::fmt;
use uuid::Uuid;

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in dtx, each variant naming the stream, version or key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Optimistic concurrency: the stream was not at the expected version.
    #[error("version conflict on stream `{stream}`: expected {expected}, actual {actual}")]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was rejected (0 = no stream).
        actual: u64,
    },
    /// Some, but not all, of the appended event ids are already stored (in this or another
    /// stream), so the batch is neither new nor a retry of a stored batch.
    #[error(
        "event {event_id} appended to `{stream}` is already stored in stream `{stored_in}`; a retry must resend the whole batch"
    )]
    DuplicateEvent {
        /// The stream appended to.
        stream: StreamId,
        /// The duplicated event id.
        event_id: Uuid,
        /// The stream that holds it.
        stored_in: String,
    },
    /// A stored event could not be decoded.
    #[error("cannot decode event at version {version} of stream `{stream}`: {source}")]
    Decode {
        /// The stream read from.
        stream: StreamId,
        /// The version of the bad event.
        version: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// An event or snapshot could not be serialised.
    #[error("cannot encode {what} for stream `{stream}`: {source}")]
    Encode {
        /// The stream written to.
        stream: StreamId,
        /// What was being encoded.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The append carries no events.
    #[error("append to stream `{stream}` carries no events")]
    EmptyAppend {
        /// The stream.
        stream: StreamId,
    },
    /// The append carries more events than the store accepts in one batch.
    #[error("append to stream `{stream}` carries {events} events; at most {max} fit in one batch")]
    BatchTooLarge {
        /// The stream.
        stream: StreamId,
        /// Events in the batch.
        events: usize,
        /// The limit.
        max: usize,
    },
    /// A payload, or the whole batch, is larger than the store accepts.
    #[error("append to stream `{stream}`: {what} is {bytes} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The stream.
        stream: StreamId,
        /// `event <id>` or `batch`.
        what: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// JSON or text that PostgreSQL cannot store (`\u0000`, a lone UTF-16 surrogate escape, a
    /// number beyond `numeric`'s range, a NUL character in text). Every backend refuses it
    /// before anything is written, so the in-memory store takes only what PostgreSQL takes.
    #[error("cannot store {what}: {reason}")]
    Unstorable {
        /// The stream written to, if the value belongs to one.
        stream: Option<StreamId>,
        /// What holds the value, e.g. ``the payload of event 2 (`OrderPlaced`, id …) appended to
        /// stream `Order-1` ``.
        what: String,
        /// Why it cannot be stored.
        reason: &'static str,
    },
    /// A stream id, event type or identifier is not acceptable.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// What was checked (stream id, event type, ...).
        what: &'static str,
        /// The offending value (shortened when long).
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A command's events would break an aggregate invariant; nothing was stored.
    #[error("invariant of {aggregate} `{id}` violated: {violation}")]
    Invariant {
        /// The aggregate type.
        aggregate: &'static str,
        /// The aggregate id.
        id: String,
        /// The violation.
        violation: InvariantViolation,
    },
    /// The connection failed after the write was sent: it may or may not have committed.
    ///
    /// Never retried automatically. Retrying the same append with the same event ids is safe:
    /// it succeeds as a duplicate if the first attempt committed.
    #[error(
        "outcome unknown for append to stream `{stream}`: the connection failed after the write was sent"
    )]
    OutcomeUnknown {
        /// The stream appended to.
        stream: StreamId,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// The connection failed while a unit of work was committing: it may or may not have
    /// committed.
    ///
    /// Never retried automatically. Running the unit of work again is safe where its writes
    /// are: appends of the same event ids succeed as duplicates, an idempotency key it completed
    /// replays its result.
    #[error("outcome unknown for a commit: the connection failed after COMMIT was sent")]
    CommitOutcomeUnknown {
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// A unit of work's transaction had failed before its commit (a statement in it failed and
    /// the database aborted it): nothing was committed, and the commit rolled it back. Run the
    /// unit of work again.
    #[error("the transaction had failed; nothing was committed")]
    RolledBack {
        /// The database's answer that showed the transaction had failed.
        #[source]
        source: BoxError,
    },
    /// A request's unit of work was used after its handler returned (by a task the handler
    /// spawned, say): the layer has committed or rolled it back by then.
    #[error("the request's unit of work has ended: its handler returned")]
    UnitOfWorkEnded,
    /// A store was given the unit of work of another backend (a memory store inside a
    /// PostgreSQL transaction, say), or a backend that cannot join one.
    #[error("a {expected} store cannot join a {actual} unit of work")]
    UnitOfWork {
        /// The backend the store belongs to.
        expected: &'static str,
        /// The backend of the unit of work it was given.
        actual: &'static str,
    },
    /// Two projections registered under one name (see [`crate::projection::registered`]).
    #[error("projection `{name}` is declared twice: {first} and {second}")]
    DuplicateProjection {
        /// The name.
        name: &'static str,
        /// One declaration (`Type (file:line)`).
        first: String,
        /// The other.
        second: String,
    },
    /// A projection's checkpoint is not where the operation needs it (a skip of a projection
    /// that has not failed, a checkpoint owned by another runner, ...).
    #[error("projection `{name}`: {reason}")]
    Projection {
        /// The projection.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two consumers registered under one name (see [`crate::inbox::registered`]).
    #[error("consumer `{name}` is declared twice: {first} and {second}")]
    DuplicateConsumer {
        /// The name.
        name: &'static str,
        /// One declaration (`Type (file:line)`).
        first: String,
        /// The other.
        second: String,
    },
    /// An inbox operation could not be done as asked (a partition owned by another instance,
    /// a dead letter that is not there, a message another unit of work is handling, ...).
    #[error("consumer `{consumer}`: {reason}")]
    Inbox {
        /// The consumer.
        consumer: String,
        /// What is wrong.
        reason: String,
    },
    /// A message from a broker cannot be applied as it is (its payload does not decode, a
    /// header is missing or malformed): no retry can help.
    #[error("message {message_id} (`{event_type}`{}): {reason}", source_suffix(.source_name.as_deref()))]
    InvalidMessage {
        /// The message's id.
        message_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// Where it came from (`subject #sequence`, `topic/partition@offset`).
        source_name: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The event feed's stored order is ahead of the database's transaction ids: the database
    /// was restored from a logical dump (`pg_dump`) into another cluster, or copied there, and
    /// events appended now would sort below positions the outbox relay and projections have
    /// passed, and be skipped. Refused at start-up until the feed is repaired
    /// (`dtx_postgres::repair_restored_feed`).
    #[error(
        "the event feed is ahead of this database's transaction ids (stored commit order \
         {stored}, next transaction id {next_xid}): the database was restored from a logical \
         dump or copied to another cluster, and events appended now would sort below positions \
         feed readers have passed. Stop the services and run \
         `dtx_postgres::repair_restored_feed` once (README, \"Running in production\")"
    )]
    FeedAhead {
        /// The highest commit order stored (in events or feed checkpoints).
        stored: u64,
        /// The database's next transaction id.
        next_xid: u64,
    },
    /// The stream is closed (see [`crate::EventStore::close_stream`]): it takes no more
    /// events. Nothing was written.
    #[error("stream `{stream}` is closed: it takes no more events")]
    StreamClosed {
        /// The stream appended to.
        stream: StreamId,
    },
    /// The stream's events were moved to the archive (see
    /// [`crate::EventStore::archive_stream`]): a plain read would find them missing. Read it with
    /// [`crate::EventStore::read_archived_stream_data`] or load it with
    /// [`crate::Repository::load_archived`].
    #[error(
        "stream `{stream}` is archived: read it from the archive (Repository::load_archived, EventStore::read_archived_stream_data)"
    )]
    StreamArchived {
        /// The stream read.
        stream: StreamId,
    },
    /// A stream cannot be archived yet, or at all, as it stands.
    #[error("cannot archive stream `{stream}`: {reason}")]
    Archive {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: String,
    },
    /// The backend does not offer this operation.
    #[error("{backend} does not support {operation}")]
    Unsupported {
        /// The backend's type.
        backend: &'static str,
        /// What was asked of it.
        operation: &'static str,
    },
    /// The storage backend failed before anything was written.
    #[error("storage error: {0}")]
    Storage(#[source] BoxError),
}

impl Error {
    /// Wraps a backend error.
    pub fn storage(error: impl Into<BoxError>) -> Self {
        Self::Storage(error.into())
    }

    /// Whether this is a version conflict (worth reloading and retrying).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// A rule of an aggregate that its state broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation(pub String);

impl InvariantViolation {
    /// A violation with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn source_suffix(source: Option<&str>) -> String {
    source.map(|s| format!(" from {s}")).unwrap_or_default()
}
