use super::{
    AppendResult, EventStore, ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent, Snapshot,
    StoreLimits, StreamId,
};
use crate::error::{Error, Result};
use async_trait::async_trait;
use chrono::Utc;
use std::collections::HashMap;
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
}

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    event_ids: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
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

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.limits.check(stream, &events)?;
        let mut inner = self.lock();

        let stored: Vec<usize> = events
            .iter()
            .filter_map(|e| inner.event_ids.get(&e.event_id).copied())
            .collect();
        if let Some(&first) = stored.first() {
            let all_here = stored.len() == events.len()
                && stored.iter().all(|&i| inner.log[i].stream_id == *stream);
            if all_here {
                let mut versions: Vec<&RecordedEvent> =
                    stored.iter().map(|&i| &inner.log[i]).collect();
                versions.sort_by_key(|e| e.version);
                return Ok(AppendResult {
                    first_version: versions[0].version,
                    last_version: versions[versions.len() - 1].version,
                    positions: versions.iter().map(|e| e.position).collect(),
                    deduplicated: true,
                });
            }
            let event = &inner.log[first];
            return Err(Error::DuplicateEvent {
                stream: stream.clone(),
                event_id: event.event_id,
                stored_in: event.stream_id.to_string(),
            });
        }

        let current = inner.streams.get(stream).map_or(0, |s| s.len() as u64);
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
        let now = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        for (offset, event) in (1u64..).zip(events) {
            let index = inner.log.len();
            let sequence = index as u64 + 1;
            let position = GlobalPosition {
                commit: sequence,
                sequence,
            };
            positions.push(position);
            inner.event_ids.insert(event.event_id, index);
            inner.streams.entry(stream.clone()).or_default().push(index);
            inner.log.push(RecordedEvent {
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
        Ok(AppendResult {
            first_version: current + 1,
            last_version: current + positions.len() as u64,
            positions,
            deduplicated: false,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(indexes
            .iter()
            .skip(skip)
            .take(max_count)
            .map(|&i| inner.log[i].clone())
            .collect())
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let inner = self.lock();
        let start = usize::try_from(after.sequence).unwrap_or(usize::MAX);
        Ok(inner
            .log
            .iter()
            .skip(start)
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map_or(0, |s| s.len() as u64))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let mut inner = self.lock();
        let newer = inner
            .snapshots
            .get(stream)
            .is_none_or(|s| s.version < snapshot.version || s.schema_hash != snapshot.schema_hash);
        if newer {
            inner.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}
