use super::{
    AppendResult, EventData, EventStore, ExpectedVersion, FeedWaker, GlobalPosition, NewEvent,
    RecordedEvent, Snapshot, StoreLimits, StreamId, StreamState, WakeTicket,
};
use crate::error::{Error, Result};
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The embedded, in-memory event store: the default backend for examples and unit tests.
///
/// Appends are atomic and globally ordered under one lock, so its feed has no gaps by
/// construction. Clones share the same data.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::{EventStore, ExpectedVersion, MemoryEventStore, NewEvent, StreamId};
///
/// let store = MemoryEventStore::new();
/// let stream = StreamId::new("Order-1")?;
/// let event = NewEvent::from_json("OrderPlaced", &serde_json::json!({"total": 5})).unwrap();
/// let stored = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
/// assert_eq!(stored.last_version, 1);
/// # Ok::<(), dtx::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryEventStore {
    inner: Arc<Mutex<Inner>>,
    limits: StoreLimits,
    outbox: Option<crate::outbox::MemoryOutbox>,
    personal: crate::personal::PersonalData,
}

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    event_ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
    /// Closed streams, by their state ([`StreamState::Closed`] or [`StreamState::Archived`]).
    /// Archived events stay in `log` (the feed yields them); only reads of their stream refuse.
    closed: HashMap<StreamId, StreamState>,
    /// The length of `log`, for the readers waiting for new events.
    appended: Appended,
}

/// Tells waiting feed readers the log's length after each write.
struct Appended(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Appended {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

/// The [`FeedWaker`] of a [`MemoryEventStore`]: always armed, woken by every write.
struct MemoryFeedWaker(Arc<tokio::sync::watch::Sender<u64>>);

#[async_trait]
impl FeedWaker for MemoryFeedWaker {
    fn ticket(&self) -> WakeTicket {
        WakeTicket {
            epoch: *self.0.borrow(),
            armed: true,
        }
    }

    async fn wait(&self, ticket: WakeTicket, timeout: std::time::Duration) {
        let mut changes = self.0.subscribe();
        let moved = changes.wait_for(|&length| length != ticket.epoch);
        let _ = tokio::time::timeout(timeout, moved).await;
    }
}

impl MemoryEventStore {
    /// An empty store with default [`StoreLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: StoreLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Writes an outbox message for every appended event into `outbox`, atomically with the
    /// append (under the same lock), like `EVENT_STORE_ENABLE_OUTBOX` on PostgreSQL.
    #[must_use]
    pub fn with_outbox(mut self, outbox: crate::outbox::MemoryOutbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The outbox appends write to, if enabled.
    pub fn outbox(&self) -> Option<&crate::outbox::MemoryOutbox> {
        self.outbox.as_ref()
    }

    /// Keeps the subjects' keys of personal data (see [`crate::personal`]) with `personal`:
    /// another key store, or a master key that wraps them. By default they are kept in memory
    /// with the store, unwrapped.
    #[must_use]
    pub fn with_personal_data(mut self, personal: crate::personal::PersonalData) -> Self {
        self.personal = personal;
        self
    }

    /// What seals and opens this store's personal values: for a consumer in the same process
    /// that opens the sealed payloads a relay published ([`PersonalData::open_json`](crate::personal::PersonalData::open_json)).
    pub fn personal_data(&self) -> &crate::personal::PersonalData {
        &self.personal
    }

    /// Every payload and snapshot state as the store holds it (personal values sealed): what
    /// an audit searches for values in clear.
    pub fn stored_json(&self) -> Vec<String> {
        let inner = self.lock();
        let events = inner.log.iter().map(|e| e.data.to_string());
        let snapshots = inner.snapshots.values().map(|s| s.state.get().to_owned());
        events.chain(snapshots).collect()
    }

    /// Where this store stands in a unit of work's lock order.
    fn order(&self) -> (u8, usize) {
        (rank::EVENTS, address(&self.inner))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-written: every mutation
        // below is checked first and then applied without fallible steps.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryEventStore")
            .field("events", &inner.log.len())
            .field("streams", &inner.streams.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// `Some` when every event id is already stored in this stream (a retry: nothing to do);
    /// an error when some id is stored elsewhere or only some are stored.
    fn stored(&self, stream: &StreamId, events: &[NewEvent]) -> Result<Option<AppendResult>> {
        let stored: Vec<usize> = events
            .iter()
            .filter_map(|e| self.event_ids.get(&e.event_id).copied())
            .collect();
        let Some(&first) = stored.first() else {
            return Ok(None);
        };
        let all_here = stored.len() == events.len()
            && stored.iter().all(|&i| self.log[i].stream_id == *stream);
        if all_here {
            let mut versions: Vec<&RecordedEvent> = stored.iter().map(|&i| &self.log[i]).collect();
            versions.sort_by_key(|e| e.version);
            return Ok(Some(AppendResult {
                first_version: versions[0].version,
                last_version: versions[versions.len() - 1].version,
                positions: versions.iter().map(|e| e.position).collect(),
                deduplicated: true,
            }));
        }
        let event = &self.log[first];
        Err(Error::DuplicateEvent {
            stream: stream.clone(),
            event_id: event.event_id,
            stored_in: event.stream_id.to_string(),
        })
    }

    fn version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |s| s.len() as u64)
    }

    /// [`Error::StreamClosed`] when the stream is closed.
    fn check_open(&self, stream: &StreamId) -> Result<()> {
        if self.closed.contains_key(stream) {
            return Err(Error::StreamClosed {
                stream: stream.clone(),
            });
        }
        Ok(())
    }

    /// [`Error::StreamArchived`] when the stream's events are archived.
    fn check_hot(&self, stream: &StreamId) -> Result<()> {
        if let Some(StreamState::Archived { .. }) = self.closed.get(stream) {
            return Err(Error::StreamArchived {
                stream: stream.clone(),
            });
        }
        Ok(())
    }

    /// Up to `max_count` events of a stream from `from_version`, archived or not.
    fn events_of(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Vec<RecordedEvent> {
        let Some(indexes) = self.streams.get(stream) else {
            return Vec::new();
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        indexes
            .iter()
            .skip(skip)
            .take(max_count)
            .map(|&i| self.log[i].clone())
            .collect()
    }

    /// Writes checked events after the stream's current version.
    fn write(&mut self, stream: &StreamId, events: Vec<NewEvent>) -> AppendResult {
        let current = self.version(stream);
        let now = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        for (offset, event) in (1u64..).zip(events) {
            let index = self.log.len();
            let sequence = index as u64 + 1;
            let position = GlobalPosition {
                commit: sequence,
                sequence,
            };
            positions.push(position);
            self.event_ids.insert(event.event_id, index);
            self.streams.entry(stream.clone()).or_default().push(index);
            self.log.push(RecordedEvent {
                stream_id: stream.clone(),
                version: current + offset,
                position,
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                data: Box::<str>::from(event.data),
                metadata: event.metadata,
                recorded_at: now,
            });
        }
        self.appended.0.send_replace(self.log.len() as u64);
        AppendResult {
            first_version: current + 1,
            last_version: current + positions.len() as u64,
            positions,
            deduplicated: false,
        }
    }

    fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) {
        let newer = self
            .snapshots
            .get(stream)
            .is_none_or(|s| s.version < snapshot.version || s.schema_hash != snapshot.schema_hash);
        if newer {
            self.snapshots.insert(stream.clone(), snapshot);
        }
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        let mut events = events;
        self.personal.seal_events(stream, &mut events).await?;
        let mut inner = self.lock();
        if let Some(retry) = inner.stored(stream, &events)? {
            return Ok(retry);
        }
        inner.check_open(stream)?;
        let current = inner.version(stream);
        if !expected.admits(current) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        if let Some(outbox) = &self.outbox {
            outbox.push_events(stream, current + 1, &events);
        }
        Ok(inner.write(stream, events))
    }

    async fn append_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        let mut events = events;
        self.personal.seal_events(stream, &mut events).await?;
        let uow = MemoryUnitOfWork::of(uow)?;
        let (committed, retry, open) = {
            let inner = self.lock();
            (
                inner.version(stream),
                inner.stored(stream, &events)?,
                inner.check_open(stream),
            )
        };
        let staged = uow.part(self.order(), || Staged::new(self.clone()));
        // Stored before in this stream: a retry, whatever the unit of work staged since.
        if let Some(retry) = retry {
            return Ok(retry);
        }
        open?;
        if let Some((event, other)) = events
            .iter()
            .find_map(|e| staged.stream_of(e.event_id).map(|s| (e, s)))
        {
            return Err(Error::DuplicateEvent {
                stream: stream.clone(),
                event_id: event.event_id,
                stored_in: other.to_string(),
            });
        }
        let current = staged.version(stream).unwrap_or(committed);
        if !expected.admits(current) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        let count = events.len() as u64;
        let published = self.outbox.is_some().then(|| events.clone());
        staged.appends.push(StagedAppend {
            stream: stream.clone(),
            base: current,
            events,
        });
        if let (Some(outbox), Some(events)) = (&self.outbox, published) {
            outbox.stage_events(uow, stream, current + 1, events);
        }
        Ok(AppendResult {
            first_version: current + 1,
            last_version: current + count,
            positions: Vec::new(),
            deduplicated: false,
        })
    }

    async fn read_stream_data_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        let uow = MemoryUnitOfWork::of(uow)?;
        let staged = uow.existing::<Staged>(self.order());
        let Some((base, staged)) = staged.and_then(|s| s.events_of(stream)) else {
            return self.read_stream_data(stream, from_version, max_count).await;
        };
        let mut events: Vec<EventData> = self
            .read_stream_data(stream, from_version, max_count)
            .await?
            .into_iter()
            .filter(|e| e.version <= base)
            .collect();
        let next = (base + 1).max(from_version);
        events.extend(
            staged
                .into_iter()
                .filter(|e| e.version >= next)
                .take(max_count.saturating_sub(events.len())),
        );
        self.personal.open_data(&mut events).await?;
        Ok(events)
    }

    async fn save_snapshot_in(
        &self,
        uow: &mut dyn UnitOfWork,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<()> {
        snapshot.check_storable(stream)?;
        let Some(snapshot) = self.seal_snapshot(stream, snapshot).await? else {
            return Ok(());
        };
        let uow = MemoryUnitOfWork::of(uow)?;
        uow.part(self.order(), || Staged::new(self.clone()))
            .snapshots
            .push((stream.clone(), snapshot));
        Ok(())
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut events = {
            let inner = self.lock();
            inner.check_hot(stream)?;
            inner.events_of(stream, from_version, max_count)
        };
        self.personal.open_events(&mut events).await?;
        Ok(events)
    }

    async fn read_archived_stream_data(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<EventData>> {
        let mut events = self.lock().events_of(stream, from_version, max_count);
        self.personal.open_events(&mut events).await?;
        Ok(events.into_iter().map(EventData::from).collect())
    }

    async fn close_stream(&self, stream: &StreamId) -> Result<u64> {
        let mut inner = self.lock();
        let version = inner.version(stream);
        inner
            .closed
            .entry(stream.clone())
            .or_insert(StreamState::Closed { version });
        tracing::debug!(stream = %stream, version, "stream closed");
        // Nothing is appended to a closed stream: its version is the one it was closed at.
        Ok(version)
    }

    async fn archive_stream(&self, stream: &StreamId) -> Result<u64> {
        let mut inner = self.lock();
        let events = inner.version(stream);
        match inner.closed.get_mut(stream) {
            None | Some(StreamState::Open) => Err(Error::Archive {
                stream: stream.clone(),
                reason: "it is not closed; close it first".to_owned(),
            }),
            Some(StreamState::Archived { .. }) => Ok(0),
            Some(state @ StreamState::Closed { .. }) => {
                *state = StreamState::Archived { version: events };
                tracing::debug!(stream = %stream, events, "stream archived");
                Ok(events)
            }
        }
    }

    async fn stream_state(&self, stream: &StreamId) -> Result<StreamState> {
        Ok(self
            .lock()
            .closed
            .get(stream)
            .copied()
            .unwrap_or(StreamState::Open))
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut events: Vec<RecordedEvent> = {
            let inner = self.lock();
            let start = usize::try_from(after.sequence).unwrap_or(usize::MAX);
            inner
                .log
                .iter()
                .skip(start)
                .take(max_count)
                .cloned()
                .collect()
        };
        self.personal.open_events(&mut events).await?;
        Ok(events)
    }

    fn feed_waker(&self) -> Option<Arc<dyn FeedWaker>> {
        let sender = Arc::clone(&self.lock().appended.0);
        Some(Arc::new(MemoryFeedWaker(sender)))
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map_or(0, |s| s.len() as u64))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let snapshot = self.lock().snapshots.get(stream).cloned();
        let Some(mut snapshot) = snapshot else {
            return Ok(None);
        };
        self.personal.open_snapshot(&mut snapshot).await?;
        Ok(Some(snapshot))
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        snapshot.check_storable(stream)?;
        let Some(snapshot) = self.seal_snapshot(stream, snapshot).await? else {
            return Ok(());
        };
        self.lock().save_snapshot(stream, snapshot);
        Ok(())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        self.personal.forget(subject).await
    }
}

impl MemoryEventStore {
    /// The snapshot with its personal values sealed; `None` when one names no subject (it is
    /// not stored rather than stored in clear).
    async fn seal_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<Option<Snapshot>> {
        let mut snapshot = snapshot;
        if self.personal.seal_snapshot(&mut snapshot).await? {
            return Ok(Some(snapshot));
        }
        tracing::warn!(stream = %stream, version = snapshot.version, "snapshot not stored: a personal value of the state names no data subject (make it with `Personal::of`)");
        Ok(None)
    }
}

/// The appends and snapshots a [`MemoryUnitOfWork`] holds for one store.
struct Staged {
    store: MemoryEventStore,
    appends: Vec<StagedAppend>,
    snapshots: Vec<(StreamId, Snapshot)>,
}

struct StagedAppend {
    stream: StreamId,
    /// The stream's version this append was decided on.
    base: u64,
    events: Vec<NewEvent>,
}

impl Staged {
    fn new(store: MemoryEventStore) -> Self {
        Self {
            store,
            appends: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    /// The stream's version after the staged appends, if it has any.
    fn version(&self, stream: &StreamId) -> Option<u64> {
        self.appends
            .iter()
            .rev()
            .find(|a| a.stream == *stream)
            .map(|a| a.base + a.events.len() as u64)
    }

    fn stream_of(&self, event_id: Uuid) -> Option<&StreamId> {
        self.appends
            .iter()
            .find(|a| a.events.iter().any(|e| e.event_id == event_id))
            .map(|a| &a.stream)
    }

    /// The committed version the staged events of a stream follow, and those events.
    fn events_of(&self, stream: &StreamId) -> Option<(u64, Vec<EventData>)> {
        let mut appends = self
            .appends
            .iter()
            .filter(|a| a.stream == *stream)
            .peekable();
        let base = appends.peek()?.base;
        let events = appends
            .flat_map(|a| {
                (a.base + 1..).zip(&a.events).map(|(version, e)| EventData {
                    version,
                    event_type: e.event_type.clone(),
                    schema_version: e.schema_version,
                    data: e.data.get().into(),
                })
            })
            .collect();
        Some((base, events))
    }
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        self.store.order()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> Result<Box<dyn Prepared + '_>> {
        let inner = self.store.lock();
        let mut checked: HashSet<&StreamId> = HashSet::new();
        for append in &self.appends {
            // The first append of a stream carries the version the unit of work read.
            if checked.insert(&append.stream) {
                inner.check_open(&append.stream)?;
                let actual = inner.version(&append.stream);
                if actual != append.base {
                    return Err(Error::Conflict {
                        stream: append.stream.clone(),
                        expected: ExpectedVersion::Exact(append.base),
                        actual,
                    });
                }
            }
            if let Some(event) = append
                .events
                .iter()
                .find_map(|e| inner.event_ids.get(&e.event_id).map(|&i| &inner.log[i]))
            {
                return Err(Error::DuplicateEvent {
                    stream: append.stream.clone(),
                    event_id: event.event_id,
                    stored_in: event.stream_id.to_string(),
                });
            }
        }
        Ok(Box::new(Commit {
            inner,
            appends: std::mem::take(&mut self.appends),
            snapshots: std::mem::take(&mut self.snapshots),
        }))
    }
}

struct Commit<'a> {
    inner: MutexGuard<'a, Inner>,
    appends: Vec<StagedAppend>,
    snapshots: Vec<(StreamId, Snapshot)>,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        for append in std::mem::take(&mut self.appends) {
            self.inner.write(&append.stream, append.events);
        }
        for (stream, snapshot) in std::mem::take(&mut self.snapshots) {
            self.inner.save_snapshot(&stream, snapshot);
        }
    }
}
