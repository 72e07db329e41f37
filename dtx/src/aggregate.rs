//! Event-sourced aggregates: the [`Aggregate`] trait, typed ids, [`AggregateRoot`] and the
//! snapshotting [`Repository`].

use crate::config::DtxConfig;
pub use crate::error::InvariantViolation;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, EventMetadata};
use crate::store::{
    AppendResult, EventStore, ExpectedVersion, NewEvent, SharedEventStore, Snapshot, StreamId,
};
use crate::uow::UnitOfWork;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;
use tracing::Instrument;
use uuid::Uuid;

/// A typed aggregate id: shown in stream ids, parsed back, compared and hashed.
///
/// [`Id<A>`] is the ready-made choice (a UUID v7 that cannot be mixed up between aggregate
/// types); any newtype with `Display`, `FromStr`, `Clone`, `Eq` and `Hash` can implement it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as an aggregate id",
    note = "use `dtx::Id<MyAggregate>`, or implement `dtx::AggregateId` for a newtype with `Display`, `FromStr`, `Clone`, `Eq` and `Hash`"
)]
pub trait AggregateId:
    fmt::Display + fmt::Debug + Clone + Eq + Hash + Send + Sync + 'static
{
    /// Parses an id back from its `Display` form.
    fn parse_id(text: &str) -> Option<Self>;
}

/// A UUID v7 aggregate id that is typed by its aggregate: an `Id<Order>` is not an `Id<Invoice>`.
///
/// ```
/// # use dtx::Id;
/// struct Order;
/// let id = Id::<Order>::new();
/// let parsed: Id<Order> = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// ```
pub struct Id<A: ?Sized> {
    uuid: Uuid,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: ?Sized> Id<A> {
    /// A new, time-ordered id (UUID v7).
    #[allow(
        clippy::new_without_default,
        reason = "a fresh random id is not a default"
    )]
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self {
            uuid,
            _aggregate: PhantomData,
        }
    }

    /// The UUID inside.
    pub const fn uuid(&self) -> Uuid {
        self.uuid
    }
}

impl<A: ?Sized> Default for Id<A> {
    /// The nil id; [`AggregateRoot`]s get their real id from [`Aggregate::init`].
    fn default() -> Self {
        Self::from_uuid(Uuid::nil())
    }
}
impl<A: ?Sized> Clone for Id<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: ?Sized> Copy for Id<A> {}
impl<A: ?Sized> PartialEq for Id<A> {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
    }
}
impl<A: ?Sized> Eq for Id<A> {}
impl<A: ?Sized> PartialOrd for Id<A> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<A: ?Sized> Ord for Id<A> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uuid.cmp(&other.uuid)
    }
}
impl<A: ?Sized> Hash for Id<A> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uuid.hash(state);
    }
}
impl<A: ?Sized> fmt::Display for Id<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uuid, f)
    }
}
impl<A: ?Sized> fmt::Debug for Id<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.uuid)
    }
}
impl<A: ?Sized> FromStr for Id<A> {
    type Err = uuid::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self::from_uuid)
    }
}
impl<A: ?Sized> From<Uuid> for Id<A> {
    fn from(uuid: Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}
impl<A: ?Sized> Serialize for Id<A> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.uuid.serialize(s)
    }
}
impl<'de, A: ?Sized> Deserialize<'de> for Id<A> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Uuid::deserialize(d).map(Self::from_uuid)
    }
}
impl<A: ?Sized + 'static> AggregateId for Id<A> {
    fn parse_id(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

/// Applies one event type to an aggregate's state. `#[derive(Aggregate)]` requires one impl per
/// variant of the aggregate's event enum.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not apply `{E}` events",
    label = "a variant of this aggregate's event enum wraps `{E}`",
    note = "add `impl dtx::Apply<{E}> for {Self} {{ fn apply(&mut self, event: &{E}) {{ .. }} }}`"
)]
pub trait Apply<E> {
    /// Folds the event into the state. Must not fail: validation belongs in command handlers
    /// and invariants.
    fn apply(&mut self, event: &E);
}

/// When the [`Repository`] stores a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Every `EVENT_STORE_SNAPSHOT_FREQUENCY` events (default 100).
    Configured,
    /// Every N events.
    Every(u64),
    /// Never.
    Never,
}

/// An event-sourced aggregate. Implement it with `#[derive(Aggregate)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    note = "add `#[derive(dtx::Aggregate)]` and `#[aggregate(event = MyEvent)]` to `{Self}`"
)]
pub trait Aggregate: Clone + Send + Sync + 'static {
    /// The typed id.
    type Id: AggregateId;
    /// The event enum.
    type Event: DomainEvent;
    /// The aggregate type name, the prefix of its stream ids.
    const TYPE: &'static str;
    /// When to snapshot.
    const SNAPSHOT_POLICY: SnapshotPolicy;
    /// A hash of the state's shape; snapshots stored under another hash are ignored.
    const STATE_SCHEMA: u64;

    /// A fresh aggregate with this id and every other field at its default.
    fn init(id: Self::Id) -> Self;
    /// The aggregate's id.
    fn id(&self) -> &Self::Id;
    /// Folds one event into the state.
    fn apply_event(&mut self, event: &Self::Event);
    /// Checks the aggregate's invariants after events were applied.
    fn check_invariants(&self) -> std::result::Result<(), InvariantViolation> {
        Ok(())
    }
    /// Serialises the state for a snapshot (`None` when the aggregate has no snapshots).
    fn snapshot(&self) -> Option<std::result::Result<Box<RawValue>, serde_json::Error>> {
        None
    }
    /// Restores a state from a snapshot (`None` when the aggregate has no snapshots).
    fn restore(state: &RawValue) -> Option<std::result::Result<Self, serde_json::Error>> {
        let _ = state;
        None
    }

    /// The stream id of the aggregate with this id: `{TYPE}-{id}`.
    fn stream_id(id: &Self::Id) -> Result<StreamId> {
        StreamId::new(format!("{}-{id}", Self::TYPE))
    }
}

/// An aggregate's state with its stored version and the events recorded but not yet saved.
#[derive(Debug, Clone)]
pub struct AggregateRoot<A: Aggregate> {
    state: A,
    version: u64,
    pending: Vec<A::Event>,
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new aggregate that has no stored events.
    pub fn new(id: A::Id) -> Self {
        Self::from_state(A::init(id), 0)
    }

    /// Wraps a state at a stored version.
    pub fn from_state(state: A, version: u64) -> Self {
        Self {
            state,
            version,
            pending: Vec::new(),
        }
    }

    /// The current state (including recorded, unsaved events).
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The aggregate's id.
    pub fn id(&self) -> &A::Id {
        self.state.id()
    }

    /// The stored version this state was loaded at (0 = not stored yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Events recorded but not saved yet.
    pub fn pending(&self) -> &[A::Event] {
        &self.pending
    }

    /// Whether this aggregate has never been stored.
    pub fn is_new(&self) -> bool {
        self.version == 0 && self.pending.is_empty()
    }

    /// Applies events and checks the invariants. On a violation the state is left as it was,
    /// nothing is recorded, and [`Error::Invariant`] names the aggregate.
    pub fn record<E>(&mut self, events: impl IntoIterator<Item = E>) -> Result<()>
    where
        E: Into<A::Event>,
    {
        let events: Vec<A::Event> = events.into_iter().map(Into::into).collect();
        if events.is_empty() {
            return Ok(());
        }
        let mut next = self.state.clone();
        for event in &events {
            next.apply_event(event);
        }
        next.check_invariants()
            .map_err(|violation| Error::Invariant {
                aggregate: A::TYPE,
                id: self.state.id().to_string(),
                violation,
            })?;
        self.state = next;
        self.pending.extend(events);
        Ok(())
    }

    /// Runs a command handler on the state and records the events it returns.
    ///
    /// The handler's own error comes back as [`HandleError::Domain`]; an invariant violation
    /// as [`HandleError::Dtx`]. Nothing is recorded in either case.
    pub fn handle<T, D>(
        &mut self,
        handler: impl FnOnce(&A) -> std::result::Result<T, D>,
    ) -> std::result::Result<(), HandleError<D>>
    where
        T: IntoIterator,
        T::Item: Into<A::Event>,
    {
        let events = handler(&self.state).map_err(HandleError::Domain)?;
        self.record(events).map_err(HandleError::Dtx)
    }
}

/// The error of [`AggregateRoot::handle`]: the handler's domain error or a dtx error.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<D> {
    /// The command handler rejected the command.
    #[error("command rejected: {0}")]
    Domain(D),
    /// dtx rejected the events (for example an invariant violation).
    #[error(transparent)]
    Dtx(#[from] Error),
}

/// Loads and saves aggregates of one type: snapshot + later events on load, append with the
/// loaded version (optimistic concurrency) and snapshot every N events on save.
pub struct Repository<A: Aggregate> {
    store: SharedEventStore,
    snapshot_every: Option<u64>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            snapshot_every: self.snapshot_every,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("snapshot_every", &self.snapshot_every)
            .finish_non_exhaustive()
    }
}

const READ_PAGE: usize = 4096;

impl<A: Aggregate> Repository<A> {
    /// A repository over a store, with the default configuration.
    pub fn new(store: impl EventStore) -> Self {
        Self::shared(Arc::new(store), &DtxConfig::default())
    }

    /// A repository over a shared store, with a configuration (snapshot frequency).
    pub fn shared(store: SharedEventStore, config: &DtxConfig) -> Self {
        let snapshot_every = match A::SNAPSHOT_POLICY {
            SnapshotPolicy::Configured => Some(config.snapshot_frequency),
            SnapshotPolicy::Every(n) => Some(n),
            SnapshotPolicy::Never => None,
        }
        .filter(|&n| n > 0);
        Self {
            store,
            snapshot_every,
            _aggregate: PhantomData,
        }
    }

    /// The store behind this repository.
    pub fn store(&self) -> &SharedEventStore {
        &self.store
    }

    /// Loads an aggregate: its latest usable snapshot plus the events after it, or a fresh
    /// aggregate at version 0 when nothing is stored.
    ///
    /// A snapshot stored under another state-schema hash, or one that does not decode, is
    /// ignored (with a warning for the latter) and the stream is replayed from the start.
    pub async fn load(&self, id: &A::Id) -> Result<AggregateRoot<A>> {
        let stream = A::stream_id(id)?;
        let span = tracing::debug_span!(
            "dtx.load",
            aggregate = A::TYPE,
            stream = %stream,
            version = tracing::field::Empty,
        );
        let root = self
            .load_stream(id, &stream, None, false)
            .instrument(span.clone())
            .await?;
        span.record("version", root.version);
        Ok(root)
    }

    /// Loads an aggregate whose stream may be archived (see [`EventStore::archive_stream`]):
    /// like [`Repository::load`], reading the events from the archive as well as the hot
    /// store. [`Repository::load`] of an archived stream is [`Error::StreamArchived`]. The
    /// stream is closed, so the aggregate loads to be read: saving new events to it is
    /// [`Error::StreamClosed`].
    pub async fn load_archived(&self, id: &A::Id) -> Result<AggregateRoot<A>> {
        let stream = A::stream_id(id)?;
        let span = tracing::debug_span!("dtx.load", aggregate = A::TYPE, stream = %stream, archived = true);
        self.load_stream(id, &stream, None, true)
            .instrument(span)
            .await
    }

    /// [`Repository::load`] as `uow` sees the aggregate: with the events saved in it and not
    /// committed yet.
    pub async fn load_in(&self, uow: &mut dyn UnitOfWork, id: &A::Id) -> Result<AggregateRoot<A>> {
        let stream = A::stream_id(id)?;
        let span = tracing::debug_span!("dtx.load", aggregate = A::TYPE, stream = %stream);
        self.load_stream(id, &stream, Some(uow), false)
            .instrument(span)
            .await
    }

    async fn load_stream(
        &self,
        id: &A::Id,
        stream: &StreamId,
        mut uow: Option<&mut dyn UnitOfWork>,
        archived: bool,
    ) -> Result<AggregateRoot<A>> {
        let stream = stream.clone();
        let mut root = match self.usable_snapshot(&stream).await? {
            Some((state, version)) => AggregateRoot::from_state(state, version),
            None => AggregateRoot::new(id.clone()),
        };
        loop {
            let from = root.version + 1;
            let events = match uow.as_deref_mut() {
                Some(uow) => {
                    self.store
                        .read_stream_data_in(uow, &stream, from, READ_PAGE)
                        .await?
                }
                None if archived => {
                    self.store
                        .read_archived_stream_data(&stream, from, READ_PAGE)
                        .await?
                }
                None => {
                    self.store
                        .read_stream_data(&stream, from, READ_PAGE)
                        .await?
                }
            };
            let page = events.len();
            // A missing version (a lost row) must not load as if the stream were complete.
            crate::store::check_contiguous(&stream, from, events.iter().map(|e| e.version))?;
            for recorded in &events {
                let event: A::Event = recorded.decode(&stream)?;
                root.state.apply_event(&event);
                root.version = recorded.version;
            }
            if page < READ_PAGE {
                break;
            }
        }
        Ok(root)
    }

    /// Like [`Repository::load`], but `None` when the aggregate has no stored events.
    pub async fn find(&self, id: &A::Id) -> Result<Option<AggregateRoot<A>>> {
        let root = self.load(id).await?;
        Ok((root.version > 0).then_some(root))
    }

    async fn usable_snapshot(&self, stream: &StreamId) -> Result<Option<(A, u64)>> {
        if self.snapshot_every.is_none() {
            return Ok(None);
        }
        let Some(snapshot) = self.store.load_snapshot(stream).await? else {
            return Ok(None);
        };
        if snapshot.schema_hash != A::STATE_SCHEMA || snapshot.aggregate_type != A::TYPE {
            tracing::debug!(stream = %stream, "snapshot has another state schema; replaying");
            return Ok(None);
        }
        match A::restore(&snapshot.state) {
            Some(Ok(state)) => Ok(Some((state, snapshot.version))),
            Some(Err(error)) => {
                tracing::warn!(stream = %stream, version = snapshot.version, %error, "ignoring undecodable snapshot; replaying the stream");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Appends the recorded events (expecting the loaded version) and, when a multiple of the
    /// snapshot frequency was crossed, stores a snapshot.
    ///
    /// On [`Error::Conflict`] nothing was stored; reload and run the command again.
    pub async fn save(&self, root: &mut AggregateRoot<A>) -> Result<Option<AppendResult>> {
        self.save_with(root, EventMetadata::default()).await
    }

    /// [`Repository::save`] with metadata (correlation, causation, traceparent) for every event.
    /// Without a `traceparent`, the events get the current span's (see [`crate::telemetry`]).
    pub async fn save_with(
        &self,
        root: &mut AggregateRoot<A>,
        metadata: EventMetadata,
    ) -> Result<Option<AppendResult>> {
        self.save_to(None, root, metadata).await
    }

    /// [`Repository::save`] as part of a unit of work: the events (and a snapshot, when one is
    /// due) commit with the unit of work's other writes.
    ///
    /// On [`Error::Conflict`] roll the unit of work back and run it again.
    pub async fn save_in(
        &self,
        uow: &mut dyn UnitOfWork,
        root: &mut AggregateRoot<A>,
    ) -> Result<Option<AppendResult>> {
        self.save_to(Some(uow), root, EventMetadata::default())
            .await
    }

    /// [`Repository::save_in`] with metadata for every event.
    pub async fn save_in_with(
        &self,
        uow: &mut dyn UnitOfWork,
        root: &mut AggregateRoot<A>,
        metadata: EventMetadata,
    ) -> Result<Option<AppendResult>> {
        self.save_to(Some(uow), root, metadata).await
    }

    async fn save_to(
        &self,
        mut uow: Option<&mut dyn UnitOfWork>,
        root: &mut AggregateRoot<A>,
        mut metadata: EventMetadata,
    ) -> Result<Option<AppendResult>> {
        if root.pending.is_empty() {
            return Ok(None);
        }
        if metadata.traceparent.is_none() {
            metadata.traceparent = crate::telemetry::current_traceparent();
        }
        let stream = A::stream_id(root.id())?;
        let events = root
            .pending
            .iter()
            .map(|e| NewEvent::encode(&stream, e, metadata.clone()))
            .collect::<Result<Vec<_>>>()?;
        let expected = if root.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(root.version)
        };
        let count = events.len();
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            "dtx.append",
            aggregate = A::TYPE,
            stream = %stream,
            expected = %expected,
            events = count,
        );
        let append = match uow.as_deref_mut() {
            Some(uow) => self.store.append_in(uow, &stream, expected, events),
            None => self.store.append(&stream, expected, events),
        };
        let result = match append.instrument(span).await {
            Ok(result) => result,
            Err(error) => {
                if matches!(error, Error::Conflict { .. }) {
                    crate::telemetry::record_append_conflict(A::TYPE);
                }
                return Err(error);
            }
        };
        crate::telemetry::record_append(A::TYPE, count, started.elapsed());
        let before = root.version;
        root.version = result.last_version;
        root.pending.clear();
        if let Some(every) = self.snapshot_every
            && before / every != root.version / every
        {
            self.snapshot(uow, &stream, root).await?;
        }
        Ok(Some(result))
    }

    /// Stores a snapshot. Outside a unit of work a failure is only logged (the events are
    /// committed; it costs a longer replay later); inside one it is returned, because it may
    /// have aborted the transaction.
    async fn snapshot(
        &self,
        uow: Option<&mut dyn UnitOfWork>,
        stream: &StreamId,
        root: &AggregateRoot<A>,
    ) -> Result<()> {
        let state = match root.state.snapshot() {
            Some(Ok(state)) => state,
            Some(Err(error)) => {
                tracing::warn!(stream = %stream, %error, "cannot serialise snapshot; skipped");
                return Ok(());
            }
            None => return Ok(()),
        };
        let snapshot = Snapshot {
            aggregate_type: A::TYPE.to_owned(),
            version: root.version,
            schema_hash: A::STATE_SCHEMA,
            state,
        };
        if let Some(uow) = uow {
            return self.store.save_snapshot_in(uow, stream, snapshot).await;
        }
        if let Err(error) = self.store.save_snapshot(stream, snapshot).await {
            tracing::warn!(stream = %stream, %error, "cannot store snapshot; skipped");
        }
        Ok(())
    }
}
