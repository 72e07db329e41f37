//! Retention: what dtx keeps only for a while, purged by age in small batches.
//!
//! Four kinds of rows only grow unless something deletes them ([`RetentionKind`]): finished
//! sagas, the copies the outbox relay keeps of published messages, inbox records and expired
//! idempotency keys. A [`Retention`] deletes what its [`RetentionPolicy`] says is due, a bounded
//! batch per statement (each its own short transaction, rows other transactions hold skipped),
//! so the tables the live traffic writes are never locked for long. Run it once
//! ([`Retention::purge_once`], the `dtx purge` command) or in the background
//! ([`Retention::spawn`]).
//!
//! A backend deletes through a [`Purger`]: `dtx_postgres::retention::PgPurger` on PostgreSQL,
//! [`MemoryPurger`] over the in-memory stores.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dtx::retention::{MemoryPurger, Retention, RetentionPolicy};
//! use dtx::saga::MemorySagaStore;
//!
//! let sagas = MemorySagaStore::new();
//! let retention = Retention::new(
//!     RetentionPolicy::default(),
//!     MemoryPurger::new().sagas(sagas.clone()),
//! );
//! let report = retention.purge_once().await?;
//! assert_eq!(report.total(), 0);
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

mod memory;

pub use memory::MemoryPurger;

use crate::error::Result;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a retention purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionKind {
    /// Completed and compensated sagas (cancelled ones end compensated), by the time they
    /// finished.
    FinishedSagas,
    /// Failed sagas, which wait for a person: purged only when the policy says so.
    FailedSagas,
    /// The copies of published outbox messages, by the time they were published.
    PublishedOutbox,
    /// Inbox records (the ids of messages a consumer handled), by the time they arrived. Dead
    /// letters are kept.
    Inbox,
    /// Idempotency keys past their expiry (a record whose lock is still held is kept).
    IdempotencyKeys,
}

impl RetentionKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 5] = [
        Self::FinishedSagas,
        Self::FailedSagas,
        Self::PublishedOutbox,
        Self::Inbox,
        Self::IdempotencyKeys,
    ];

    /// The name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FinishedSagas => "finished_sagas",
            Self::FailedSagas => "failed_sagas",
            Self::PublishedOutbox => "published_outbox",
            Self::Inbox => "inbox",
            Self::IdempotencyKeys => "idempotency_keys",
        }
    }
}

impl fmt::Display for RetentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each kind is kept (`None`: kept for ever), and how the purge runs.
///
/// | field | default |
/// |---|---|
/// | [`finished_sagas`](Self::finished_sagas) | 30 days after they finished |
/// | [`failed_sagas`](Self::failed_sagas) | kept (`None`): a person must look at them |
/// | [`published_outbox`](Self::published_outbox) | 7 days after publishing (as [`crate::outbox::RelayOptions::retention`]) |
/// | [`inbox`](Self::inbox) | 14 days after arrival (keep them longer than a broker may redeliver) |
/// | [`idempotency_keys`](Self::idempotency_keys) | as soon as they expire (`Duration::ZERO` after `expires_at`) |
/// | [`batch`](Self::batch) | 500 rows per statement |
/// | [`every`](Self::every) | a background pass every 5 minutes |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Completed and compensated sagas older than this (since they finished) are purged.
    pub finished_sagas: Option<Duration>,
    /// Failed sagas older than this (since they failed) are purged; `None` keeps them.
    pub failed_sagas: Option<Duration>,
    /// Published outbox copies older than this are purged.
    pub published_outbox: Option<Duration>,
    /// Inbox records older than this are purged.
    pub inbox: Option<Duration>,
    /// Idempotency keys expired for longer than this are purged.
    pub idempotency_keys: Option<Duration>,
    /// Most rows one statement deletes (at least 1).
    pub batch: usize,
    /// The pause between two passes of [`Retention::spawn`].
    pub every: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            finished_sagas: Some(DAY * 30),
            failed_sagas: None,
            published_outbox: Some(DAY * 7),
            inbox: Some(DAY * 14),
            idempotency_keys: Some(Duration::ZERO),
            batch: 500,
            every: Duration::from_secs(300),
        }
    }
}

impl RetentionPolicy {
    /// The same age for every kind the policy purges (`dtx purge --older-than`): failed
    /// sagas stay kept unless the policy purged them; expired idempotency keys go by their own
    /// expiry, this long after it.
    #[must_use]
    pub fn older_than(mut self, age: Duration) -> Self {
        for kept in [
            &mut self.finished_sagas,
            &mut self.failed_sagas,
            &mut self.published_outbox,
            &mut self.inbox,
            &mut self.idempotency_keys,
        ] {
            if kept.is_some() {
                *kept = Some(age);
            }
        }
        self
    }

    /// How long `kind` is kept (`None`: for ever).
    pub fn age(&self, kind: RetentionKind) -> Option<Duration> {
        match kind {
            RetentionKind::FinishedSagas => self.finished_sagas,
            RetentionKind::FailedSagas => self.failed_sagas,
            RetentionKind::PublishedOutbox => self.published_outbox,
            RetentionKind::Inbox => self.inbox,
            RetentionKind::IdempotencyKeys => self.idempotency_keys,
        }
    }

    /// Keeps `kind` this long (`None`: for ever).
    #[must_use]
    pub fn keep(mut self, kind: RetentionKind, age: Option<Duration>) -> Self {
        *match kind {
            RetentionKind::FinishedSagas => &mut self.finished_sagas,
            RetentionKind::FailedSagas => &mut self.failed_sagas,
            RetentionKind::PublishedOutbox => &mut self.published_outbox,
            RetentionKind::Inbox => &mut self.inbox,
            RetentionKind::IdempotencyKeys => &mut self.idempotency_keys,
        } = age;
        self
    }
}

/// Deletes due rows of each [`RetentionKind`] for a backend.
#[async_trait]
pub trait Purger: Send + Sync + 'static {
    /// Deletes at most `limit` rows of `kind` that are older than `age` (idempotency keys:
    /// expired for longer than `age`), oldest first, skipping rows another transaction holds;
    /// returns how many. A kind this purger has no store for deletes nothing.
    async fn purge_batch(&self, kind: RetentionKind, age: Duration, limit: usize) -> Result<u64>;

    /// How many rows of `kind` a purge with `age` would delete now (for a dry run).
    async fn due(&self, kind: RetentionKind, age: Duration) -> Result<u64>;
}

/// What a purge deleted (or, in a dry run, would delete), by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Rows per kind the policy purges (kinds it keeps are absent).
    pub purged: BTreeMap<RetentionKind, u64>,
}

impl PurgeReport {
    /// Rows of every kind.
    pub fn total(&self) -> u64 {
        self.purged.values().sum()
    }

    /// Rows of `kind`.
    pub fn of(&self, kind: RetentionKind) -> u64 {
        self.purged.get(&kind).copied().unwrap_or(0)
    }
}

/// Purges by a [`RetentionPolicy`] through a [`Purger`]. Clones share the purger.
#[derive(Clone)]
pub struct Retention {
    policy: RetentionPolicy,
    purger: Arc<dyn Purger>,
}

impl fmt::Debug for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retention")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Retention {
    /// A retention with `policy` over `purger`.
    pub fn new(policy: RetentionPolicy, purger: impl Purger) -> Self {
        Self {
            policy,
            purger: Arc::new(purger),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetentionPolicy {
        &self.policy
    }

    /// One pass: for every kind the policy purges, deletes batches of due rows until a batch
    /// comes back short. Each batch is one statement (its own transaction); the task yields
    /// between batches.
    ///
    /// # Errors
    ///
    /// The backend's failure; what earlier batches deleted stays deleted.
    pub async fn purge_once(&self) -> Result<PurgeReport> {
        let batch = self.policy.batch.max(1);
        let mut report = PurgeReport::default();
        for kind in RetentionKind::ALL {
            let Some(age) = self.policy.age(kind) else {
                continue;
            };
            let mut total = 0;
            loop {
                let deleted = self.purger.purge_batch(kind, age, batch).await?;
                total += deleted;
                if deleted < batch as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if total > 0 {
                tracing::debug!(kind = %kind, purged = total, "retention");
            }
            report.purged.insert(kind, total);
        }
        Ok(report)
    }

    /// What [`Retention::purge_once`] would delete now, deleting nothing.
    ///
    /// # Errors
    ///
    /// The backend's failure.
    pub async fn dry_run(&self) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        for kind in RetentionKind::ALL {
            if let Some(age) = self.policy.age(kind) {
                report
                    .purged
                    .insert(kind, self.purger.due(kind, age).await?);
            }
        }
        Ok(report)
    }

    /// Runs [`Retention::purge_once`] every [`RetentionPolicy::every`] on a background task
    /// until the returned handle is stopped or dropped. A failed pass is logged and tried
    /// again at the next one.
    pub fn spawn(self) -> RetentionTask {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            loop {
                match self.purge_once().await {
                    Ok(report) => {
                        tracing::debug!(purged = report.total(), "retention pass");
                    }
                    Err(error) => tracing::warn!(%error, "retention pass failed"),
                }
                let pause = tokio::time::sleep(self.policy.every);
                tokio::select! {
                    () = pause => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        RetentionTask {
            stop,
            handle: Some(handle),
        }
    }
}

/// The background task of [`Retention::spawn`]: dropping it stops the task after the pass in
/// progress.
#[derive(Debug)]
pub struct RetentionTask {
    stop: tokio::sync::watch::Sender<bool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl RetentionTask {
    /// Stops the task and waits for the pass in progress to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
