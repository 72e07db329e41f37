//! The first step of a relay pass: publishing the next batch of the global feed and moving its
//! checkpoint (see [`crate::outbox`], Reading).

use super::message::{Failed, MessageRow, missing_checkpoint};
use super::publish::{Failure, publish};
use super::relay::{OutboxRelay, RelayPass};
use crate::sql::{count, to_i32};
use dtx::outbox::OutboxMessage;
use dtx::{Error, Result};
use sqlx::PgConnection;
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

impl OutboxRelay {
    /// Publishes the next batch of the global feed in one transaction, holding the feed's
    /// advisory lock: each stream's events in order, the batch at once (pipelined by a publisher
    /// that can). An event whose publish fails is set aside in the backlog table with its
    /// failure (retried from there with backoff), and so are the stream's later events in the
    /// batch; so is an event whose stream has rows in that table or is held by another relay.
    /// Returns whether the backlog table may have work.
    pub(super) async fn feed_pass(&self, conn: &mut PgConnection) -> Result<(RelayPass, bool)> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut pass = RelayPass::default();
        // The transaction and the feed's lock in one round trip, the feed's read in the next.
        let mut tx = sqlx::Connection::begin_with(conn, sql.feed_begin.clone())
            .await
            .map_err(Error::storage)?;
        let rows: Vec<FeedRow> = sqlx::query_as(&sql.feed_read)
            .bind(count(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::storage)?;
        // Every row carries the pass's state; there is always one.
        let FeedState {
            leader,
            backlog,
            checkpoint,
        } = rows.first().map(|row| row.state).unwrap_or_default();
        if !leader {
            // Another relay is reading the feed.
            pass.feed_held = true;
            tx.commit().await.map_err(Error::storage)?;
            return Ok((pass, backlog));
        }
        if !checkpoint {
            // Starting over from the first event would publish the whole store again: stop.
            return Err(missing_checkpoint());
        }

        // The outbox events of the batch in feed order, and the keys set aside; a row that
        // cannot become a message is set aside with its error at once.
        let mut events: Vec<OutboxMessage> = Vec::new();
        let mut aside = HashSet::new();
        let mut set_aside: Vec<SetAside> = Vec::new();
        let mut last = (0, 0);
        for row in rows.into_iter().filter(|row| row.present) {
            if !row.ready {
                pass.waiting = true;
                break;
            }
            pass.from_feed += 1;
            last = (row.commit_order, row.message.id());
            if !row.outbox {
                continue;
            }
            match row.message.into_message() {
                Ok(message) => {
                    if !row.locked.unwrap_or(false) || row.parked.unwrap_or(true) {
                        aside.insert(message.key.clone());
                    }
                    events.push(message);
                }
                Err(failed) => {
                    aside.insert(failed.message.key.clone());
                    set_aside.push(SetAside::Failed(failed));
                }
            }
        }
        if pass.from_feed == 0 {
            tx.commit().await.map_err(Error::storage)?;
            return Ok((pass, backlog));
        }

        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        for message in events {
            if aside.contains(&message.key) {
                set_aside.push(SetAside::Behind(message));
            } else if let Some((_, messages)) = per_key.iter_mut().find(|(k, _)| *k == message.key)
            {
                messages.push(message);
            } else {
                per_key.push((message.key.clone(), vec![message]));
            }
        }
        let outcome = publish(&self.publisher, &self.options.payloads, per_key).await;
        pass.published = outcome.ids.len();
        // A key that failed is set aside from its failure on.
        set_aside.extend(outcome.failed.into_iter().map(SetAside::Failed));
        set_aside.extend(outcome.unsent.into_iter().map(SetAside::Behind));
        let parked = !set_aside.is_empty();
        self.advance(&mut tx, set_aside, last, &mut pass).await?;
        tx.commit().await.map_err(Error::storage)?;
        Ok((pass, backlog || parked))
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
