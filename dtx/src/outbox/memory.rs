//! The embedded outbox: [`MemoryOutbox`], fed by the in-memory event store, and its relay.

use super::{
    NewOutboxMessage, OutboxCounts, OutboxMessage, OutboxStatus, Publisher, RelayOptions,
    event_headers, publish_as,
};
use crate::store::{NewEvent, StreamId};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The embedded outbox: fed atomically by [`crate::MemoryEventStore::with_outbox`] (or
/// [`MemoryOutbox::enqueue`]), published by [`MemoryOutbox::publish_pending`] or
/// [`MemoryOutbox::run`], with the same ordering, retry and dead-letter rules as the PostgreSQL
/// relay. Clones share the same messages.
///
/// Published messages leave the queue at once (a pass only ever looks at what is still to be
/// published) for an archive kept as [`RelayOptions::retention`] says: none with a zero
/// retention, otherwise until [`MemoryOutbox::run`] purges them after the retention or
/// [`MemoryOutbox::purge_published`] is called. A long-running embedded relay thus holds only
/// its backlog and the retention's worth of messages.
#[derive(Clone, Default)]
pub struct MemoryOutbox {
    pub(super) inner: Arc<Mutex<OutboxState>>,
    pub(super) wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
pub(super) struct OutboxState {
    next_id: i64,
    /// The messages not yet published (pending or dead), in id order.
    rows: Vec<MemoryRow>,
    /// The published messages kept, with when they were published, oldest first.
    archive: std::collections::VecDeque<(std::time::Instant, OutboxMessage)>,
}

impl OutboxState {
    fn push(&mut self, message: OutboxMessage) {
        self.rows.push(MemoryRow {
            message,
            status: OutboxStatus::Pending,
            next_attempt: std::time::Instant::now(),
        });
    }

    pub(super) fn push_events(
        &mut self,
        stream: &StreamId,
        first_version: u64,
        events: &[NewEvent],
    ) {
        let now = Utc::now();
        for (version, event) in (first_version..).zip(events) {
            self.next_id += 1;
            self.push(OutboxMessage {
                id: self.next_id,
                key: stream.to_string(),
                sequence: Some(version),
                message_id: event.event_id,
                message_type: event.event_type.clone(),
                payload: event.data.get().into(),
                headers: event_headers(stream, event),
                attempts: 0,
                last_error: None,
                created_at: now,
            });
        }
    }

    pub(super) fn push_messages(&mut self, messages: Vec<NewOutboxMessage>) {
        let now = Utc::now();
        for new in messages {
            self.next_id += 1;
            self.push(OutboxMessage {
                id: self.next_id,
                headers: new.all_headers(),
                key: new.key,
                sequence: None,
                message_id: new.message_id,
                message_type: new.message_type,
                payload: new.payload.get().into(),
                attempts: 0,
                last_error: None,
                created_at: now,
            });
        }
    }
}

struct MemoryRow {
    message: OutboxMessage,
    status: OutboxStatus,
    next_attempt: std::time::Instant,
}

impl fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryOutbox")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the outbox messages of appended events (called by the event store while it holds its
    /// append lock, so outbox order is append order).
    pub(crate) fn push_events(&self, stream: &StreamId, first_version: u64, events: &[NewEvent]) {
        self.lock().push_events(stream, first_version, events);
        self.wake.notify_one();
    }

    /// Adds messages: all of them, or none when one has a header that breaks
    /// [`headers::check`](super::headers::check) or a payload PostgreSQL could not store (as
    /// the PostgreSQL outbox refuses it).
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the message and its header;
    /// [`Error::Unstorable`](crate::Error::Unstorable) naming the message.
    pub fn enqueue(&self, messages: Vec<NewOutboxMessage>) -> crate::Result<()> {
        for message in &messages {
            message.check_storable()?;
            message.check_headers()?;
        }
        self.lock().push_messages(messages);
        self.wake.notify_one();
        Ok(())
    }

    /// Publishes one batch of due messages (keys in order, a key stopping at its first message
    /// that is dead or waiting for a retry); returns how many it tried.
    pub async fn publish_pending(
        &self,
        publisher: &dyn Publisher,
        options: &RelayOptions,
    ) -> usize {
        let now = std::time::Instant::now();
        let batch: Vec<OutboxMessage> = {
            let state = self.lock();
            let mut blocked = HashSet::new();
            let mut batch = Vec::new();
            for row in &state.rows {
                if batch.len() >= options.batch_size {
                    break;
                }
                if blocked.contains(&row.message.key) {
                    continue;
                }
                if row.status == OutboxStatus::Dead || row.next_attempt > now {
                    blocked.insert(row.message.key.clone());
                    continue;
                }
                batch.push(row.message.clone());
            }
            batch
        };
        let mut failed_keys = HashSet::new();
        let mut outcomes = HashMap::new();
        for message in &batch {
            if failed_keys.contains(&message.key) {
                continue;
            }
            let outcome = publish_as(publisher, message, &options.payloads).await;
            if outcome.is_err() {
                failed_keys.insert(message.key.clone());
            }
            outcomes.insert(message.id, outcome);
        }
        let tried = outcomes.len();
        let keep = options.retention.is_none_or(|r| !r.is_zero());
        let published_at = std::time::Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        for row in &mut state.rows {
            match outcomes.remove(&row.message.id) {
                Some(Ok(())) => {
                    row.status = OutboxStatus::Published;
                    if keep {
                        state.archive.push_back((published_at, row.message.clone()));
                    }
                }
                Some(Err(error)) => {
                    row.message.attempts += 1;
                    row.message.last_error = Some(error.to_string());
                    if error.permanent || options.is_dead(row.message.attempts) {
                        tracing::warn!(key = %row.message.key, id = row.message.id, %error, "outbox message dead-lettered");
                        crate::telemetry::record_outbox_dead_letter();
                        row.status = OutboxStatus::Dead;
                    } else {
                        row.next_attempt =
                            std::time::Instant::now() + options.backoff(row.message.attempts);
                    }
                }
                None => {}
            }
        }
        state.rows.retain(|r| r.status != OutboxStatus::Published);
        tried
    }

    /// Publishes until `shutdown` completes, woken by every write, polling
    /// [`RelayOptions::poll_interval`] for retries. Deletes published messages past
    /// [`RelayOptions::retention`] about once a minute.
    pub async fn run(
        &self,
        publisher: &dyn Publisher,
        options: &RelayOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut purged = std::time::Instant::now();
        loop {
            let woken = self.wake.notified();
            let tried = tokio::select! {
                () = &mut shutdown => return,
                tried = self.publish_pending(publisher, options) => tried,
            };
            if let Some(retention) = options.retention
                && purged.elapsed() > Duration::from_secs(60)
            {
                purged = std::time::Instant::now();
                self.purge_published_before(retention);
            }
            if tried > 0 {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = woken => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }

    /// Counts by status and the outbox lag.
    pub fn counts(&self) -> OutboxCounts {
        let state = self.lock();
        let mut counts = OutboxCounts {
            published: u64::try_from(state.archive.len()).unwrap_or(u64::MAX),
            ..OutboxCounts::default()
        };
        let now = Utc::now();
        for row in &state.rows {
            match row.status {
                OutboxStatus::Pending => {
                    counts.pending += 1;
                    if counts.oldest_pending_age.is_none() {
                        counts.oldest_pending_age = (now - row.message.created_at)
                            .to_std()
                            .ok()
                            .or(Some(Duration::ZERO));
                    }
                }
                // published messages leave the queue for the archive counted above
                OutboxStatus::Published => {}
                OutboxStatus::Dead => counts.dead += 1,
            }
        }
        counts
    }

    /// The dead-lettered messages, oldest first.
    pub fn dead(&self) -> Vec<OutboxMessage> {
        self.lock()
            .rows
            .iter()
            .filter(|r| r.status == OutboxStatus::Dead)
            .map(|r| r.message.clone())
            .collect()
    }

    /// Puts a dead message back to pending with its attempts reset; `false` if no dead message
    /// has this id.
    pub fn requeue(&self, id: i64) -> bool {
        let mut state = self.lock();
        let Some(row) = state
            .rows
            .iter_mut()
            .find(|r| r.message.id == id && r.status == OutboxStatus::Dead)
        else {
            return false;
        };
        row.status = OutboxStatus::Pending;
        row.message.attempts = 0;
        row.next_attempt = std::time::Instant::now();
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Deletes every published message kept (see [`RelayOptions::retention`]); returns how many.
    pub fn purge_published(&self) -> usize {
        self.purge_published_before(Duration::ZERO)
    }

    /// How many published messages are kept for longer than `retention`.
    pub fn published_older_than(&self, retention: Duration) -> usize {
        self.lock()
            .archive
            .iter()
            .take_while(|(at, _)| at.elapsed() >= retention)
            .count()
    }

    /// Deletes the published messages kept for longer than `retention`; returns how many.
    pub fn purge_published_before(&self, retention: Duration) -> usize {
        let mut state = self.lock();
        let before = state.archive.len();
        while state
            .archive
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= retention)
        {
            state.archive.pop_front();
        }
        before - state.archive.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::MemoryPublisher;
    use crate::{EventStore, ExpectedVersion, MemoryEventStore};

    fn options() -> RelayOptions {
        RelayOptions {
            max_retries: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RelayOptions::default()
        }
    }

    #[tokio::test]
    async fn appends_feed_the_outbox_and_a_poison_key_is_dead_lettered_alone() {
        let outbox = MemoryOutbox::new();
        let store = MemoryEventStore::new().with_outbox(outbox.clone());
        for key in ["A", "B"] {
            let stream = StreamId::new(key).unwrap();
            for n in 0..3 {
                let event = NewEvent::from_json("Happened", &n).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
            }
        }
        let publisher = MemoryPublisher::new();
        publisher.reject_key("A");
        let options = options();
        for _ in 0..50 {
            outbox.publish_pending(&publisher, &options).await;
            if outbox.counts().dead == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let counts = outbox.counts();
        assert_eq!((counts.published, counts.dead, counts.pending), (3, 1, 2));
        let dead = outbox.dead();
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].sequence, Some(1));
        let b: Vec<_> = publisher.published().iter().map(|m| m.sequence).collect();
        assert_eq!(b, [Some(1), Some(2), Some(3)]);

        publisher.accept_key("A");
        assert!(outbox.requeue(dead[0].id));
        outbox.publish_pending(&publisher, &options).await;
        let a: Vec<_> = publisher
            .published()
            .into_iter()
            .filter(|m| m.key == "A")
            .map(|m| m.sequence)
            .collect();
        assert_eq!(a, [Some(1), Some(2), Some(3)]);
        assert_eq!(outbox.purge_published(), 6);
    }

    /// Rejects the messages of one key by panicking, as a broker client asserting on its input
    /// does.
    struct PanicsOnKey(MemoryPublisher, &'static str);

    #[async_trait::async_trait]
    impl Publisher for PanicsOnKey {
        async fn publish(&self, message: &OutboxMessage) -> Result<(), super::super::PublishError> {
            assert_ne!(
                message.key, self.1,
                "the publisher cannot take this message"
            );
            self.0.publish(message).await
        }
    }

    #[tokio::test]
    async fn a_message_that_cannot_be_sent_is_dead_lettered_alone_and_its_neighbours_are_sent() {
        let outbox = MemoryOutbox::new();
        let message = |key: &str| NewOutboxMessage::new(key, "Sent", &key).unwrap();
        let mut bad_name = message("bad-name");
        bad_name.headers.insert("x bad".into(), "v".into());
        let mut bad_value = message("bad-value");
        bad_value
            .headers
            .insert("x-ok".into(), "a\r\nx-admin: 1".into());
        // Enqueue refuses them (all or nothing)...
        let refused = outbox.enqueue(vec![message("ok-0"), bad_name.clone()]);
        assert!(
            matches!(&refused, Err(crate::Error::Invalid { what: "outbox header", value, .. }) if value.contains("bad-name")),
            "{refused:?}"
        );
        assert_eq!(outbox.counts().pending, 0);
        // ...but messages stored before the check are set aside at their first attempt.
        outbox.lock().push_messages(vec![
            message("ok-1"),
            bad_name,
            message("panics"),
            bad_value,
            message("ok-2"),
        ]);
        let sent = MemoryPublisher::new();
        let publisher = PanicsOnKey(sent.clone(), "panics");
        let options = RelayOptions {
            max_retries: 1,
            base_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..RelayOptions::default()
        };
        assert_eq!(outbox.publish_pending(&publisher, &options).await, 5);
        let keys: Vec<_> = sent.published().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["ok-1", "ok-2"]);
        let counts = outbox.counts();
        assert_eq!((counts.published, counts.pending, counts.dead), (2, 1, 2));
        // The panic is an ordinary failure: retried, then dead.
        assert_eq!(outbox.publish_pending(&publisher, &options).await, 1);
        let dead = outbox.dead();
        let dead: Vec<_> = dead
            .iter()
            .map(|m| {
                (
                    m.key.as_str(),
                    m.attempts,
                    m.last_error.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(dead.len(), 3, "{dead:?}");
        assert!(
            dead[0].0 == "bad-name" && dead[0].1 == 1 && dead[0].2.contains("x bad"),
            "{dead:?}"
        );
        assert!(
            dead[1].0 == "panics" && dead[1].1 == 2 && dead[1].2.contains("panicked"),
            "{dead:?}"
        );
        assert!(
            dead[2].0 == "bad-value" && dead[2].1 == 1 && dead[2].2.contains("x-ok"),
            "{dead:?}"
        );
        assert_eq!(outbox.publish_pending(&publisher, &options).await, 0);
        assert_eq!(sent.count(), 2, "nothing is published twice");
    }

    #[tokio::test]
    async fn published_messages_leave_the_queue_and_are_kept_as_long_as_the_retention_says() {
        let messages = |n: usize| {
            (0..n)
                .map(|i| NewOutboxMessage::new(format!("K-{}", i % 10), "Sent", &i).unwrap())
                .collect::<Vec<_>>()
        };
        let publisher = MemoryPublisher::new();

        let kept = MemoryOutbox::new();
        kept.enqueue(messages(1000)).unwrap();
        let options = RelayOptions {
            batch_size: 1000,
            ..RelayOptions::default()
        };
        assert_eq!(kept.publish_pending(&publisher, &options).await, 1000);
        let counts = kept.counts();
        assert_eq!((counts.pending, counts.published), (0, 1000));
        assert_eq!(
            kept.lock().rows.len(),
            0,
            "the queue holds only what is unpublished"
        );
        assert_eq!(kept.purge_published_before(Duration::from_secs(3600)), 0);
        assert_eq!(kept.purge_published(), 1000);
        assert_eq!(kept.counts().published, 0);

        let unkept = MemoryOutbox::new();
        unkept.enqueue(messages(100)).unwrap();
        let options = RelayOptions {
            retention: Some(Duration::ZERO),
            ..RelayOptions::default()
        };
        assert_eq!(unkept.publish_pending(&publisher, &options).await, 100);
        assert_eq!(
            unkept.counts().published,
            0,
            "a zero retention keeps nothing"
        );
        assert_eq!(publisher.published().len(), 1100);
    }
}
