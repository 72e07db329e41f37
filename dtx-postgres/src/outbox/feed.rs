//! The first step of a relay pass: publishing the next batch of the global feed and moving its
//! checkpoint (see [`crate::outbox`], Reading).

use super::message::{Failed, MessageRow, missing_checkpoint};
use super::publish::{Failure, Published, publish};
use super::relay::{OutboxRelay, RelayPass};
use crate::sql::{count, to_i32};
use dtx::outbox::OutboxMessage;
use dtx::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgConnection, Postgres};
use std::collections::HashSet;

/// The feed pass's state, as every row of the `feed_read` statement carries it.
#[derive(sqlx::FromRow, Clone, Copy, Default)]
struct FeedState {
    /// Whether this relay reads the feed (no other relay holds its lock).
    leader: bool,
    /// Whether the backlog table has any row.
    backlog: bool,
    /// Whether the feed's checkpoint is there.
    checkpoint: bool,
}

/// A row of the `feed_read` statement: the pass's state, and an event of the feed when
/// `present`.
#[derive(sqlx::FromRow)]
struct FeedRow {
    #[sqlx(flatten)]
    state: FeedState,
    /// Whether the row carries an event (the single row of a pass that reads no event does
    /// not).
    present: bool,
    commit_order: i64,
    /// Below the oldest running transaction: no event can still commit before it.
    ready: bool,
    /// Appended with the outbox.
    outbox: bool,
    /// Whether this relay took the stream's lock (for a ready outbox event only).
    locked: Option<bool>,
    /// Whether the stream has rows in the backlog table (for a ready outbox event only).
    parked: Option<bool>,
    #[sqlx(flatten)]
    message: MessageRow,
}

/// An event the feed pass writes to the backlog table instead of publishing it.
enum SetAside {
    /// Behind an earlier row of its stream (in the table, or failed in this pass), or its
    /// stream is held by another relay: pending, due at once.
    Behind(OutboxMessage),
    /// Its publish failed (or it could not be read): retried with backoff, or dead.
    Failed(Failed),
}

/// A feed pass's events so far, sorted batch by batch: those to publish now, and those set
/// aside.
#[derive(Default)]
struct Sorted {
    /// The keys whose events are set aside from here on: an event of the key was (it is
    /// behind rows in the backlog table, held by another relay, unreadable, or it failed).
    aside: HashSet<String>,
    /// The outbox events of the batch to publish, in feed order.
    events: Vec<OutboxMessage>,
    /// The events set aside in the pass.
    set_aside: Vec<SetAside>,
    /// The feed position of the pass's last event: where the checkpoint moves.
    last: (i64, i64),
}

impl Sorted {
    /// Sorts a batch's rows, up to the first event not ready; returns whether the batch was
    /// full (`batch` ready events: the feed may have more behind it).
    fn sort(&mut self, rows: Vec<FeedRow>, batch: usize, pass: &mut RelayPass) -> bool {
        let mut ready = 0;
        for row in rows.into_iter().filter(|row| row.present) {
            if !row.ready {
                pass.waiting = true;
                return false;
            }
            ready += 1;
            pass.from_feed += 1;
            self.last = (row.commit_order, row.message.id());
            if !row.outbox {
                continue;
            }
            match row.message.into_message() {
                Ok(message) => {
                    if !row.locked.unwrap_or(false) || row.parked.unwrap_or(true) {
                        self.aside.insert(message.key.clone());
                    }
                    self.events.push(message);
                }
                Err(failed) => {
                    self.aside.insert(failed.message.key.clone());
                    self.set_aside.push(SetAside::Failed(failed));
                }
            }
        }
        ready >= batch
    }

    /// The batch's events to publish, per key in order; those of a key set aside are set aside
    /// instead.
    fn take_batch(&mut self) -> Vec<(String, Vec<OutboxMessage>)> {
        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        for message in std::mem::take(&mut self.events) {
            if self.aside.contains(&message.key) {
                self.set_aside.push(SetAside::Behind(message));
            } else if let Some((_, messages)) = per_key.iter_mut().find(|(k, _)| *k == message.key)
            {
                messages.push(message);
            } else {
                per_key.push((message.key.clone(), vec![message]));
            }
        }
        per_key
    }

    /// Records what became of a batch: a key that failed is set aside from its failure on, in
    /// this batch and the next ones of the pass.
    fn published(&mut self, outcome: Published) {
        for failed in outcome.failed {
            self.aside.insert(failed.message.key.clone());
            self.set_aside.push(SetAside::Failed(failed));
        }
        for message in outcome.unsent {
            self.aside.insert(message.key.clone());
            self.set_aside.push(SetAside::Behind(message));
        }
    }
}

impl OutboxRelay {
    /// Publishes the next batches of the global feed in one transaction, holding the feed's
    /// advisory lock: each stream's events in order, a batch at once (pipelined by a publisher
    /// that can), the next batch read while one is being published (up to
    /// [`RelayOptions::batches_per_pass`](dtx::outbox::RelayOptions::batches_per_pass)). An event
    /// whose publish fails is set aside in the backlog table with its failure (retried from
    /// there with backoff), and so are the stream's later events in the pass; so is an event
    /// whose stream has rows in that table or is held by another relay. Returns whether the
    /// backlog table may have work.
    pub(super) async fn feed_pass(
        &self,
        conn: &mut PoolConnection<Postgres>,
    ) -> Result<(RelayPass, bool)> {
        let batch = self.options.batch_size.max(1);
        let batches = self.options.batches_per_pass.max(1);
        let mut pass = RelayPass::default();
        // The transaction and the feed's lock in one round trip, the feed's read in the next.
        let mut tx = PassTx::begin(conn, &self.outbox.sql.feed_begin).await?;
        let mut rows = self.feed_read(tx.conn(), batch, None).await?;
        // Every row carries the pass's state; there is always one.
        let FeedState {
            leader,
            backlog,
            checkpoint,
        } = rows.first().map(|row| row.state).unwrap_or_default();
        if !leader {
            // Another relay is reading the feed.
            pass.feed_held = true;
            tx.commit().await?;
            return Ok((pass, backlog));
        }
        if !checkpoint {
            // Starting over from the first event would publish the whole store again: stop.
            tx.rollback().await?;
            return Err(missing_checkpoint());
        }

        let mut sorted = Sorted::default();
        for read in 1..=batches {
            let full = sorted.sort(rows, batch, &mut pass);
            if pass.from_feed == 0 {
                tx.commit().await?;
                return Ok((pass, backlog));
            }
            let per_key = sorted.take_batch();
            let publishing = publish(&self.publisher, &self.options.payloads, per_key);
            // A full batch may have more behind it: read the next one while this one is being
            // published. (It comes after this batch's last event, whatever becomes of it.)
            let (outcome, next) = if full && read < batches {
                let reading = self.feed_read(tx.conn(), batch, Some(sorted.last));
                let (outcome, next) = tokio::join!(publishing, reading);
                (outcome, Some(next?))
            } else {
                (publishing.await, None)
            };
            pass.published += outcome.ids.len();
            sorted.published(outcome);
            match next {
                Some(next) => rows = next,
                None => break,
            }
        }
        let (set_aside, last) = (sorted.set_aside, sorted.last);
        let parked = !set_aside.is_empty();
        if parked {
            self.advance(tx.conn(), set_aside, last, &mut pass).await?;
            tx.commit().await?;
        } else {
            // Nothing to set aside: the checkpoint moves and the transaction commits in one
            // round trip.
            let statements = self
                .outbox
                .sql
                .feed_advance_commit(last, count(pass.published));
            tx.end_with(&statements).await?;
        }
        Ok((pass, backlog || parked))
    }

    /// The next batch of the feed (at most `batch` events) after `after`, or after the
    /// checkpoint.
    async fn feed_read(
        &self,
        conn: &mut PgConnection,
        batch: usize,
        after: Option<(i64, i64)>,
    ) -> Result<Vec<FeedRow>> {
        sqlx::query_as(&self.outbox.sql.feed_read)
            .bind(count(batch))
            .bind(after.map(|(commit_order, _)| commit_order))
            .bind(after.map(|(_, position)| position))
            .fetch_all(conn)
            .await
            .map_err(Error::storage)
    }

    /// Writes the events set aside to the backlog table (a failed one with its failure: retried
    /// with backoff, or dead) and moves the feed's checkpoint to `last`, in one statement.
    async fn advance(
        &self,
        tx: &mut PgConnection,
        set_aside: Vec<SetAside>,
        last: (i64, i64),
        pass: &mut RelayPass,
    ) -> Result<()> {
        let n = set_aside.len();
        let mut keys = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut sequences = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut delays = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        for aside in set_aside {
            let (message, failure, error) = match aside {
                SetAside::Behind(message) => (message, None, None),
                SetAside::Failed(failed) => {
                    let failure = Failure::of(&failed, &self.options);
                    pass.count_failure(failure);
                    (failed.message, Some(failure), Some(failed.error))
                }
            };
            keys.push(message.key);
            ids.push(message.id);
            sequences.push(message.sequence.and_then(|s| i64::try_from(s).ok()));
            statuses.push(failure.map_or("pending", Failure::status));
            attempts.push(to_i32(failure.map_or(0, Failure::attempts)));
            delays.push(failure.map_or(0.0, |f| f.delay().as_secs_f64()));
            errors.push(error);
            created.push(message.created_at);
        }
        sqlx::query(&self.outbox.sql.feed_advance)
            .bind(&keys)
            .bind(&ids)
            .bind(&sequences)
            .bind(&statuses)
            .bind(&attempts)
            .bind(&delays)
            .bind(&errors)
            .bind(&created)
            .bind(last.0)
            .bind(last.1)
            .bind(count(pass.published))
            .execute(tx)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }
}

/// A feed pass's transaction, opened and ended by simple queries instead of sqlx's
/// `Transaction`, so that its commit can go in the same round trip as its last statement (sqlx
/// counts the transactions it opened, and a `COMMIT` sent in a query of one's own would leave
/// its `Transaction` open). One that is dropped before it ends (an error, a panic) closes its
/// connection instead of giving it back to the pool: the server then rolls the transaction back,
/// and no connection ever goes back to the pool inside a transaction.
struct PassTx<'c> {
    conn: &'c mut PoolConnection<Postgres>,
    open: bool,
}

impl<'c> PassTx<'c> {
    /// Runs `begin` (a simple query that opens the transaction) on `conn`.
    async fn begin(conn: &'c mut PoolConnection<Postgres>, begin: &str) -> Result<Self> {
        let mut tx = Self { conn, open: true };
        tx.simple(begin).await?;
        Ok(tx)
    }

    /// The connection, for the transaction's statements.
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// Commits.
    async fn commit(self) -> Result<()> {
        self.end_with("COMMIT").await
    }

    /// Rolls back.
    async fn rollback(self) -> Result<()> {
        self.end_with("ROLLBACK").await
    }

    /// Runs `statements`, which end the transaction, as one simple query.
    async fn end_with(mut self, statements: &str) -> Result<()> {
        self.simple(statements).await?;
        self.open = false;
        Ok(())
    }

    async fn simple(&mut self, statements: &str) -> Result<()> {
        self.conn
            .execute(sqlx::raw_sql(statements))
            .await
            .map_err(Error::storage)?;
        Ok(())
    }
}

impl Drop for PassTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}
