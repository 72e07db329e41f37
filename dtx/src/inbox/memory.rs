//! The in-memory inbox: the embedded default, with the contract of the PostgreSQL one (records,
//! dead letters and offsets commit with the unit of work's other writes).

use super::InboundMessage;
use super::store::{
    DeadLetter, DeadLetterStatus, InboxStore, OffsetAdvance, PartitionKey, PartitionOffset,
};
use crate::error::{Error, Result};
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// The inbox in memory: the embedded default.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::inbox::{InboundMessage, InboxStore, MemoryInbox};
///
/// let inbox = MemoryInbox::new();
/// let message = InboundMessage::new(dtx::Uuid::new_v4(), "PaymentTaken", b"{}".to_vec());
/// let mut uow = inbox.begin().await?;
/// assert!(inbox.record_in(uow.as_mut(), "payments", &message).await?);
/// uow.commit_boxed().await?;
/// assert!(inbox.contains("payments", message.message_id).await?);
/// # Ok::<(), dtx::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryInbox {
    inner: Arc<Mutex<State>>,
    tokens: Arc<AtomicU64>,
}

type MessageKey = (String, Uuid);

#[derive(Default)]
struct State {
    received: HashMap<MessageKey, DateTime<Utc>>,
    /// Records staged by a unit of work not yet committed, by its token.
    reserved: HashMap<MessageKey, u64>,
    dead: BTreeMap<MessageKey, DeadLetter>,
    partitions: BTreeMap<PartitionKey, PartitionOffset>,
}

impl std::fmt::Debug for MemoryInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryInbox")
            .field("received", &state.received.len())
            .field("dead", &state.dead.len())
            .finish()
    }
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records [`InboxStore::purge`] would delete with `older_than` (received before
    /// `now - older_than`).
    pub fn received_older_than(&self, older_than: Duration) -> usize {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        self.lock()
            .received
            .values()
            .filter(|at| **at < cutoff)
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is checked first and then applied without fallible steps.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn order(&self) -> (u8, usize) {
        (rank::INBOX, address(&self.inner))
    }

    fn staged<'u>(&self, uow: &'u mut dyn UnitOfWork) -> Result<&'u mut Staged> {
        let uow = MemoryUnitOfWork::of(uow)?;
        Ok(uow.part(self.order(), || Staged {
            inbox: self.clone(),
            token: self.tokens.fetch_add(1, Ordering::Relaxed),
            records: Vec::new(),
            dead: Vec::new(),
            resolves: Vec::new(),
            moves: Vec::new(),
        }))
    }
}

fn key(consumer: &str, message_id: Uuid) -> MessageKey {
    (consumer.to_owned(), message_id)
}

fn lease_until(lease: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

/// What a unit of work stages in the inbox.
struct Staged {
    inbox: MemoryInbox,
    token: u64,
    records: Vec<MessageKey>,
    dead: Vec<DeadLetter>,
    resolves: Vec<MessageKey>,
    moves: Vec<(PartitionKey, OffsetAdvance)>,
}

impl State {
    fn check_move(&self, key: &PartitionKey, step: &OffsetAdvance) -> Result<()> {
        let current = self.partitions.get(key).ok_or_else(|| Error::Inbox {
            consumer: key.consumer.clone(),
            reason: format!("no offset of partition {}/{}", key.topic, key.partition),
        })?;
        if current.owner != Some(step.owner) {
            return Err(Error::Inbox {
                consumer: key.consumer.clone(),
                reason: format!(
                    "the lease on partition {}/{} was lost to another instance",
                    key.topic, key.partition
                ),
            });
        }
        if current.next_offset != step.from {
            return Err(Error::Inbox {
                consumer: key.consumer.clone(),
                reason: format!(
                    "the offset of partition {}/{} moved to {} while records from {} were applied",
                    key.topic, key.partition, current.next_offset, step.from
                ),
            });
        }
        Ok(())
    }

    fn check_resolve(&self, k: &MessageKey) -> bool {
        self.dead
            .get(k)
            .is_some_and(|d| d.status == DeadLetterStatus::Requeued)
    }
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        self.inbox.order()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> Result<Box<dyn Prepared + '_>> {
        let state = self.inbox.lock();
        for (key, step) in &self.moves {
            state.check_move(key, step)?;
        }
        for k in &self.resolves {
            if !state.check_resolve(k) {
                return Err(Error::Inbox {
                    consumer: k.0.clone(),
                    reason: format!("dead letter {} is no longer requeued", k.1),
                });
            }
        }
        Ok(Box::new(Commit {
            state,
            staged: StagedWrites {
                records: std::mem::take(&mut self.records),
                dead: std::mem::take(&mut self.dead),
                resolves: std::mem::take(&mut self.resolves),
                moves: std::mem::take(&mut self.moves),
            },
        }))
    }

    fn abandon(&mut self) {
        let token = self.token;
        let mut state = self.inbox.lock();
        for k in self.records.drain(..) {
            if state.reserved.get(&k) == Some(&token) {
                state.reserved.remove(&k);
            }
        }
    }
}

struct StagedWrites {
    records: Vec<MessageKey>,
    dead: Vec<DeadLetter>,
    resolves: Vec<MessageKey>,
    moves: Vec<(PartitionKey, OffsetAdvance)>,
}

struct Commit<'a> {
    state: MutexGuard<'a, State>,
    staged: StagedWrites,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        let now = Utc::now();
        let state = &mut *self.state;
        for k in self.staged.records.drain(..) {
            state.reserved.remove(&k);
            state.received.entry(k).or_insert(now);
        }
        for k in self.staged.resolves.drain(..) {
            state.dead.remove(&k);
        }
        for letter in self.staged.dead.drain(..) {
            state
                .dead
                .insert(key(&letter.consumer, letter.message.message_id), letter);
        }
        for (key, step) in self.staged.moves.drain(..) {
            if let Some(p) = state.partitions.get_mut(&key) {
                p.next_offset = step.to;
                p.lease_until = Some(lease_until(step.lease));
                p.updated_at = now;
            }
        }
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>> {
        Ok(Box::new(MemoryUnitOfWork::new()))
    }

    async fn record_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
    ) -> Result<bool> {
        let k = key(consumer, message.message_id);
        let staged = self.staged(uow)?;
        let token = staged.token;
        let mut state = self.lock();
        if state.received.contains_key(&k) {
            return Ok(false);
        }
        match state.reserved.get(&k) {
            Some(&t) if t == token => return Ok(false),
            Some(_) => {
                return Err(Error::Inbox {
                    consumer: consumer.to_owned(),
                    reason: format!(
                        "message {} is being handled by another unit of work",
                        message.message_id
                    ),
                });
            }
            None => {}
        }
        state.reserved.insert(k.clone(), token);
        drop(state);
        staged.records.push(k);
        Ok(true)
    }

    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        Ok(self
            .lock()
            .received
            .contains_key(&key(consumer, message_id)))
    }

    async fn dead_letter_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> Result<()> {
        let k = key(consumer, message.message_id);
        let staged = self.staged(uow)?;
        let token = staged.token;
        {
            let mut state = self.lock();
            if !state.received.contains_key(&k) {
                match state.reserved.get(&k) {
                    Some(&t) if t != token => {
                        return Err(Error::Inbox {
                            consumer: consumer.to_owned(),
                            reason: format!(
                                "message {} is being handled by another unit of work",
                                message.message_id
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        state.reserved.insert(k.clone(), token);
                        staged.records.push(k);
                    }
                }
            }
        }
        staged.dead.push(DeadLetter {
            consumer: consumer.to_owned(),
            message: message.clone(),
            error: error.to_owned(),
            attempts,
            status: DeadLetterStatus::Dead,
            dead_at: Utc::now(),
        });
        Ok(())
    }

    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>> {
        let mut all: Vec<DeadLetter> = self
            .lock()
            .dead
            .values()
            .filter(|d| consumer.is_none_or(|c| d.consumer == c))
            .cloned()
            .collect();
        all.sort_by_key(|d| d.dead_at);
        Ok(all)
    }

    async fn requeue(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        Ok(match self.lock().dead.get_mut(&key(consumer, message_id)) {
            Some(letter) => {
                letter.status = DeadLetterStatus::Requeued;
                true
            }
            None => false,
        })
    }

    async fn discard(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        Ok(self
            .lock()
            .dead
            .remove(&key(consumer, message_id))
            .is_some())
    }

    async fn requeued(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut all: Vec<DeadLetter> = self
            .lock()
            .dead
            .values()
            .filter(|d| d.consumer == consumer && d.status == DeadLetterStatus::Requeued)
            .cloned()
            .collect();
        all.sort_by_key(|d| d.dead_at);
        all.truncate(limit);
        Ok(all)
    }

    async fn resolve_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool> {
        let k = key(consumer, message_id);
        if !self.lock().check_resolve(&k) {
            return Ok(false);
        }
        self.staged(uow)?.resolves.push(k);
        Ok(true)
    }

    async fn fail_requeued(&self, consumer: &str, message_id: Uuid, error: &str) -> Result<()> {
        if let Some(letter) = self.lock().dead.get_mut(&key(consumer, message_id)) {
            letter.status = DeadLetterStatus::Dead;
            error.clone_into(&mut letter.error);
            letter.attempts = letter.attempts.saturating_add(1);
            letter.dead_at = Utc::now();
        }
        Ok(())
    }

    async fn purge(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let due: Vec<MessageKey> = state
            .received
            .iter()
            .filter(|(_, at)| **at < cutoff)
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for k in &due {
            state.received.remove(k);
        }
        Ok(due.len() as u64)
    }

    async fn acquire_partition(
        &self,
        key: &PartitionKey,
        owner: Uuid,
        lease: Duration,
        initial: i64,
    ) -> Result<Option<i64>> {
        let now = Utc::now();
        let mut state = self.lock();
        let entry = state
            .partitions
            .entry(key.clone())
            .or_insert_with(|| PartitionOffset {
                key: key.clone(),
                next_offset: initial,
                owner: None,
                lease_until: None,
                updated_at: now,
            });
        let free = entry.owner.is_none_or(|o| o == owner)
            || entry.lease_until.is_none_or(|until| until <= now);
        if !free {
            return Ok(None);
        }
        entry.owner = Some(owner);
        entry.lease_until = Some(lease_until(lease));
        entry.updated_at = now;
        Ok(Some(entry.next_offset))
    }

    async fn advance_partition_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &PartitionKey,
        step: &OffsetAdvance,
    ) -> Result<()> {
        // Fail early when the move cannot apply; the commit checks again.
        self.lock().check_move(key, step)?;
        self.staged(uow)?.moves.push((key.clone(), *step));
        Ok(())
    }

    async fn release_partition(&self, key: &PartitionKey, owner: Uuid) -> Result<()> {
        if let Some(p) = self.lock().partitions.get_mut(key)
            && p.owner == Some(owner)
        {
            p.owner = None;
            p.lease_until = None;
            p.updated_at = Utc::now();
        }
        Ok(())
    }

    async fn partitions(&self, consumer: Option<&str>) -> Result<Vec<PartitionOffset>> {
        Ok(self
            .lock()
            .partitions
            .values()
            .filter(|p| consumer.is_none_or(|c| p.key.consumer == c))
            .cloned()
            .collect())
    }
}
