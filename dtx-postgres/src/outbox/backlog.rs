//! The second step of a relay pass: claiming keys of the backlog table (`outbox_events`) with a
//! skip scan, publishing their first rows and recording the outcome (see [`crate::outbox`],
//! Reading).

use super::message::MessageRow;
use super::publish::{Failure, publish};
use super::relay::{OutboxRelay, RelayPass};
use crate::sql::{count, to_i32};
use dtx::outbox::OutboxMessage;
use dtx::{Error, Result};
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};
use tracing::Instrument;

/// A key's first row, as the `claim_keys` skip scan returns it.
#[derive(sqlx::FromRow)]
struct Head {
    stream_key: String,
    /// Whether this relay locked the key (its head is pending and due, and no other relay
    /// holds it).
    locked: bool,
}

/// A row of a locked key, as the `claim_rows` statement returns it.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    status: String,
    due: bool,
    /// The row's address (`ctid`), by which it is deleted once published.
    row_ref: String,
    #[sqlx(flatten)]
    message: MessageRow,
}

impl OutboxRelay {
    /// Claims one batch of the backlog table, publishes it and records the outcome, in one
    /// transaction.
    pub(super) async fn table_pass(&self, conn: &mut PgConnection) -> Result<RelayPass> {
        let sql = &*self.outbox.sql;
        let batch = self.options.batch_size.max(1);
        let mut tx = self.begin(conn).await?;
        let claim = tracing::debug_span!(
            "dtx.outbox.claim",
            keys = tracing::field::Empty,
            messages = tracing::field::Empty,
        );
        let keys = self
            .claim_keys(&mut tx, batch)
            .instrument(claim.clone())
            .await?;
        claim.record("keys", keys.len());
        if keys.is_empty() {
            tx.commit().await.map_err(Error::storage)?;
            return Ok(RelayPass::default());
        }
        // Each key gets an equal share of the batch (a busy key cannot starve the others).
        let share = batch.div_ceil(keys.len());
        let rows: Vec<ClaimedRow> = sqlx::query_as(&sql.claim_rows)
            .bind(&keys)
            .bind(count(share))
            .fetch_all(&mut *tx)
            .instrument(claim.clone())
            .await
            .map_err(Error::storage)?;
        claim.record("messages", rows.len());

        // Each key's rows in order, up to its first dead, not yet due or unreadable row.
        let mut per_key: Vec<(String, Vec<OutboxMessage>)> = Vec::new();
        let mut blocked = HashSet::new();
        let mut failed = Vec::new();
        let mut row_refs = HashMap::with_capacity(rows.len());
        for row in rows {
            row_refs.insert(row.message.id(), row.row_ref);
            let key = row.message.key();
            if blocked.contains(key) {
                continue;
            }
            if row.status != "pending" || !row.due {
                blocked.insert(key.to_owned());
                continue;
            }
            let message = match row.message.into_message() {
                Ok(message) => message,
                Err(unreadable) => {
                    blocked.insert(unreadable.message.key.clone());
                    failed.push(unreadable);
                    continue;
                }
            };
            match per_key.last_mut() {
                Some((k, messages)) if *k == message.key => messages.push(message),
                _ => per_key.push((message.key.clone(), vec![message])),
            }
        }

        // Rows after a key's failure stay as they are, behind it.
        let outcome = publish(&self.publisher, &self.options.payloads, per_key).await;
        failed.extend(outcome.failed);
        let published: Vec<String> = outcome
            .ids
            .iter()
            .filter_map(|id| row_refs.remove(id))
            .collect();
        let mut pass = RelayPass {
            published: published.len(),
            ..RelayPass::default()
        };
        if !published.is_empty() {
            let keep = self.options.retention.is_none_or(|r| !r.is_zero());
            sqlx::query(if keep {
                &sql.archive_published
            } else {
                &sql.mark_published
            })
            .bind(&published)
            .execute(&mut *tx)
            .await
            .map_err(Error::storage)?;
        }
        for failed in failed {
            let failure = Failure::of(&failed, &self.options);
            pass.count_failure(failure);
            sqlx::query(&sql.mark_failed)
                .bind(&failed.message.key)
                .bind(failed.message.id)
                .bind(to_i32(failure.attempts()))
                .bind(&failed.error)
                .bind(failure.status())
                .bind(failure.delay().as_secs_f64())
                .execute(&mut *tx)
                .await
                .map_err(Error::storage)?;
        }
        tx.commit().await.map_err(Error::storage)?;
        Ok(pass)
    }

    /// Finds up to `batch` keys with work, after the cursor and then from the start, and
    /// locks them (in `tx`); moves the cursor on.
    async fn claim_keys(&self, tx: &mut PgConnection, batch: usize) -> Result<Vec<String>> {
        let cursor = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut keys = Vec::new();
        let mut next = String::new();
        let scanned = self
            .scan_heads(tx, &cursor, batch, None, &mut keys, &mut next)
            .await?;
        if scanned < batch {
            // The end of the keys: start from the first one again next time, and now take the
            // keys up to the cursor that this pass has room for.
            next.clear();
            if !cursor.is_empty() {
                self.scan_heads(tx, "", batch - scanned, Some(&cursor), &mut keys, &mut next)
                    .await?;
            }
        }
        *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(keys)
    }

    /// Looks at up to `limit` key heads after `after` (up to `upto`), adding the keys it locked
    /// to `keys` and leaving the last key it looked at in `last`; returns how many it looked at.
    async fn scan_heads(
        &self,
        tx: &mut PgConnection,
        after: &str,
        limit: usize,
        upto: Option<&str>,
        keys: &mut Vec<String>,
        last: &mut String,
    ) -> Result<usize> {
        let heads: Vec<Head> = sqlx::query_as(&self.outbox.sql.claim_keys)
            .bind(after)
            .bind(count(limit))
            .bind(upto)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::storage)?;
        let looked = heads.len();
        for head in heads {
            if head.locked {
                keys.push(head.stream_key.clone());
            }
            *last = head.stream_key;
        }
        Ok(looked)
    }
}
