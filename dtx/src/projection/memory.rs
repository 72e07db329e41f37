//! The in-memory checkpoint store: the embedded default, with the contract of the PostgreSQL
//! one (checkpoint moves commit with the unit of work's other writes).

use super::checkpoint::{
    Advance, Checkpoint, CheckpointKey, CheckpointStore, Failure, Lease, ProjectionStatus,
    SkipRecord,
};
use crate::error::{Error, Result};
use crate::store::GlobalPosition;
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// Checkpoints in memory: the embedded default.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::projection::{CheckpointKey, CheckpointStore, MemoryCheckpointStore};
/// use std::time::Duration;
///
/// let store = MemoryCheckpointStore::new();
/// let key = CheckpointKey::new("order_summaries", 1);
/// let me = dtx::Uuid::new_v4();
/// let lease = store.acquire(&key, me, Duration::from_secs(10)).await?.expect("free");
/// assert!(lease.created);
/// assert!(store.acquire(&key, dtx::Uuid::new_v4(), Duration::from_secs(10)).await?.is_none());
/// # Ok::<(), dtx::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryCheckpointStore {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    checkpoints: BTreeMap<CheckpointKey, Checkpoint>,
    skips: Vec<SkipRecord>,
}

impl std::fmt::Debug for MemoryCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCheckpointStore")
            .field("checkpoints", &self.lock().checkpoints.len())
            .finish()
    }
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is checked first and then applied without fallible steps.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn order(&self) -> (u8, usize) {
        (rank::CHECKPOINTS, address(&self.inner))
    }
}

fn lease_until(lease: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

/// A new checkpoint: at the start of the feed, running, held by no one.
fn at_start(key: &CheckpointKey) -> Checkpoint {
    Checkpoint {
        key: key.clone(),
        position: GlobalPosition::START,
        status: ProjectionStatus::Running,
        applied: 0,
        failure: None,
        owner: None,
        lease_until: None,
        updated_at: Utc::now(),
    }
}

fn not_found(key: &CheckpointKey) -> Error {
    Error::Projection {
        name: key.name.clone(),
        reason: format!("no checkpoint {key}"),
    }
}

/// A checkpoint move, checked at commit.
struct Move {
    key: CheckpointKey,
    owner: Option<Uuid>,
    from: Option<GlobalPosition>,
    to: GlobalPosition,
    applied: Option<u64>,
    lease: Duration,
}

impl Move {
    fn of(key: &CheckpointKey, step: &Advance) -> Self {
        Self {
            key: key.clone(),
            owner: Some(step.owner),
            from: Some(step.from),
            to: step.to,
            applied: Some(step.applied),
            lease: step.lease,
        }
    }
}

impl State {
    /// Checks that `owner` holds `key` at `from`.
    fn check(&self, m: &Move) -> Result<()> {
        let current = self
            .checkpoints
            .get(&m.key)
            .ok_or_else(|| not_found(&m.key))?;
        if let Some(owner) = m.owner
            && current.owner != Some(owner)
        {
            return Err(Error::Projection {
                name: m.key.name.clone(),
                reason: format!("the lease on {} was lost to another runner", m.key),
            });
        }
        if let Some(from) = m.from
            && current.position != from
        {
            return Err(Error::Projection {
                name: m.key.name.clone(),
                reason: format!(
                    "checkpoint {} moved to {} (reset or skipped) while a batch from {from} was applied",
                    m.key, current.position
                ),
            });
        }
        Ok(())
    }

    fn apply(&mut self, m: &Move) {
        if let Some(current) = self.checkpoints.get_mut(&m.key) {
            current.position = m.to;
            current.status = ProjectionStatus::Running;
            current.failure = None;
            current.applied = match m.applied {
                Some(applied) => current.applied + applied,
                None => 0,
            };
            if m.owner.is_some() {
                current.lease_until = Some(lease_until(m.lease));
            }
            current.updated_at = Utc::now();
        }
    }
}

struct Staged {
    store: MemoryCheckpointStore,
    moves: Vec<Move>,
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        self.store.order()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> Result<Box<dyn Prepared + '_>> {
        let state = self.store.lock();
        for m in &self.moves {
            state.check(m)?;
        }
        Ok(Box::new(Commit {
            state,
            moves: std::mem::take(&mut self.moves),
        }))
    }
}

struct Commit<'a> {
    state: MutexGuard<'a, State>,
    moves: Vec<Move>,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        for m in std::mem::take(&mut self.moves) {
            self.state.apply(&m);
        }
    }
}

impl MemoryCheckpointStore {
    fn stage(&self, uow: &mut dyn UnitOfWork, m: Move) -> Result<()> {
        let uow = MemoryUnitOfWork::of(uow)?;
        uow.part(self.order(), || Staged {
            store: self.clone(),
            moves: Vec::new(),
        })
        .moves
        .push(m);
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>> {
        Ok(Box::new(MemoryUnitOfWork::new()))
    }

    async fn acquire(
        &self,
        key: &CheckpointKey,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        let mut state = self.lock();
        let now = Utc::now();
        let mut created = false;
        let checkpoint = state.checkpoints.entry(key.clone()).or_insert_with(|| {
            created = true;
            at_start(key)
        });
        let free = checkpoint.owner.is_none()
            || checkpoint.owner == Some(owner)
            || checkpoint.lease_until.is_none_or(|until| until <= now);
        if !free {
            return Ok(None);
        }
        checkpoint.owner = Some(owner);
        checkpoint.lease_until = Some(lease_until(lease));
        Ok(Some(Lease {
            checkpoint: checkpoint.clone(),
            created,
        }))
    }

    async fn advance_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &CheckpointKey,
        step: &Advance,
    ) -> Result<()> {
        let m = Move::of(key, step);
        // Fail early when the move cannot apply; the commit checks again.
        self.lock().check(&m)?;
        self.stage(uow, m)
    }

    async fn advance(&self, key: &CheckpointKey, step: &Advance) -> Result<()> {
        let m = Move::of(key, step);
        let mut state = self.lock();
        state.check(&m)?;
        state.apply(&m);
        Ok(())
    }

    async fn fail(&self, key: &CheckpointKey, owner: Uuid, failure: &Failure) -> Result<()> {
        let mut state = self.lock();
        let current = state
            .checkpoints
            .get_mut(key)
            .ok_or_else(|| not_found(key))?;
        if current.owner != Some(owner) {
            return Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("the lease on {key} was lost to another runner"),
            });
        }
        current.status = ProjectionStatus::Failed;
        current.failure = Some(failure.clone());
        current.updated_at = Utc::now();
        Ok(())
    }

    async fn release(&self, key: &CheckpointKey, owner: Uuid) -> Result<()> {
        let mut state = self.lock();
        if let Some(current) = state.checkpoints.get_mut(key)
            && current.owner == Some(owner)
        {
            current.owner = None;
            current.lease_until = None;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        Ok(self.lock().checkpoints.values().cloned().collect())
    }

    async fn skip(&self, key: &CheckpointKey, reason: &str) -> Result<SkipRecord> {
        let mut state = self.lock();
        let current = state
            .checkpoints
            .get_mut(key)
            .ok_or_else(|| not_found(key))?;
        let (ProjectionStatus::Failed, Some(failure)) = (current.status, current.failure.take())
        else {
            return Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("{key} has not failed: there is nothing to skip"),
            });
        };
        current.position = failure.position;
        current.status = ProjectionStatus::Running;
        current.updated_at = Utc::now();
        let record = SkipRecord {
            name: key.name.clone(),
            version: key.version,
            partition: key.partition,
            failure,
            reason: reason.to_owned(),
            skipped_at: Utc::now(),
        };
        state.skips.push(record.clone());
        Ok(record)
    }

    async fn resume(&self, key: &CheckpointKey) -> Result<()> {
        let mut state = self.lock();
        let current = state
            .checkpoints
            .get_mut(key)
            .ok_or_else(|| not_found(key))?;
        if current.status != ProjectionStatus::Failed {
            return Err(Error::Projection {
                name: key.name.clone(),
                reason: format!("{key} has not failed: there is nothing to resume"),
            });
        }
        current.status = ProjectionStatus::Running;
        current.failure = None;
        current.updated_at = Utc::now();
        Ok(())
    }

    async fn skips(&self, name: &str) -> Result<Vec<SkipRecord>> {
        Ok(self
            .lock()
            .skips
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect())
    }

    async fn reset_in(&self, uow: &mut dyn UnitOfWork, key: &CheckpointKey) -> Result<()> {
        self.lock()
            .checkpoints
            .entry(key.clone())
            .or_insert_with(|| at_start(key));
        self.stage(
            uow,
            Move {
                key: key.clone(),
                owner: None,
                from: None,
                to: GlobalPosition::START,
                applied: None,
                lease: Duration::ZERO,
            },
        )
    }
}
