//! [`MemoryPurger`]: retention over the in-memory stores.

use super::{Purger, RetentionKind};
use crate::error::Result;
use crate::idempotency::MemoryIdempotencyStore;
use crate::inbox::{InboxStore, MemoryInbox};
use crate::outbox::MemoryOutbox;
use crate::saga::{MemorySagaStore, SagaStatus};
use async_trait::async_trait;
use chrono::Utc;
use std::time::Duration;

/// A [`Purger`] over the in-memory stores it is given (a kind whose store it was not given is
/// left alone).
#[derive(Debug, Clone, Default)]
pub struct MemoryPurger {
    sagas: Option<MemorySagaStore>,
    outbox: Option<MemoryOutbox>,
    inbox: Option<MemoryInbox>,
    idempotency: Option<MemoryIdempotencyStore>,
}

impl MemoryPurger {
    /// A purger with no store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Purges finished (and, if the policy says so, failed) sagas of `store`.
    #[must_use]
    pub fn sagas(mut self, store: MemorySagaStore) -> Self {
        self.sagas = Some(store);
        self
    }

    /// Purges the published messages `outbox` keeps.
    #[must_use]
    pub fn outbox(mut self, outbox: MemoryOutbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Purges the records of `inbox`.
    #[must_use]
    pub fn inbox(mut self, inbox: MemoryInbox) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Purges the expired keys of `store`.
    #[must_use]
    pub fn idempotency(mut self, store: MemoryIdempotencyStore) -> Self {
        self.idempotency = Some(store);
        self
    }
}

/// The saga statuses of a saga retention kind.
fn statuses(kind: RetentionKind) -> &'static [SagaStatus] {
    match kind {
        RetentionKind::FinishedSagas => &[SagaStatus::Completed, SagaStatus::Compensated],
        RetentionKind::FailedSagas => &[SagaStatus::Failed],
        _ => &[],
    }
}

fn before(age: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl Purger for MemoryPurger {
    async fn purge_batch(&self, kind: RetentionKind, age: Duration, limit: usize) -> Result<u64> {
        let deleted = match kind {
            RetentionKind::FinishedSagas | RetentionKind::FailedSagas => self
                .sagas
                .as_ref()
                .map_or(0, |s| s.purge_finished(statuses(kind), before(age), limit)),
            RetentionKind::PublishedOutbox => self
                .outbox
                .as_ref()
                .map_or(0, |o| o.purge_published_before(age)),
            RetentionKind::Inbox => match &self.inbox {
                Some(inbox) => return inbox.purge(age, limit).await,
                None => 0,
            },
            RetentionKind::IdempotencyKeys => self
                .idempotency
                .as_ref()
                .map_or(0, |s| s.purge_expired(age, limit)),
        };
        Ok(deleted as u64)
    }

    async fn due(&self, kind: RetentionKind, age: Duration) -> Result<u64> {
        let due = match kind {
            RetentionKind::FinishedSagas | RetentionKind::FailedSagas => self
                .sagas
                .as_ref()
                .map_or(0, |s| s.finished_count(statuses(kind), before(age))),
            RetentionKind::PublishedOutbox => self
                .outbox
                .as_ref()
                .map_or(0, |o| o.published_older_than(age)),
            RetentionKind::Inbox => self
                .inbox
                .as_ref()
                .map_or(0, |i| i.received_older_than(age)),
            RetentionKind::IdempotencyKeys => self
                .idempotency
                .as_ref()
                .map_or(0, |s| s.expired_count(age)),
        };
        Ok(due as u64)
    }
}
