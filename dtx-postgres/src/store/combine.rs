//! Write combining: appends issued concurrently by one process to different streams share one
//! statement and one commit while an earlier append is in flight.
//!
//! A caller that finds a free slot (fewer than [`Combining::max_in_flight`] statements in
//! flight, nobody waiting, its stream not being written) sends its append at once, alone, with
//! the plain statement: no added wait. Otherwise it waits in a queue. Whenever a statement
//! comes back, the queue is taken as one batch (the oldest append of each stream first, up to
//! the batch's bounds) and sent as one `append_combined` statement (see
//! `statements::combined_statement`) by a task of its own, so that a caller that gives up
//! waiting never strands the others. Each append of a batch gets its own outcome.

use super::{Batch, PgEventStore};
use dtx::{AppendResult, Error, ExpectedVersion, Result, StreamId};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// How a [`PgEventStore`] combines concurrent appends ([`PgEventStore::with_combining`]).
///
/// On by default ([`Combining::on`], also `Combining::default()`): a caller alone sends its
/// append at once, with the plain statement; callers that append while
/// [`max_in_flight`](Self::max_in_flight) statements are in flight wait for one of them and then
/// go together, one statement and one commit for all of them, each with its own expectation and
/// its own outcome. With eight writers each waiting for its append, their appends then go as one
/// batch per round trip instead of eight statements and eight commits (see the README's
/// benchmarks). [`Combining::off`] sends every append alone.
///
/// ```
/// use dtx_postgres::Combining;
///
/// let options = Combining::on().max_in_flight(2).max_appends(64);
/// assert!(options.is_enabled());
/// assert!(Combining::default().is_enabled());
/// assert!(!Combining::off().is_enabled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combining {
    enabled: bool,
    max_in_flight: usize,
    max_appends: usize,
    max_events: usize,
    max_bytes: usize,
    linger: Duration,
}

impl Default for Combining {
    /// [`Combining::on`].
    fn default() -> Self {
        Self::on()
    }
}

impl Combining {
    /// No combining: every append is a statement and a commit of its own.
    pub const fn off() -> Self {
        Self {
            enabled: false,
            ..Self::on()
        }
    }

    /// Combining on (the default): one statement in flight, batches of up to 256 appends, 4096
    /// events and 8 MiB of payload.
    pub const fn on() -> Self {
        Self {
            enabled: true,
            max_in_flight: 1,
            max_appends: 256,
            max_events: 4096,
            max_bytes: 8 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    /// Whether appends are combined.
    pub const fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How many append statements (alone or combined) may be in flight at once before a caller
    /// waits to be combined (at least 1; 1 by default). More lets more appends go alone, each
    /// with its own commit, and splits waiting writers between statements; one makes the
    /// biggest batches (with eight writers, 1.38–1.50 of raw writers at two, 1.49–1.77 at one).
    #[must_use]
    pub const fn max_in_flight(mut self, statements: usize) -> Self {
        self.max_in_flight = if statements == 0 { 1 } else { statements };
        self
    }

    /// The most appends in one combined statement (at least 1; 256 by default).
    #[must_use]
    pub const fn max_appends(mut self, appends: usize) -> Self {
        self.max_appends = if appends == 0 { 1 } else { appends };
        self
    }

    /// The most events in one combined statement (4096 by default); an append with more goes
    /// alone.
    #[must_use]
    pub const fn max_events(mut self, events: usize) -> Self {
        self.max_events = events;
        self
    }

    /// The most payload bytes in one combined statement (8 MiB by default); an append with more
    /// goes alone.
    #[must_use]
    pub const fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How long an append that finds a free slot waits for others to join it (none by default:
    /// it goes at once, alone). With a linger, such an append queues and its batch leaves when
    /// the linger ends; appends that queue while statements are in flight leave when one comes
    /// back, as without. It trades each lone append's latency for fewer commits where writers
    /// come one at a time but close together.
    ///
    /// ```
    /// use dtx_postgres::Combining;
    /// use std::time::Duration;
    ///
    /// let options = Combining::on().linger(Duration::from_millis(2));
    /// assert_eq!(options.lingers(), Duration::from_millis(2));
    /// assert_eq!(Combining::on().lingers(), Duration::ZERO);
    /// ```
    #[must_use]
    pub const fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The linger ([`Combining::linger`]).
    pub const fn lingers(&self) -> Duration {
        self.linger
    }
}

/// What a [`PgEventStore`]'s combining has done so far ([`PgEventStore::combining_stats`]),
/// shared by its clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CombiningStats {
    /// Statements that carried two appends or more.
    pub combined_statements: u64,
    /// The appends those statements carried.
    pub combined_appends: u64,
    /// The most appends one statement carried.
    pub largest_batch: usize,
    /// Appends sent alone (a caller with a free slot, or a batch of one).
    pub alone: u64,
    /// Combined statements the database refused as a whole (a race with a writer outside the
    /// batch on a unique constraint, a deadlock, a value it rejected), whose appends then went
    /// one by one.
    pub split: u64,
    /// Appends waiting to be sent now.
    pub waiting: usize,
}

/// One append waiting in the queue.
pub(super) struct Pending {
    pub(super) stream: StreamId,
    pub(super) expected: ExpectedVersion,
    pub(super) batch: Batch,
    bytes: usize,
    reply: oneshot::Sender<Result<AppendResult>>,
}

impl Pending {
    /// Hands the outcome to the caller (gone callers are not waited for).
    pub(super) fn reply(self, outcome: Result<AppendResult>) {
        let _ = self.reply.send(outcome);
    }
}

/// The queue and what is in flight.
#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    in_flight: usize,
    /// The streams of the appends in flight.
    writing: HashSet<StreamId>,
    /// A linger is running ([`Combining::linger`]): the queue leaves when it ends.
    lingering: bool,
}

/// The combiner of a [`PgEventStore`] (shared by its clones).
pub(super) struct Combiner {
    options: Combining,
    state: Mutex<State>,
    combined_statements: AtomicU64,
    combined_appends: AtomicU64,
    largest: AtomicUsize,
    alone: AtomicU64,
    split: AtomicU64,
}

/// How many times a task sending batches yields to the callers it answered before it takes
/// the next batch (it stops as soon as as many appends wait).
const YIELDS: usize = 3;

/// How a caller goes in.
pub(super) enum Entry<'a> {
    /// Alone, now: send the append and drop the slot when done.
    Alone(Slot<'a>, Batch),
    /// Queued: the outcome arrives here.
    Queued(oneshot::Receiver<Result<AppendResult>>),
}

/// A slot in flight held by a caller sending alone; given back on drop (also when the caller
/// gives up), which sends whatever waits meanwhile.
pub(super) struct Slot<'a> {
    store: &'a PgEventStore,
    stream: StreamId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let combiner = &self.store.combiner;
        let next = {
            let mut state = combiner.lock();
            state.in_flight -= 1;
            state.writing.remove(&self.stream);
            combiner.next_batch(&mut state)
        };
        if let Some(batch) = next {
            self.store.clone().spawn_drain(batch);
        }
    }
}

/// The slot of a batch being sent by [`PgEventStore::drain`]: given back by
/// [`BatchSlot::finish`], or on drop if sending it ended otherwise (a panic, the runtime
/// shutting down), so that the queue never stalls.
struct BatchSlot<'a> {
    store: &'a PgEventStore,
    streams: Vec<StreamId>,
    finished: bool,
}

impl BatchSlot<'_> {
    /// Gives the slot back; the next batch, which this slot's task sends.
    fn finish(mut self) -> Option<Vec<Pending>> {
        self.finished = true;
        self.store.combiner.finish(&self.streams)
    }
}

impl Drop for BatchSlot<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Some(batch) = self.store.combiner.finish(&self.streams)
        {
            self.store.clone().spawn_drain(batch);
        }
    }
}

impl Combiner {
    pub(super) fn new(options: Combining) -> Self {
        Self {
            options,
            state: Mutex::default(),
            combined_statements: AtomicU64::new(0),
            combined_appends: AtomicU64::new(0),
            largest: AtomicUsize::new(0),
            alone: AtomicU64::new(0),
            split: AtomicU64::new(0),
        }
    }

    pub(super) fn options(&self) -> Combining {
        self.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere cannot leave it half
        // changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stats(&self) -> CombiningStats {
        CombiningStats {
            combined_statements: self.combined_statements.load(Ordering::Relaxed),
            combined_appends: self.combined_appends.load(Ordering::Relaxed),
            largest_batch: self.largest.load(Ordering::Relaxed),
            alone: self.alone.load(Ordering::Relaxed),
            split: self.split.load(Ordering::Relaxed),
            waiting: self.lock().queue.len(),
        }
    }

    /// The next batch from the queue, if a slot is free and an append waits whose stream is
    /// not being written: the oldest append of each stream, in queue order, within the bounds.
    /// Takes the slot and marks the streams.
    fn next_batch(&self, state: &mut State) -> Option<Vec<Pending>> {
        if state.in_flight >= self.options.max_in_flight
            || state.queue.is_empty()
            || state.lingering
        {
            return None;
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(state.queue.len());
        let mut seen = HashSet::new();
        let (mut events, mut bytes) = (0, 0);
        while let Some(pending) = state.queue.pop_front() {
            let fits = taken.is_empty()
                || (taken.len() < self.options.max_appends
                    && events + pending.batch.ids.len() <= self.options.max_events
                    && bytes + pending.bytes <= self.options.max_bytes);
            // A stream seen earlier in the queue keeps its place behind that append.
            let free =
                seen.insert(pending.stream.clone()) && !state.writing.contains(&pending.stream);
            if fits && free {
                events += pending.batch.ids.len();
                bytes += pending.bytes;
                taken.push(pending);
            } else {
                kept.push_back(pending);
                if !fits && taken.len() >= self.options.max_appends {
                    break;
                }
            }
        }
        kept.extend(state.queue.drain(..));
        state.queue = kept;
        if taken.is_empty() {
            return None;
        }
        state.in_flight += 1;
        for pending in &taken {
            state.writing.insert(pending.stream.clone());
        }
        Some(taken)
    }

    /// Counts a statement that carried `appends`.
    pub(super) fn count(&self, appends: usize) {
        if appends > 1 {
            self.combined_statements.fetch_add(1, Ordering::Relaxed);
            self.combined_appends
                .fetch_add(appends as u64, Ordering::Relaxed);
            self.largest.fetch_max(appends, Ordering::Relaxed);
        } else {
            self.alone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a combined statement the database refused as a whole.
    pub(super) fn count_split(&self) {
        self.split.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a linger; the next batch, if one can go.
    fn end_linger(&self) -> Option<Vec<Pending>> {
        let mut state = self.lock();
        state.lingering = false;
        self.next_batch(&mut state)
    }

    /// Gives back the slot of a finished batch; the next batch, if one can go.
    fn finish(&self, done: &[StreamId]) -> Option<Vec<Pending>> {
        let mut state = self.lock();
        state.in_flight -= 1;
        for stream in done {
            state.writing.remove(stream);
        }
        self.next_batch(&mut state)
    }
}

impl PgEventStore {
    /// Enters the combiner with an append (checked already).
    pub(super) fn enter(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: Batch,
    ) -> Entry<'_> {
        let combiner = &self.combiner;
        let (receiver, next) = {
            let mut state = combiner.lock();
            let free = state.queue.is_empty()
                && state.in_flight < combiner.options.max_in_flight
                && !state.writing.contains(stream);
            let linger = combiner.options.linger;
            // A linger needs a runtime to wait on; outside one (only when it is shutting down)
            // the append goes alone.
            let runtime = if linger.is_zero() {
                None
            } else {
                tokio::runtime::Handle::try_current().ok()
            };
            let lingers = runtime.is_some();
            if free && !lingers {
                state.in_flight += 1;
                state.writing.insert(stream.clone());
                drop(state);
                combiner.count(1);
                return Entry::Alone(
                    Slot {
                        store: self,
                        stream: stream.clone(),
                    },
                    batch,
                );
            }
            let (reply, receiver) = oneshot::channel();
            let bytes = batch.data.iter().map(String::len).sum();
            state.queue.push_back(Pending {
                stream: stream.clone(),
                expected,
                batch,
                bytes,
                reply,
            });
            if let Some(runtime) = runtime.filter(|_| free && !state.lingering) {
                state.lingering = true;
                drop(state);
                self.clone().spawn_linger(&runtime, linger);
                return Entry::Queued(receiver);
            }
            (receiver, combiner.next_batch(&mut state))
        };
        if let Some(batch) = next {
            self.clone().spawn_drain(batch);
        }
        Entry::Queued(receiver)
    }

    /// Lets the queue leave after `linger`, on a task of its own (also if that task ends
    /// early, as when its runtime shuts down: see [`LingerEnd`]).
    fn spawn_linger(self, runtime: &tokio::runtime::Handle, linger: Duration) {
        runtime.spawn(async move {
            let end = LingerEnd(Some(self));
            tokio::time::sleep(linger).await;
            if let Some((store, batch)) = end.now() {
                store.drain(batch).await;
            }
        });
    }

    /// Sends `batch` (and the batches after it) on a task of its own. Outside a runtime (only
    /// when one is shutting down) its callers are answered by their dropped replies:
    /// [`Error::OutcomeUnknown`], as for any append whose task ended.
    fn spawn_drain(self, batch: Vec<Pending>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.drain(batch));
        }
    }

    /// Sends `batch`, then every batch that can go after it, until the queue has nothing that
    /// can go now (a later statement's return sends it then), on one connection kept while
    /// batches keep coming (see [`Lane`]).
    async fn drain(self, mut batch: Vec<Pending>) {
        let mut lane = Lane::default();
        loop {
            let slot = BatchSlot {
                store: &self,
                streams: batch.iter().map(|p| p.stream.clone()).collect(),
                finished: false,
            };
            let answered = batch.len();
            self.send(batch, &mut lane).await;
            // Lets the callers just answered queue their next appends, to go together: a few
            // turns of the scheduler at most (callers woken on another worker thread take a
            // moment), fewer when as many appends wait already.
            for _ in 0..YIELDS {
                tokio::task::yield_now().await;
                if self.combiner.lock().queue.len() >= answered {
                    break;
                }
            }
            match slot.finish() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// Sends a batch from the queue on `lane` and answers each of its callers. The lane's
    /// connection serves combined statements only: before anything else (an append alone, an
    /// append settled after its batch), it goes back to the pool, so that a task sending
    /// batches never holds one connection while it waits for another (on a pool of one, that
    /// would wait for ever).
    async fn send(&self, mut batch: Vec<Pending>, lane: &mut Lane) {
        if batch.len() == 1 {
            lane.release();
            self.combiner.count(1);
            if let Some(pending) = batch.pop() {
                let outcome = self
                    .append_alone(&pending.stream, pending.expected, &pending.batch)
                    .await;
                pending.reply(outcome);
            }
            return;
        }
        self.combiner.count(batch.len());
        let outcome = match lane.connection(&self.pool).await {
            Ok(conn) => self.append_combined(conn, &batch).await,
            Err(error) => Err(Refused::Failed(error)),
        };
        if !matches!(&outcome, Ok(inserted) if inserted.iter().all(|i| !i.0.is_empty())) {
            // Something to settle or to send again, or a connection in doubt.
            lane.release();
        }
        match outcome {
            Ok(inserted) => {
                // The appends that inserted are answered first: settling a refused one takes a
                // round trip of its own, which the others need not wait for.
                let (done, refused): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .zip(inserted)
                    .partition(|(_, inserted)| !inserted.0.is_empty());
                for (pending, inserted) in done.into_iter().chain(refused) {
                    let outcome = self.combined_outcome(&pending, inserted).await;
                    pending.reply(outcome);
                }
            }
            Err(Refused::Unknown(error)) => {
                let message = error.to_string();
                let size = batch.len();
                for pending in batch {
                    let source = std::io::Error::other(format!(
                        "the connection failed after a combined append of {size} appends was \
                         sent: {message}"
                    ));
                    let stream = pending.stream.clone();
                    pending.reply(Err(Error::OutcomeUnknown {
                        stream,
                        source: Box::new(source),
                    }));
                }
            }
            Err(Refused::Whole(error)) => {
                tracing::debug!(%error, appends = batch.len(), "a combined append was refused; appending one by one");
                self.combiner.count_split();
                for pending in batch {
                    let outcome = self
                        .append_alone(&pending.stream, pending.expected, &pending.batch)
                        .await;
                    pending.reply(outcome);
                }
            }
            Err(Refused::Failed(error)) => {
                let message = error.to_string();
                for pending in batch {
                    let error = Error::storage(format!(
                        "a combined append to stream `{}` was not sent: {message}",
                        pending.stream
                    ));
                    pending.reply(Err(error));
                }
            }
        }
    }
}

/// The connection of a task sending batches ([`PgEventStore::drain`]): taken from the pool for
/// its first combined statement and kept while batches keep coming, given back (dropped) when
/// the queue has nothing more for it. A steady stream of batches then pays no pool checkout,
/// which costs a round trip of its own on a pool that tests connections as it hands them out
/// (sqlx's default, `test_before_acquire`): with the statement's own round trip and commit,
/// that is most of what a batch waits for. An idle store holds no connection.
#[derive(Default)]
struct Lane(Option<PoolConnection<Postgres>>);

impl Lane {
    /// Gives the lane's connection back to the pool.
    fn release(&mut self) {
        self.0 = None;
    }

    /// The lane's connection, taken from `pool` if it has none.
    async fn connection(&mut self, pool: &PgPool) -> sqlx::Result<&mut PgConnection> {
        let conn = match self.0.take() {
            Some(conn) => conn,
            None => pool.acquire().await?,
        };
        Ok(&mut **self.0.insert(conn))
    }
}

/// The end of a linger: ends it when the linger's task does, whichever way, so that the queue
/// never stays held.
struct LingerEnd(Option<PgEventStore>);

impl LingerEnd {
    /// Ends the linger: the batch that can go now, to be sent by the caller.
    fn now(mut self) -> Option<(PgEventStore, Vec<Pending>)> {
        let store = self.0.take()?;
        let next = store.combiner.end_linger();
        next.map(|batch| (store, batch))
    }
}

impl Drop for LingerEnd {
    fn drop(&mut self) {
        if let Some(store) = self.0.take()
            && let Some(batch) = store.combiner.end_linger()
        {
            store.spawn_drain(batch);
        }
    }
}

/// The events one append of a combined statement inserted (none: it was refused).
#[derive(Default)]
pub(super) struct Inserted(pub(super) Vec<super::Appended>);

/// Why a combined statement gave no outcome per append.
pub(super) enum Refused {
    /// The connection failed after it was sent: it may have committed.
    Unknown(sqlx::Error),
    /// The database refused it as a whole: nothing was written.
    Whole(sqlx::Error),
    /// It was never sent (no connection): nothing was written.
    Failed(sqlx::Error),
}
