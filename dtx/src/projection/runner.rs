//! The runner: follows the feed for each projection, one batch per unit of work.

use super::checkpoint::{Advance, CheckpointKey, Failure, ProjectionStatus, SharedCheckpointStore};
use super::{HandlerError, Invalidations, Projection, ProjectionKind};
use crate::cqrs::QueryBus;
use crate::error::{Error, Result};
use crate::retry::{Backoff, Jitter};
use crate::store::{GlobalPosition, RecordedEvent, SharedEventStore};
use crate::uow::{BoxFuture, UnitOfWork};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

/// How a [`ProjectionRunner`] reads, applies and retries.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This runner's id in leases (default: a fresh UUID).
    pub owner: Uuid,
    /// Most events applied in one unit of work.
    pub batch_size: usize,
    /// Most feed events looked at by one read (the store filters them by type).
    pub scan_size: usize,
    /// How long a lease lasts without renewal: another runner takes a projection over this
    /// long after its runner died.
    pub lease: Duration,
    /// How long an idle runner waits before it reads again when nothing woke it (and how often
    /// a runner without a lease tries to take one).
    pub poll_interval: Duration,
    /// Pauses between the tries of a failing event.
    pub retry: Backoff,
    /// Tries of a failing event before the projection stops as failed.
    pub max_attempts: u32,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            owner: Uuid::new_v4(),
            batch_size: 500,
            scan_size: 2000,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retry: Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
                Jitter::Equal,
            ),
            max_attempts: 5,
        }
    }
}

/// A projection behind a type-erased face.
trait Erased: Send + Sync {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        uow: Option<&'a mut dyn UnitOfWork>,
        invalidations: &'a mut Invalidations,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;

    fn clear<'a>(
        &'a self,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;
}

impl<P: Projection> Erased for P {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        uow: Option<&'a mut dyn UnitOfWork>,
        invalidations: &'a mut Invalidations,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>> {
        Projection::handle(self, event, uow, invalidations)
    }

    fn clear<'a>(
        &'a self,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>> {
        Projection::clear(self, uow)
    }
}

/// One projection the runner runs.
#[derive(Clone)]
struct Entry {
    name: &'static str,
    version: u32,
    kind: ProjectionKind,
    event_types: &'static [&'static str],
    partitions: u32,
    projection: Arc<dyn Erased>,
}

/// Runs projections: for each, catches up from its checkpoint in batches, then follows the
/// feed live, woken by new commits (polling only as a fallback).
///
/// Run one in every service instance: each projection (or each partition of one) is run by
/// one runner at a time, the holder of its checkpoint's lease, and another takes over when
/// that runner dies. Every batch commits with its checkpoint move; see the
/// [module docs](super).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::projection::{MemoryCheckpointStore, ProjectionRunner};
/// use dtx::{EventStore, ExpectedVersion, MemoryEventStore, NewEvent, StreamId};
/// use std::sync::Arc;
///
/// # #[derive(Default)] struct Counter;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Opened {}
/// # #[derive(dtx::DomainEvent)] enum E { Opened(Opened) }
/// let store = Arc::new(MemoryEventStore::new());
/// let runner = ProjectionRunner::new(store.clone(), Arc::new(MemoryCheckpointStore::new()));
/// let stream = StreamId::new("Account-1")?;
/// store.append(&stream, ExpectedVersion::Any, vec![NewEvent::from_json("Opened", &serde_json::json!({}))?]).await?;
/// assert_eq!(runner.run_once().await?, 0, "no projection added yet");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ProjectionRunner {
    store: SharedEventStore,
    checkpoints: SharedCheckpointStore,
    config: RunnerConfig,
    entries: Vec<Entry>,
    queries: Option<QueryBus>,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("config", &self.config)
            .field(
                "projections",
                &self.entries.iter().map(|e| e.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What happened to one batch.
enum Applied {
    /// Committed: the checkpoint is at the position.
    Moved(GlobalPosition),
    /// The lease or the checkpoint's position was lost: take the lease again.
    Lost,
    /// The projection stopped as failed.
    Failed,
}

impl ProjectionRunner {
    /// A runner reading `store`, keeping checkpoints in `checkpoints` (of the same backend as
    /// the read models: a PostgreSQL store's units of work are PostgreSQL transactions).
    pub fn new(store: SharedEventStore, checkpoints: SharedCheckpointStore) -> Self {
        Self {
            store,
            checkpoints,
            config: RunnerConfig::default(),
            entries: Vec::new(),
            queries: None,
        }
    }

    /// Sets how the runner reads, applies and retries.
    #[must_use]
    pub fn config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// The runner's settings.
    pub fn settings(&self) -> &RunnerConfig {
        &self.config
    }

    /// Applies the query cache invalidations handlers ask for (`&mut Invalidations`) to
    /// `bus`, after each batch commits.
    #[must_use]
    pub fn invalidating(mut self, bus: QueryBus) -> Self {
        self.queries = Some(bus);
        self
    }

    /// Adds a projection.
    #[must_use]
    pub fn projection<P: Projection>(self, projection: P) -> Self {
        self.partitioned(projection, 1)
    }

    /// Adds a projection split into `partitions` partitions by stream: each has its own
    /// checkpoint and lease, so several runners share the projection, and each stream's events
    /// stay in order (a stream always falls in the same partition). Its clear hook runs only on
    /// [`reset`](Self::reset), for all partitions at once.
    #[must_use]
    pub fn partitioned<P: Projection>(mut self, projection: P, partitions: u32) -> Self {
        self.entries.push(Entry {
            name: P::NAME,
            version: P::VERSION,
            kind: P::KIND,
            event_types: P::event_types(),
            partitions: partitions.max(1),
            projection: Arc::new(projection),
        });
        self
    }

    /// The checkpoint keys of every projection (and partition) this runner runs.
    pub fn keys(&self) -> Vec<CheckpointKey> {
        self.workers().map(|w| w.key).collect()
    }

    /// A worker per projection partition.
    fn workers(&self) -> impl Iterator<Item = Worker> + '_ {
        self.entries.iter().flat_map(move |entry| {
            (0..entry.partitions).map(move |partition| Worker {
                runner: self.clone(),
                entry: entry.clone(),
                key: CheckpointKey::new(entry.name, entry.version)
                    .partition(partition, entry.partitions),
            })
        })
    }

    /// Checks the projections: registered names must be unique (both declarations are named
    /// otherwise), and so must the names given to this runner.
    pub fn check(&self) -> Result<()> {
        super::registered()?;
        let mut names: Vec<&str> = self.entries.iter().map(|e| e.name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Projection {
                name: pair[0].to_owned(),
                reason: "added to one runner twice".to_owned(),
            });
        }
        Ok(())
    }

    /// Starts one task per projection partition; they run until the handle is stopped or
    /// dropped.
    pub fn start(&self) -> Result<RunnerHandle> {
        self.check()?;
        let (stop, stopped) = watch::channel(false);
        let tasks = self
            .workers()
            .map(|worker| tokio::spawn(worker.run(stopped.clone())))
            .collect();
        Ok(RunnerHandle { stop, tasks })
    }

    /// Applies, for every projection, what the feed holds now (taking and keeping each lease it
    /// can), and returns how many events were applied. For tests and one-shot rebuilds; a
    /// service uses [`start`](Self::start).
    pub async fn run_once(&self) -> Result<usize> {
        self.check()?;
        let mut applied = 0;
        for worker in self.workers() {
            applied += worker.catch_up().await?;
        }
        Ok(applied)
    }

    /// Resets projection `name`: its clear hook and the move of its checkpoints (every
    /// partition) to the start of the feed, in one unit of work. A runner applying it at the
    /// time fails its next checkpoint move and starts over.
    pub async fn reset(&self, name: &str) -> Result<()> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::Projection {
                name: name.to_owned(),
                reason: "not added to this runner".to_owned(),
            })?;
        let mut uow = self.checkpoints.begin().await?;
        if entry.kind == ProjectionKind::ReadModel {
            entry
                .projection
                .clear(&mut *uow)
                .await
                .map_err(|error| Error::Projection {
                    name: name.to_owned(),
                    reason: format!("its clear hook failed: {error}"),
                })?;
        }
        for partition in 0..entry.partitions {
            let key = CheckpointKey::new(entry.name, entry.version)
                .partition(partition, entry.partitions);
            self.checkpoints.reset_in(&mut *uow, &key).await?;
        }
        uow.commit_boxed().await
    }
}

/// Started runner tasks; [`stop`](Self::stop) ends them and gives their leases up.
#[derive(Debug)]
pub struct RunnerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunnerHandle {
    /// Stops every task after its current batch and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The stable partition of a stream: FNV-1a of its id, modulo `partitions`.
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// One projection partition's loop.
struct Worker {
    runner: ProjectionRunner,
    entry: Entry,
    key: CheckpointKey,
}

impl Worker {
    fn config(&self) -> &RunnerConfig {
        &self.runner.config
    }

    /// A move of this worker's checkpoint.
    fn advance(&self, from: GlobalPosition, to: GlobalPosition, applied: u64) -> Advance {
        Advance {
            owner: self.config().owner,
            from,
            to,
            applied,
            lease: self.config().lease,
        }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let owner = self.config().owner;
        let waker = self.runner.store.feed_waker();
        while !*stopped.borrow() {
            let pause = match self.follow(waker.as_ref(), &mut stopped).await {
                Ok(()) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(projection = %self.key, %error, "projection runner error; retrying");
                    self.config().poll_interval
                }
            };
            if !pause.is_zero() {
                let _ = tokio::time::timeout(pause, stopped.changed()).await;
            }
        }
        if let Err(error) = self.runner.checkpoints.release(&self.key, owner).await {
            tracing::debug!(projection = %self.key, %error, "releasing the lease failed");
        }
    }

    /// Takes the lease and follows the feed while it holds; returns to take it again.
    async fn follow(
        &self,
        waker: Option<&Arc<dyn crate::store::FeedWaker>>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let config = self.config().clone();
        let Some(lease) = self
            .runner
            .checkpoints
            .acquire(&self.key, config.owner, config.lease)
            .await?
        else {
            // Another runner holds it: look again later.
            let _ = tokio::time::timeout(config.poll_interval, stopped.changed()).await;
            return Ok(());
        };
        if lease.checkpoint.status == ProjectionStatus::Failed {
            // Stopped until an operator skips or resumes it; keep the lease meanwhile.
            let _ = tokio::time::timeout(config.poll_interval, stopped.changed()).await;
            return Ok(());
        }
        let mut position = lease.checkpoint.position;
        let mut renewed = tokio::time::Instant::now();
        while !*stopped.borrow() {
            let ticket = waker.map(|w| w.ticket());
            match self.step(position).await? {
                Step::Moved(to) => {
                    position = to;
                    renewed = tokio::time::Instant::now();
                }
                Step::Lost | Step::Failed => return Ok(()),
                Step::Idle => {
                    if renewed.elapsed() >= config.lease / 3 {
                        // Renew the lease (and see an operator's reset) while idle.
                        return Ok(());
                    }
                    let wait = async {
                        match (waker, ticket) {
                            (Some(waker), Some(ticket)) => {
                                waker.wait(ticket, config.poll_interval).await;
                            }
                            _ => tokio::time::sleep(config.poll_interval).await,
                        }
                    };
                    tokio::select! {
                        () = wait => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies everything the feed holds now; the events applied.
    async fn catch_up(&self) -> Result<usize> {
        let config = self.config().clone();
        let Some(lease) = self
            .runner
            .checkpoints
            .acquire(&self.key, config.owner, config.lease)
            .await?
        else {
            return Ok(0);
        };
        if lease.checkpoint.status == ProjectionStatus::Failed {
            return Ok(0);
        }
        let mut position = lease.checkpoint.position;
        while let Step::Moved(to) = self.step(position).await? {
            position = to;
        }
        let applied = self
            .applied()
            .await?
            .saturating_sub(lease.checkpoint.applied);
        Ok(usize::try_from(applied).unwrap_or(usize::MAX))
    }

    /// The checkpoint's count of applied events.
    async fn applied(&self) -> Result<u64> {
        Ok(self
            .runner
            .checkpoints
            .list()
            .await?
            .into_iter()
            .find(|c| c.key == self.key)
            .map_or(0, |c| c.applied))
    }

    /// Reads one page from `position` and applies it.
    async fn step(&self, position: GlobalPosition) -> Result<Step> {
        let config = self.config();
        let page = self
            .runner
            .store
            .read_feed(position, self.entry.event_types, config.scan_size)
            .await?;
        let behind = page.events.len();
        let ours = |stream: &str| {
            self.key.partitions <= 1
                || partition_of(stream, self.key.partitions) == self.key.partition
        };
        let mut scanned_to = page.scanned_to;
        // A row that cannot be read stops the partition it belongs to; the others pass it.
        let unreadable = match page.unreadable {
            Some(row) if !ours(&row.stream_id) => {
                scanned_to = row.position;
                None
            }
            other => other,
        };
        let events: Vec<RecordedEvent> = page
            .events
            .into_iter()
            .filter(|e| ours(e.stream_id.as_str()))
            .collect();
        let mut from = position;
        if events.is_empty() {
            if scanned_to > position {
                let moved = self
                    .runner
                    .checkpoints
                    .advance(&self.key, &self.advance(position, scanned_to, 0))
                    .await;
                match moved {
                    Ok(()) => from = scanned_to,
                    Err(error) => {
                        return match self.moved_elsewhere(error)? {
                            Applied::Moved(_) | Applied::Lost | Applied::Failed => Ok(Step::Lost),
                        };
                    }
                }
            }
        } else {
            let chunks: Vec<&[RecordedEvent]> = events.chunks(config.batch_size.max(1)).collect();
            let last = chunks.len() - 1;
            for (index, chunk) in chunks.into_iter().enumerate() {
                // The last chunk moves the checkpoint over the events of other types after it.
                let to = if index == last {
                    scanned_to
                } else {
                    chunk[chunk.len() - 1].position
                };
                match self.apply_with_retries(chunk, from, to, behind).await? {
                    Applied::Moved(at) => from = at,
                    Applied::Lost => return Ok(Step::Lost),
                    Applied::Failed => return Ok(Step::Failed),
                }
            }
        }
        if let Some(row) = unreadable {
            let failure = Failure {
                position: row.position,
                stream_id: row.stream_id,
                version: 0,
                event_id: row.event_id.unwrap_or_default(),
                error: format!("the stored row cannot be read: {}", row.error),
                attempts: 1,
            };
            return Ok(match self.stop_at(failure).await? {
                Applied::Failed => Step::Failed,
                Applied::Moved(_) | Applied::Lost => Step::Lost,
            });
        }
        Ok(if from == position {
            Step::Idle
        } else {
            Step::Moved(from)
        })
    }

    /// Applies `events` (moving the checkpoint from `from` to `to`); on a handler failure,
    /// commits the events before it, retries the failing one with backoff, and stops the
    /// projection as failed when it keeps failing.
    async fn apply_with_retries(
        &self,
        events: &[RecordedEvent],
        from: GlobalPosition,
        to: GlobalPosition,
        behind: usize,
    ) -> Result<Applied> {
        let (failed_at, error) = match self.apply(events, from, to, behind).await? {
            Ok(applied) => return Ok(applied),
            Err(failure) => failure,
        };
        // Commit what came before the failing event.
        let mut from = from;
        if failed_at > 0 && self.entry.kind == ProjectionKind::Subscription {
            // Its handlers ran: move the checkpoint past them rather than run them again.
            let at = events[failed_at - 1].position;
            let moved = self
                .runner
                .checkpoints
                .advance(&self.key, &self.advance(from, at, failed_at as u64))
                .await;
            match moved {
                Ok(()) => from = at,
                Err(error) => return self.moved_elsewhere(error),
            }
        } else if failed_at > 0 {
            let before = &events[..failed_at];
            let at = before[before.len() - 1].position;
            match Box::pin(self.apply_with_retries(before, from, at, behind)).await? {
                Applied::Moved(moved) => from = moved,
                other => return Ok(other),
            }
        }
        let event = &events[failed_at];
        let config = self.config();
        let mut attempts = 1;
        let mut error = error;
        let single = std::slice::from_ref(event);
        while !matches!(error, HandlerError::Decode(_)) && attempts < config.max_attempts {
            tokio::time::sleep(config.retry.delay(attempts)).await;
            attempts += 1;
            let at = if failed_at + 1 == events.len() {
                to
            } else {
                event.position
            };
            match self.apply(single, from, at, behind).await? {
                Ok(Applied::Moved(moved)) => {
                    if failed_at + 1 == events.len() {
                        return Ok(Applied::Moved(moved));
                    }
                    let rest = &events[failed_at + 1..];
                    return Box::pin(self.apply_with_retries(rest, moved, to, behind)).await;
                }
                Ok(other) => return Ok(other),
                Err((_, again)) => error = again,
            }
        }
        self.stop_at(Failure::of(event, error.to_string(), attempts))
            .await
    }

    /// Stops the projection as failed at `failure`, visibly.
    async fn stop_at(&self, failure: Failure) -> Result<Applied> {
        tracing::error!(
            projection = %self.key,
            position = %failure.position,
            stream = %failure.stream_id,
            version = failure.version,
            error = %failure.error,
            "projection stopped at an event it cannot apply"
        );
        crate::telemetry::record_projection_failure(self.entry.name);
        match self
            .runner
            .checkpoints
            .fail(&self.key, self.config().owner, &failure)
            .await
        {
            Ok(()) => Ok(Applied::Failed),
            Err(Error::Projection { .. }) => Ok(Applied::Lost),
            Err(error) => Err(error),
        }
    }

    /// Applies `events` in one unit of work (read model) or one after the other (subscription)
    /// and moves the checkpoint; `Err((index, error))` when the handler failed at `index`
    /// (nothing of the batch is kept for a read model).
    async fn apply(
        &self,
        events: &[RecordedEvent],
        from: GlobalPosition,
        to: GlobalPosition,
        behind: usize,
    ) -> Result<std::result::Result<Applied, (usize, HandlerError)>> {
        let span = tracing::info_span!(
            "dtx.projection.batch",
            projection = self.entry.name,
            version = self.entry.version,
            partition = self.key.partition,
            events = events.len(),
            from = %from,
            to = %to,
        );
        async {
            let mut invalidations = Invalidations::default();
            let count = events.len() as u64;
            let moved = match self.entry.kind {
                ProjectionKind::ReadModel => {
                    let mut uow = self.runner.checkpoints.begin().await?;
                    // A new (or reset) checkpoint starts from an empty read model. The clear
                    // hook clears the whole read model, so a partitioned projection is cleared
                    // only by `reset`, for all its partitions at once.
                    if from == GlobalPosition::START
                        && self.key.partitions == 1
                        && let Err(error) = self.entry.projection.clear(&mut *uow).await
                    {
                        let _ = uow.rollback_boxed().await;
                        return Ok(Err((0, error)));
                    }
                    for (index, event) in events.iter().enumerate() {
                        let handled = self
                            .entry
                            .projection
                            .handle(event, Some(&mut *uow), &mut invalidations)
                            .await;
                        if let Err(error) = handled {
                            let _ = uow.rollback_boxed().await;
                            return Ok(Err((index, error)));
                        }
                    }
                    let moved = self
                        .runner
                        .checkpoints
                        .advance_in(&mut *uow, &self.key, &self.advance(from, to, count))
                        .await;
                    if let Err(error) = moved {
                        let _ = uow.rollback_boxed().await;
                        return self.moved_elsewhere(error).map(Ok);
                    }
                    match uow.commit_boxed().await {
                        Ok(()) => Applied::Moved(to),
                        // The checkpoint tells on the next lease which it was.
                        Err(Error::CommitOutcomeUnknown { .. }) => Applied::Lost,
                        // A handler's statement failed and aborted the transaction (and the
                        // handler did not say): try the events one by one to find it.
                        Err(error @ Error::RolledBack { .. }) => {
                            return Ok(Err((0, HandlerError::failed(error))));
                        }
                        Err(error) => return self.moved_elsewhere(error).map(Ok),
                    }
                }
                ProjectionKind::Subscription => {
                    for (index, event) in events.iter().enumerate() {
                        let handled = self
                            .entry
                            .projection
                            .handle(event, None, &mut invalidations)
                            .await;
                        if let Err(error) = handled {
                            return Ok(Err((index, error)));
                        }
                    }
                    let moved = self
                        .runner
                        .checkpoints
                        .advance(&self.key, &self.advance(from, to, count))
                        .await;
                    if let Err(error) = moved {
                        return self.moved_elsewhere(error).map(Ok);
                    }
                    Applied::Moved(to)
                }
            };
            if let Some(bus) = &self.runner.queries {
                invalidations.apply(bus);
            }
            let oldest = events[0].recorded_at;
            let lag = (chrono::Utc::now() - oldest).to_std().unwrap_or_default();
            crate::telemetry::record_projection_batch(
                self.entry.name,
                events.len(),
                lag,
                behind.saturating_sub(events.len()),
            );
            Ok(Ok(moved))
        }
        .instrument(span)
        .await
    }

    /// A checkpoint move that failed: another runner took the lease, or an operator moved the
    /// checkpoint (then take the lease again); anything else is an error.
    fn moved_elsewhere(&self, error: Error) -> Result<Applied> {
        match error {
            Error::Projection { .. } | Error::Conflict { .. } => {
                tracing::debug!(projection = %self.key, %error, "batch not applied; taking the lease again");
                Ok(Applied::Lost)
            }
            error => Err(error),
        }
    }
}

/// What one read of the feed did.
enum Step {
    /// The checkpoint moved here.
    Moved(GlobalPosition),
    /// Nothing new.
    Idle,
    /// The lease or the checkpoint's position was lost.
    Lost,
    /// The projection stopped as failed.
    Failed,
}
