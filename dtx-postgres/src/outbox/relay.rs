//! [`OutboxRelay`]: its passes (the feed, then the backlog table) and the loop that runs them.

use super::PgOutbox;
use super::publish::Failure;
use super::wake::WakeLock;
use dtx::outbox::{Publisher, RelayOptions};
use dtx::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, Postgres};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What one [`OutboxRelay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Messages published and marked.
    pub published: usize,
    /// Publish attempts that failed (each rescheduled with backoff or dead-lettered).
    pub failed: usize,
    /// Of those, messages dead-lettered now.
    pub dead: usize,
    /// Events taken from the global feed: published, set aside in the backlog table, or passed
    /// over (events appended without the outbox).
    pub from_feed: usize,
    /// Whether committed events wait in the feed for an older transaction that is still running
    /// (the feed never passes a position such a transaction could still fill).
    pub waiting: bool,
    /// Whether another relay was reading the feed: this pass did not look at it (it worked the
    /// backlog table only), so even an idle pass cannot tell whether the feed has events left.
    pub feed_held: bool,
}

impl RelayPass {
    /// Whether the pass did anything.
    pub fn is_idle(&self) -> bool {
        self.published == 0 && self.failed == 0 && self.from_feed == 0
    }

    fn add(&mut self, other: Self) {
        self.published += other.published;
        self.failed += other.failed;
        self.dead += other.dead;
        self.from_feed += other.from_feed;
        self.waiting |= other.waiting;
        self.feed_held |= other.feed_held;
    }

    /// Counts a failed attempt.
    pub(super) fn count_failure(&mut self, failure: Failure) {
        self.failed += 1;
        self.dead += usize::from(failure.is_dead());
    }
}

/// Publishes the PostgreSQL outbox: batches claimed under per-key advisory locks, woken by
/// `LISTEN/NOTIFY`, polling only as a fallback; see the [module docs](crate::outbox) for the
/// guarantees. Run any number of relays, in any number of processes.
#[derive(Clone)]
pub struct OutboxRelay {
    pub(super) outbox: PgOutbox,
    pub(super) publisher: Arc<dyn Publisher>,
    pub(super) options: RelayOptions,
    /// The last key the previous pass looked at: the next one goes on after it, so every key
    /// gets its turn however many keys have work.
    pub(super) cursor: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The statement that opens a relay's transaction. Its commit does not wait for the WAL flush:
/// what it records is that messages were published, and if a server crash loses that record
/// the messages are published again, which at-least-once delivery allows. (A feed pass opens
/// its transaction with `OutboxSql::feed_begin`, which does the same and also tries the feed's
/// lock.)
pub(super) const RELAY_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";

impl OutboxRelay {
    /// A relay of `outbox` (see [`PgOutbox::relay`]).
    pub(super) fn new(
        outbox: PgOutbox,
        publisher: Arc<dyn Publisher>,
        options: RelayOptions,
    ) -> Self {
        Self {
            outbox,
            publisher,
            options,
            cursor: Arc::default(),
        }
    }

    /// The relay's settings.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }

    /// The outbox it publishes.
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }

    /// One pass: a batch from the global feed (if no other relay is reading it), then a batch
    /// from the backlog table (if it has rows), each in its own transaction.
    ///
    /// The pass runs as a task of its own, so dropping this future (an aborted relay task, a
    /// timeout) never cuts a transaction short between its statements: with sqlx, a `BEGIN`
    /// cancelled in flight leaves the connection inside a transaction when it goes back to the
    /// pool. The pass finishes, and the future only stops waiting for it.
    pub async fn run_once(&self) -> Result<RelayPass> {
        self.spawn_pass(None).await
    }

    /// [`run_once`](Self::run_once), on the connection `held` keeps if it keeps one (and kept
    /// there after a pass that succeeded).
    async fn spawn_pass(&self, held: Option<Held>) -> Result<RelayPass> {
        let relay = self.clone();
        tokio::spawn(async move { relay.pass(held).await })
            .await
            .map_err(Error::storage)?
    }

    /// The pass [`run_once`](Self::run_once) runs, on the connection `held` keeps or one from the
    /// pool. A pass that fails gives its connection back to the pool (which checks it before
    /// handing it out again).
    async fn pass(&self, held: Option<Held>) -> Result<RelayPass> {
        // Refuses, at start-up, a feed restored from a logical dump (see `crate::check_feed`).
        self.outbox.guard.ensure(&self.outbox.pool).await?;
        let kept = held.as_ref().and_then(take);
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.outbox.pool.acquire().await.map_err(Error::storage)?,
        };
        let (mut pass, backlog) = self.feed_pass(&mut conn).await?;
        if backlog {
            pass.add(self.table_pass(&mut conn).await?);
        }
        // Kept for the next pass unless that would take the pool's last connection: then others
        // may be waiting for one, and get their turn between passes.
        if let Some(held) = held
            && self.outbox.pool.num_idle() > 0
        {
            *held.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        }
        Ok(pass)
    }

    /// Begins a pass's transaction on `conn`: its commit need not wait for the WAL flush (see
    /// `RELAY_BEGIN`).
    pub(super) async fn begin<'c>(
        &self,
        conn: &'c mut PgConnection,
    ) -> Result<sqlx::Transaction<'c, Postgres>> {
        sqlx::Connection::begin_with(conn, RELAY_BEGIN)
            .await
            .map_err(Error::storage)
    }

    /// Runs passes until one finds nothing to do (for tests and examples); returns how many
    /// messages it published. Committed events that wait in the feed for an older transaction
    /// still running are waited for, and so is another relay reading the feed: a pass that
    /// could not read it is never the last, since that relay may stop after its batch (a relay
    /// shut down, or the last pass of an aborted one) and leave the rest of the feed to this one.
    pub async fn run_until_idle(&self) -> Result<usize> {
        let mut total = 0;
        let mut wait = WaitForFeed::default();
        let held = Held::default();
        loop {
            let pass = self.spawn_pass(Some(Arc::clone(&held))).await?;
            total += pass.published;
            if pass.is_idle() {
                if !pass.waiting && !pass.feed_held {
                    return Ok(total);
                }
                drop(take(&held));
                wait.sleep().await;
            } else {
                wait = WaitForFeed::default();
            }
        }
    }

    /// One pass on `held`'s connection, with a failure logged (and counted as idle):
    /// [`run`](Self::run) keeps going.
    async fn pass_logged(&self, held: &Held) -> RelayPass {
        self.spawn_pass(Some(Arc::clone(held)))
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "outbox relay pass failed");
                RelayPass::default()
            })
    }

    /// Runs until `shutdown` completes: publishes while there is work (a pass that filled its
    /// batch, or found a single message, is followed at once by the next; one that found
    /// several, after [`RelayOptions::linger`]), then arms the wake-up and waits for a `NOTIFY` (or
    /// [`RelayOptions::poll_interval`] at most). Deletes published rows past
    /// [`RelayOptions::retention`] about once a minute.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut wake = WakeLock::new(&self.outbox.pool, Arc::clone(&self.outbox.sql));
        let channel = self.outbox.notify_channel().await?;
        // The listener's connection is its own, outside the pool, as the wake lock's is.
        let mut listener = PgListener::connect_with(&crate::sql::own_connection(&self.outbox.pool))
            .await
            .map_err(Error::storage)?;
        listener.listen(&channel).await.map_err(Error::storage)?;
        let batch = self.options.batch_size.max(1);
        // The connection kept from one pass to the next that follows at once: no pool checkout
        // (and no test of the connection, sqlx's default) for each. Given back before the relay
        // waits for anything, so that it never holds a pooled connection while it sleeps.
        let held = Held::default();
        let mut purged: Option<Instant> = None;
        let mut waiting = WaitForFeed::default();
        loop {
            // Busy: passes until one finds nothing. A batch in flight always finishes (it is one
            // transaction), so a graceful stop never leaves published rows unmarked.
            loop {
                let stop = tokio::select! {
                    biased;
                    () = &mut shutdown => true,
                    () = std::future::ready(()) => false,
                };
                if stop {
                    return Ok(());
                }
                let pass = self.pass_logged(&held).await;
                // Writes keep coming: let the next batch fill a little instead of claiming a
                // handful at a time. (A lone message is followed by a look at once, so a quiet
                // outbox publishes each write as soon as it commits.)
                let lingers = handled(&pass) > 1 && handled(&pass) < batch;
                if pass.is_idle() || lingers {
                    drop(take(&held));
                }
                if pass.is_idle() {
                    if !pass.waiting {
                        break;
                    }
                    // Committed events wait for an older transaction: look again shortly.
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = waiting.sleep() => {}
                    }
                    continue;
                }
                waiting = WaitForFeed::default();
                if lingers {
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(self.options.linger) => {}
                    }
                }
            }
            if let Some(retention) = self.options.retention
                && !retention.is_zero()
                && purged.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
            {
                purged = Some(Instant::now());
                if let Err(error) = self
                    .outbox
                    .purge_published(retention, self.options.retention_batch)
                    .await
                {
                    tracing::warn!(%error, "outbox retention failed");
                }
            }
            // Idle: arm the wake-up, so that every outbox write from now on notifies, then look
            // once more. Arming waits for the writes that found it unarmed (they hold the wake
            // lock until they commit), so that last look sees all of them: no write is missed.
            let armed = wake.arm().await;
            let pass = self.pass_logged(&held).await;
            drop(take(&held));
            if pass.is_idle() && !pass.waiting {
                tokio::select! {
                    () = &mut shutdown => {
                        wake.disarm(armed).await;
                        return Ok(());
                    }
                    woken = listener.recv() => {
                        if let Err(error) = woken {
                            tracing::warn!(%error, "outbox listener failed; polling");
                            tokio::time::sleep(self.options.poll_interval).await;
                        }
                    }
                    () = tokio::time::sleep(self.options.poll_interval) => {}
                }
            }
            // Busy again: writes stop notifying.
            wake.disarm(armed).await;
        }
    }
}

/// The connection a relay keeps between passes while it is busy ([`OutboxRelay::run`],
/// [`OutboxRelay::run_until_idle`]) and the pool has others idle: none while it is idle. Each
/// run has its own, so a relay task that is aborted gives its connection back once its last
/// pass has finished.
type Held = Arc<Mutex<Option<PoolConnection<Postgres>>>>;

/// The messages a pass published or failed to publish.
fn handled(pass: &RelayPass) -> usize {
    pass.published + pass.failed
}

/// Takes the connection `held` keeps, if any.
fn take(held: &Held) -> Option<PoolConnection<Postgres>> {
    held.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// The pause before looking again at a feed whose committed events wait for an older
/// transaction: 1 ms, doubling up to 50 ms while it lasts.
struct WaitForFeed(Duration);

impl Default for WaitForFeed {
    fn default() -> Self {
        Self(Duration::from_millis(1))
    }
}

impl WaitForFeed {
    async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
    }
}
