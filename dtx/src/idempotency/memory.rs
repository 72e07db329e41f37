use super::{
    Claim, ClaimRequest, DEFAULT_MAX_RESPONSE_BYTES, Fingerprint, IdempotencyError, IdempotencyKey,
    IdempotencyRecord, IdempotencyStatus, IdempotencyStore, Lease, Scope,
};
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The embedded, in-memory idempotency store: the default of `#[idempotent]`, and the backend
/// for examples and tests. Clones share the same records; they live as long as the process.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::idempotency::*;
///
/// let store = MemoryIdempotencyStore::new();
/// let request = ClaimRequest::new(
///     Scope::new("customer-7")?,
///     IdempotencyKey::new("3f1c9b2e-pay")?,
///     Fingerprint::of(br#"{"amount":100}"#),
/// );
/// let Claim::Claimed(lease) = store.claim(&request).await? else { unreachable!() };
/// store.complete(&lease, b"receipt 42").await?;
/// match store.claim(&request).await? {
///     Claim::Completed(stored) => assert_eq!(stored, b"receipt 42"),
///     other => panic!("expected a replay, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryIdempotencyStore {
    records: Arc<Mutex<HashMap<(Scope, IdempotencyKey), Entry>>>,
    max_response_bytes: usize,
}

#[derive(Clone)]
struct Entry {
    fingerprint: Fingerprint,
    /// `Some` while in progress.
    lock: Option<(Uuid, DateTime<Utc>)>,
    response: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now && self.lock.is_none_or(|(_, until)| until <= now)
    }
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self {
            records: Arc::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl MemoryIdempotencyStore {
    /// An empty store accepting results up to [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the largest result accepted.
    #[must_use]
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// How many records are held (expired ones included, until cleaned up).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records expired for longer than `age` (and whose lock is not held), oldest first, at
    /// most `limit`.
    fn expired_for(
        records: &HashMap<(Scope, IdempotencyKey), Entry>,
        age: std::time::Duration,
        limit: usize,
    ) -> Vec<(Scope, IdempotencyKey)> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let mut expired: Vec<(DateTime<Utc>, (Scope, IdempotencyKey))> = records
            .iter()
            .filter(|(_, entry)| entry.expires_at <= cutoff && entry.expired(now))
            .map(|(id, entry)| (entry.expires_at, id.clone()))
            .collect();
        expired.sort_unstable_by_key(|(at, _)| *at);
        expired.truncate(limit);
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Retention: deletes at most `limit` records expired for longer than `age` (a record whose
    /// lock is held is kept), oldest first; returns how many.
    pub fn purge_expired(&self, age: std::time::Duration, limit: usize) -> usize {
        let mut records = self.lock();
        let due = Self::expired_for(&records, age, limit);
        for id in &due {
            records.remove(id);
        }
        due.len()
    }

    /// How many records [`MemoryIdempotencyStore::purge_expired`] would delete with `age`.
    pub fn expired_count(&self, age: std::time::Duration) -> usize {
        Self::expired_for(&self.lock(), age, usize::MAX).len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(Scope, IdempotencyKey), Entry>> {
        // Every mutation below is a single insert, remove or field assignment: a panic cannot
        // leave a record half-written.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryIdempotencyStore {
    fn check_size(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError> {
        if response.len() > self.max_response_bytes {
            return Err(IdempotencyError::ResponseTooLarge {
                key: lease.digest(),
                bytes: response.len(),
                max: self.max_response_bytes,
            });
        }
        Ok(())
    }

    fn order(&self) -> (u8, usize) {
        (rank::IDEMPOTENCY, address(&self.records))
    }

    fn staged<'u>(&self, uow: &'u mut MemoryUnitOfWork) -> &'u mut Staged {
        uow.part(self.order(), || Staged {
            store: self.clone(),
            claims: Vec::new(),
            completions: Vec::new(),
        })
    }
}

type Records = HashMap<(Scope, IdempotencyKey), Entry>;

/// Completes the record of a lease that still holds it.
fn complete(
    records: &mut Records,
    lease: &Lease,
    response: Vec<u8>,
) -> Result<(), IdempotencyError> {
    let id = (lease.scope().clone(), lease.key().clone());
    match records.get_mut(&id) {
        Some(entry) if entry.lock.is_some_and(|(token, _)| token == lease.token()) => {
            entry.lock = None;
            entry.response = Some(response);
            entry.completed_at = Some(Utc::now());
            Ok(())
        }
        _ => Err(IdempotencyError::LeaseLost {
            key: lease.digest(),
        }),
    }
}

/// The claims a [`MemoryUnitOfWork`] holds in one store and the results it stores on commit.
struct Staged {
    store: MemoryIdempotencyStore,
    /// Claims taken in the unit of work: released if it is discarded.
    claims: Vec<Lease>,
    completions: Vec<(Lease, Vec<u8>)>,
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        self.store.order()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> crate::Result<Box<dyn Prepared + '_>> {
        let records = self.store.lock();
        let held = |lease: &Lease| {
            records
                .get(&(lease.scope().clone(), lease.key().clone()))
                .is_some_and(|entry| entry.lock.is_some_and(|(token, _)| token == lease.token()))
        };
        if let Some((lease, _)) = self.completions.iter().find(|(lease, _)| !held(lease)) {
            return Err(crate::Error::storage(IdempotencyError::LeaseLost {
                key: lease.digest(),
            }));
        }
        self.claims.clear();
        Ok(Box::new(Commit {
            records,
            completions: std::mem::take(&mut self.completions),
        }))
    }

    fn abandon(&mut self) {
        let mut records = self.store.lock();
        for lease in self.claims.drain(..) {
            release(&mut records, &lease);
        }
    }
}

struct Commit<'a> {
    records: MutexGuard<'a, Records>,
    completions: Vec<(Lease, Vec<u8>)>,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        for (lease, response) in self.completions.drain(..) {
            // Checked in `prepare`, under the same lock.
            let _ = complete(&mut self.records, &lease, response);
        }
    }
}

/// Deletes the record of a lease that still holds it.
fn release(records: &mut Records, lease: &Lease) {
    let id = (lease.scope().clone(), lease.key().clone());
    if records
        .get(&id)
        .is_some_and(|entry| entry.lock.is_some_and(|(token, _)| token == lease.token()))
    {
        records.remove(&id);
    }
}

impl std::fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("records", &self.len())
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

fn after(now: DateTime<Utc>, duration: std::time::Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, IdempotencyError> {
        let now = Utc::now();
        let mut records = self.lock();
        let id = (request.scope.clone(), request.key.clone());
        // Absent, expired, or in progress with its lock timed out: the key is free.
        if let Some(entry) = records.get(&id)
            && entry.expires_at > now
        {
            if entry.fingerprint != request.fingerprint {
                return Ok(Claim::Mismatch);
            }
            match (&entry.response, entry.lock) {
                (Some(response), None) => return Ok(Claim::Completed(response.clone())),
                (_, Some((_, locked_until))) if locked_until > now => {
                    return Ok(Claim::InFlight { locked_until });
                }
                _ => {}
            }
        }
        let token = Uuid::now_v7();
        let locked_until = after(now, request.lock_timeout());
        records.insert(
            id,
            Entry {
                fingerprint: request.fingerprint,
                lock: Some((token, locked_until)),
                response: None,
                created_at: now,
                expires_at: after(now, request.ttl()),
                completed_at: None,
            },
        );
        Ok(Claim::Claimed(Lease::new(
            request.scope.clone(),
            request.key.clone(),
            token,
            locked_until,
        )))
    }

    async fn complete(&self, lease: &Lease, response: &[u8]) -> Result<(), IdempotencyError> {
        self.check_size(lease, response)?;
        complete(&mut self.lock(), lease, response.to_vec())
    }

    async fn release(&self, lease: &Lease) -> Result<(), IdempotencyError> {
        release(&mut self.lock(), lease);
        Ok(())
    }

    async fn load(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, IdempotencyError> {
        let records = self.lock();
        Ok(records
            .get(&(scope.clone(), key.clone()))
            .map(|entry| IdempotencyRecord {
                scope: scope.clone(),
                key: key.clone(),
                fingerprint: entry.fingerprint,
                status: if entry.lock.is_some() {
                    IdempotencyStatus::InProgress
                } else {
                    IdempotencyStatus::Completed
                },
                response: entry.response.clone(),
                created_at: entry.created_at,
                expires_at: entry.expires_at,
                locked_until: entry.lock.map(|(_, until)| until),
                completed_at: entry.completed_at,
            }))
    }

    async fn claim_in(
        &self,
        uow: &mut dyn UnitOfWork,
        request: &ClaimRequest,
    ) -> Result<Claim, IdempotencyError> {
        let uow = MemoryUnitOfWork::of(uow).map_err(IdempotencyError::storage)?;
        let claim = self.claim(request).await?;
        if let Claim::Claimed(lease) = &claim {
            self.staged(uow).claims.push(lease.clone());
        }
        Ok(claim)
    }

    async fn complete_in(
        &self,
        uow: &mut dyn UnitOfWork,
        lease: &Lease,
        response: &[u8],
    ) -> Result<(), IdempotencyError> {
        self.check_size(lease, response)?;
        let uow = MemoryUnitOfWork::of(uow).map_err(IdempotencyError::storage)?;
        self.staged(uow)
            .completions
            .push((lease.clone(), response.to_vec()));
        Ok(())
    }

    /// A [`MemoryUnitOfWork`]; a claim in it never waits (a key held by another unit of work is
    /// [`Claim::InFlight`] at once), so `lock_wait` has nothing to bound.
    async fn begin(
        &self,
        lock_wait: std::time::Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, IdempotencyError> {
        let _ = lock_wait;
        Ok(Some(Box::new(MemoryUnitOfWork::new())))
    }

    async fn cleanup_expired(&self, limit: usize) -> Result<usize, IdempotencyError> {
        let now = Utc::now();
        let mut records = self.lock();
        let mut expired: Vec<(DateTime<Utc>, (Scope, IdempotencyKey))> = records
            .iter()
            .filter(|(_, entry)| entry.expired(now))
            .map(|(id, entry)| (entry.expires_at, id.clone()))
            .collect();
        expired.sort_unstable_by_key(|(at, _)| *at);
        expired.truncate(limit);
        for (_, id) in &expired {
            records.remove(id);
        }
        Ok(expired.len())
    }
}
