use super::cancel::{Cancel, Cancellation};
use super::store::{Correlated, Delivery, SagaEvent, SagaRecord, SagaStatus, SagaStore};
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// The embedded, in-memory saga store. Clones share the same sagas.
#[derive(Debug, Clone, Default)]
pub struct MemorySagaStore {
    sagas: Arc<Mutex<HashMap<Uuid, SagaRecord>>>,
}

impl MemorySagaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids of sagas in one of `statuses` that finished (last changed) before `before`,
    /// oldest first, at most `limit`.
    fn finished_before(
        sagas: &HashMap<Uuid, SagaRecord>,
        statuses: &[SagaStatus],
        before: DateTime<Utc>,
        limit: usize,
    ) -> Vec<Uuid> {
        let mut due: Vec<(DateTime<Utc>, Uuid)> = sagas
            .values()
            .filter(|s| statuses.contains(&s.status) && s.updated_at < before)
            .map(|s| (s.updated_at, s.id))
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Retention: deletes at most `limit` sagas in one of `statuses` (finished ones: the others
    /// are left alone) that last changed before `before`, oldest first; returns how many.
    pub fn purge_finished(
        &self,
        statuses: &[SagaStatus],
        before: DateTime<Utc>,
        limit: usize,
    ) -> usize {
        let statuses: Vec<SagaStatus> = statuses
            .iter()
            .copied()
            .filter(|s| s.is_finished())
            .collect();
        let mut sagas = self.lock();
        let due = Self::finished_before(&sagas, &statuses, before, limit);
        for id in &due {
            sagas.remove(id);
        }
        due.len()
    }

    /// How many sagas [`MemorySagaStore::purge_finished`] would delete.
    pub fn finished_count(&self, statuses: &[SagaStatus], before: DateTime<Utc>) -> usize {
        let statuses: Vec<SagaStatus> = statuses
            .iter()
            .copied()
            .filter(|s| s.is_finished())
            .collect();
        Self::finished_before(&self.lock(), &statuses, before, usize::MAX).len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, SagaRecord>> {
        self.sagas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl SagaStore for MemorySagaStore {
    async fn insert(&self, record: &SagaRecord) -> crate::Result<()> {
        record.check_storable()?;
        self.lock()
            .entry(record.id)
            .or_insert_with(|| record.clone());
        Ok(())
    }

    async fn insert_in(&self, uow: &mut dyn UnitOfWork, record: &SagaRecord) -> crate::Result<()> {
        record.check_storable()?;
        let uow = MemoryUnitOfWork::of(uow)?;
        let order = (rank::SAGAS, address(&self.sagas));
        uow.part(order, || Staged {
            store: self.clone(),
            inserts: Vec::new(),
        })
        .inserts
        .push(record.clone());
        Ok(())
    }

    async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> crate::Result<Vec<SagaRecord>> {
        let mut sagas = self.lock();
        let mut due: Vec<&mut SagaRecord> = sagas
            .values_mut()
            .filter(|s| {
                s.status.is_active()
                    && s.next_run_at <= now
                    && s.lease_expires_at.is_none_or(|until| until < now)
            })
            .collect();
        due.sort_by_key(|s| s.next_run_at);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|s| {
                s.lease_owner = Some(owner.to_owned());
                s.lease_expires_at = Some(now + chrono(lease));
                s.clone()
            })
            .collect())
    }

    async fn save(
        &self,
        record: &SagaRecord,
        owner: &str,
        lease_until: Option<DateTime<Utc>>,
    ) -> crate::Result<bool> {
        record.check_storable()?;
        let mut sagas = self.lock();
        let Some(stored) = sagas.get_mut(&record.id) else {
            return Ok(false);
        };
        if stored.lease_owner.as_deref() != Some(owner) || stored.version + 1 != record.version {
            return Ok(false);
        }
        *stored = record.clone();
        stored.lease_owner = lease_until.map(|_| owner.to_owned());
        stored.lease_expires_at = lease_until;
        Ok(true)
    }

    async fn get(&self, id: Uuid) -> crate::Result<Option<SagaRecord>> {
        Ok(self.lock().get(&id).cloned())
    }

    async fn deliver(
        &self,
        id: Uuid,
        event: &SagaEvent,
        now: DateTime<Utc>,
    ) -> crate::Result<Delivery> {
        event.check_storable(id)?;
        let mut sagas = self.lock();
        let Some(saga) = sagas.get_mut(&id) else {
            return Ok(Delivery::NotFound);
        };
        if saga.status != SagaStatus::Waiting || saga.awaiting.as_deref() != Some(&event.event_type)
        {
            return Ok(Delivery::NotAwaited {
                status: saga.status,
                awaiting: saga.awaiting.clone(),
            });
        }
        saga.received
            .insert(event.event_type.clone(), event.payload.clone());
        saga.status = SagaStatus::Running;
        saga.awaiting = None;
        saga.next_run_at = now;
        saga.version += 1;
        saga.updated_at = now;
        Ok(Delivery::Delivered)
    }

    async fn correlated(&self, correlation_id: Uuid) -> crate::Result<Vec<Correlated>> {
        let sagas = self.lock();
        let mut found: Vec<&SagaRecord> = sagas
            .values()
            .filter(|s| s.correlation_id == Some(correlation_id) && !s.status.is_finished())
            .collect();
        found.sort_by_key(|s| (s.created_at, s.id));
        Ok(found
            .into_iter()
            .map(|s| Correlated {
                id: s.id,
                name: s.name.clone(),
                status: s.status,
                step: s.step,
                awaiting: s.awaiting.clone(),
            })
            .collect())
    }

    async fn correlated_in(
        &self,
        uow: &mut dyn UnitOfWork,
        correlation_id: Uuid,
    ) -> crate::Result<Vec<Correlated>> {
        let mut found = self.correlated(correlation_id).await?;
        let order = (rank::SAGAS, address(&self.sagas));
        if let Some(staged) = MemoryUnitOfWork::of(uow)?.existing::<Staged>(order) {
            for s in &staged.inserts {
                if s.correlation_id == Some(correlation_id) && !found.iter().any(|f| f.id == s.id) {
                    found.push(Correlated {
                        id: s.id,
                        name: s.name.clone(),
                        status: s.status,
                        step: s.step,
                        awaiting: s.awaiting.clone(),
                    });
                }
            }
        }
        Ok(found)
    }

    async fn list(&self, status: SagaStatus, limit: usize) -> crate::Result<Vec<SagaRecord>> {
        let sagas = self.lock();
        let mut found: Vec<SagaRecord> = sagas
            .values()
            .filter(|s| s.status == status)
            .cloned()
            .collect();
        found.sort_by_key(|s| s.created_at);
        found.truncate(limit);
        Ok(found)
    }

    async fn counts(&self) -> crate::Result<HashMap<SagaStatus, u64>> {
        let mut counts = HashMap::new();
        for saga in self.lock().values() {
            *counts.entry(saga.status).or_default() += 1;
        }
        Ok(counts)
    }

    async fn retry_failed(&self, id: Uuid, now: DateTime<Utc>) -> crate::Result<bool> {
        let mut sagas = self.lock();
        match sagas.get_mut(&id) {
            Some(saga) if saga.status == SagaStatus::Failed => {
                saga.status = SagaStatus::Compensating;
                saga.attempts = 0;
                saga.next_run_at = now;
                saga.lease_owner = None;
                saga.lease_expires_at = None;
                saga.version += 1;
                saga.updated_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn cancel(
        &self,
        id: Uuid,
        cancellation: &Cancellation,
        now: DateTime<Utc>,
    ) -> crate::Result<Cancel> {
        cancellation.check_storable(id)?;
        let mut sagas = self.lock();
        let Some(saga) = sagas.get_mut(&id) else {
            return Ok(Cancel::NotFound);
        };
        Ok(match super::cancel::apply(saga, cancellation, now) {
            Ok(()) => Cancel::Cancelled,
            Err(refused) => refused,
        })
    }
}

/// The sagas a [`MemoryUnitOfWork`] starts in one store.
struct Staged {
    store: MemorySagaStore,
    inserts: Vec<SagaRecord>,
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        (rank::SAGAS, address(&self.store.sagas))
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> crate::Result<Box<dyn Prepared + '_>> {
        Ok(Box::new(Commit {
            sagas: self.store.lock(),
            inserts: std::mem::take(&mut self.inserts),
        }))
    }
}

struct Commit<'a> {
    sagas: MutexGuard<'a, HashMap<Uuid, SagaRecord>>,
    inserts: Vec<SagaRecord>,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        for record in self.inserts.drain(..) {
            self.sagas.entry(record.id).or_insert(record);
        }
    }
}
