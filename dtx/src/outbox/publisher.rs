//! Publishing: the [`Publisher`] trait a broker client implements, how every relay calls it
//! ([`publish_traced`]), and the in-memory [`MemoryPublisher`].

use super::{OutboxMessage, Payloads, headers};
use crate::error::BoxError;
use async_trait::async_trait;
use chrono::Utc;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// A failed publish. A failure is retried (with backoff) up to
/// [`RelayOptions::max_retries`](super::RelayOptions::max_retries), then the message is
/// dead-lettered; a [`permanent`](Self::permanent) one (the message itself can never be sent,
/// say its headers are invalid) is dead-lettered at once. Either way only that message (and the
/// later messages of its key, behind it) waits: the rest of the batch is published.
#[derive(Debug, thiserror::Error)]
#[error("publishing failed: {message}")]
pub struct PublishError {
    /// What went wrong.
    pub message: String,
    /// The broker client's error.
    #[source]
    pub source: Option<BoxError>,
    /// Whether no retry can succeed: the message is dead-lettered at once.
    pub permanent: bool,
}

impl PublishError {
    /// An error with a message, retried.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            permanent: false,
        }
    }

    /// An error no retry can mend (the message is malformed): the relay dead-letters the
    /// message at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            ..Self::new(message)
        }
    }

    /// Wraps a broker client's error, retried.
    pub fn from_source(error: impl Into<BoxError>) -> Self {
        let source = error.into();
        Self {
            message: source.to_string(),
            source: Some(source),
            permanent: false,
        }
    }
}

/// Sends outbox messages to a broker.
///
/// `publish` returns `Ok` only once the broker has durably accepted the message (for `JetStream`:
/// the publish ack); the relay marks the message published after that. An error is retried.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an outbox publisher",
    note = "implement `dtx::outbox::Publisher` (with `#[async_trait]`), or use `MemoryPublisher` or a broker publisher of dtx-postgres"
)]
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; `Ok` means the broker has it.
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError>;

    /// Publishes a batch: `messages` hold each key's messages in order (the keys may
    /// interleave). Returns one outcome per message, in the same order; a missing outcome (a
    /// shorter list) counts as a failure.
    ///
    /// Per key, the relay counts the messages before the key's first failure as published and
    /// sets that failure and every later message of the key aside (retried after it), whatever
    /// their own outcomes. An implementation that has several messages of a key in flight at
    /// once must therefore make sure that a later message never reaches the broker when an
    /// earlier one of its key did not: the NATS publisher chains them with `JetStream`'s
    /// expected-last-message-id check. Each publish should run in
    /// [`publish_span`] of its message.
    ///
    /// The default publishes each key's messages one at a time, awaiting each, the keys
    /// concurrently, and stops a key at its first failure; a publish that panics fails its
    /// message only.
    async fn publish_batch(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut per_key: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            match per_key.iter_mut().find(|(key, _)| *key == message.key) {
                Some((_, indices)) => indices.push(i),
                None => per_key.push((&message.key, vec![i])),
            }
        }
        let mut keys: Vec<KeyFuture<'_>> = Vec::with_capacity(per_key.len());
        for (_, indices) in per_key {
            keys.push(Box::pin(async move {
                let mut outcomes = Vec::with_capacity(indices.len());
                for i in indices {
                    let message = &messages[i];
                    let publish = tracing::Instrument::instrument(
                        self.publish(message),
                        publish_span(message),
                    );
                    let outcome = CatchUnwind(Box::pin(publish))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(message, &*panic)));
                    let failed = outcome.is_err();
                    outcomes.push((i, outcome));
                    if failed {
                        break;
                    }
                }
                outcomes
            }));
        }
        let mut outcomes: Vec<Option<Result<(), PublishError>>> =
            messages.iter().map(|_| None).collect();
        for (i, outcome) in JoinAll::new(keys).await.into_iter().flatten() {
            outcomes[i] = Some(outcome);
        }
        messages
            .iter()
            .zip(outcomes)
            .map(|(message, outcome)| outcome.unwrap_or_else(|| Err(not_sent(message))))
            .collect()
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        (**self).publish(message).await
    }

    async fn publish_batch(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        (**self).publish_batch(messages).await
    }
}

/// One key's share of a default [`Publisher::publish_batch`]: the outcomes of its messages, by
/// index, up to its first failure.
type KeyFuture<'a> =
    Pin<Box<dyn Future<Output = Vec<(usize, Result<(), PublishError>)>> + Send + 'a>>;

/// The outcome of a message of a batch that was not tried, being behind a failed message of its
/// key (or left without an outcome).
fn not_sent(message: &OutboxMessage) -> PublishError {
    PublishError::new(format!(
        "outbox message {} (id {}) of key `{}` was not sent: an earlier message of its key failed",
        message.message_id, message.id, message.key
    ))
}

/// The error of a [`MemoryPublisher`] told to reject `message`'s key.
fn rejected(message: &OutboxMessage) -> PublishError {
    PublishError::new(format!(
        "key `{}` is rejected by this publisher",
        message.key
    ))
}

/// The error of a publisher that panicked on `message`, with the panic's message.
fn panicked(message: &OutboxMessage, panic: &(dyn std::any::Any + Send)) -> PublishError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    PublishError::new(format!(
        "the publisher panicked on outbox message {} (id {}) of key `{}`: {what}",
        message.message_id, message.id, message.key
    ))
}

/// The span a publish of `message` runs in: `dtx.outbox.publish`, a child of the trace of the
/// write that produced the message (its `traceparent` header), with the stream and message type.
/// [`publish_traced`] and every [`Publisher::publish_batch`] of dtx publish each message in it.
pub fn publish_span(message: &OutboxMessage) -> tracing::Span {
    let span = tracing::info_span!(
        "dtx.outbox.publish",
        stream = %message.key,
        message_type = %message.message_type,
    );
    crate::telemetry::set_parent(
        &span,
        message
            .headers
            .get(headers::TRACEPARENT)
            .map(String::as_str),
    );
    span
}

/// Publishes one message as every relay does: inside a `dtx.outbox.publish` span that continues
/// the trace of the write that produced the message (its `traceparent` header), recording the
/// outbox lag when the broker has it.
///
/// A message whose headers break [`headers::check`] is not handed to the publisher: it fails
/// with a [`permanent`](PublishError::permanent) error naming the message. A publisher that
/// panics fails this message only, with an error saying so (retried like any other failure),
/// instead of unwinding through the relay and failing the whole batch.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::outbox::{MemoryPublisher, OutboxMessage, publish_traced};
///
/// let publisher = MemoryPublisher::new();
/// let message = OutboxMessage {
///     id: 1,
///     key: "Order-1".into(),
///     sequence: Some(1),
///     message_id: uuid::Uuid::now_v7(),
///     message_type: "OrderPlaced".into(),
///     payload: r#"{"total":3}"#.into(),
///     headers: Default::default(),
///     attempts: 0,
///     last_error: None,
///     created_at: chrono::Utc::now(),
/// };
/// publish_traced(&publisher, &message).await?;
/// assert_eq!(publisher.published().len(), 1);
/// # Ok::<(), dtx::outbox::PublishError>(())
/// # }).unwrap();
/// ```
///
/// # Errors
/// The publisher's error, as it returned it; a permanent error for invalid headers; an error
/// for a publisher that panicked.
pub async fn publish_traced<P: Publisher + ?Sized>(
    publisher: &P,
    message: &OutboxMessage,
) -> Result<(), PublishError> {
    if let Err(problem) = headers::check_all(&message.headers) {
        return Err(PublishError::permanent(format!(
            "outbox message {} (id {}) of key `{}` cannot be sent: {problem}",
            message.message_id, message.id, message.key
        )));
    }
    let publish =
        tracing::Instrument::instrument(publisher.publish(message), publish_span(message));
    CatchUnwind(Box::pin(publish))
        .await
        .unwrap_or_else(|panic| Err(panicked(message, &*panic)))?;
    let lag = (Utc::now() - message.created_at).to_std();
    crate::telemetry::record_outbox_published(lag.unwrap_or_default());
    Ok(())
}

/// [`publish_traced`] in the form `payloads` asks for: what every relay calls. With
/// [`Payloads::Current`], an event (a message with a `dtx-schema-version` header) of a type the
/// [`Upcasters`](crate::event::Upcasters) know is published upcast: its payload re-encoded as
/// the current type, its `dtx-event-type` and `dtx-schema-version` headers the current ones
/// (see [`current_form`]).
///
/// # Errors
/// As [`publish_traced`]; a [`permanent`](PublishError::permanent) error naming the message and
/// why when it does not upcast.
pub async fn publish_as<P: Publisher + ?Sized>(
    publisher: &P,
    message: &OutboxMessage,
    payloads: &Payloads,
) -> Result<(), PublishError> {
    match current_form(message, payloads)? {
        Some(current) => publish_traced(publisher, &current).await,
        None => publish_traced(publisher, message).await,
    }
}

/// [`publish_as`] for a batch, as relays publish: `messages` hold each key's messages in order
/// (the keys may interleave); the outcome of each, in the same order.
///
/// Each message is checked and put in the form `payloads` asks for first (a message that fails
/// either fails [`permanent`](PublishError::permanent)ly, as in [`publish_as`], and the later
/// messages of its key are not sent); the rest go to [`Publisher::publish_batch`] together. A
/// publisher that panics fails every message it was given. Per key, what counts is the outcomes
/// before the key's first failure (see [`Publisher::publish_batch`]); after it, a message's
/// outcome is a failure saying it was not sent, or what the publisher answered.
pub async fn publish_batch_as<P: Publisher + ?Sized>(
    publisher: &P,
    messages: &[OutboxMessage],
    payloads: &Payloads,
) -> Vec<Result<(), PublishError>> {
    let mut outcomes: Vec<Option<Result<(), PublishError>>> =
        messages.iter().map(|_| None).collect();
    let mut stopped: HashSet<&str> = HashSet::new();
    // The messages to send (by index), each with its upcast form when it has one.
    let mut sent: Vec<(usize, Option<OutboxMessage>)> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        if stopped.contains(message.key.as_str()) {
            continue;
        }
        let checked = headers::check_all(&message.headers)
            .map_err(|problem| {
                PublishError::permanent(format!(
                    "outbox message {} (id {}) of key `{}` cannot be sent: {problem}",
                    message.message_id, message.id, message.key
                ))
            })
            .and_then(|()| current_form(message, payloads));
        match checked {
            Ok(current) => sent.push((i, current)),
            Err(error) => {
                stopped.insert(message.key.as_str());
                outcomes[i] = Some(Err(error));
            }
        }
    }
    if !sent.is_empty() {
        // The batch as stored when every message goes as it is (the usual case): no copy.
        let copied: Vec<OutboxMessage>;
        let ready: &[OutboxMessage] =
            if sent.len() == messages.len() && sent.iter().all(|(_, current)| current.is_none()) {
                messages
            } else {
                copied = sent
                    .iter_mut()
                    .map(|(i, current)| current.take().unwrap_or_else(|| messages[*i].clone()))
                    .collect();
                &copied
            };
        let answered = CatchUnwind(Box::pin(publisher.publish_batch(ready)))
            .await
            .unwrap_or_else(|panic| {
                let error = |message: &OutboxMessage| Err(panicked(message, &*panic));
                ready.iter().map(error).collect()
            });
        let now = Utc::now();
        for (((i, _), message), outcome) in sent.into_iter().zip(ready).zip(answered) {
            if outcome.is_ok() {
                let lag = (now - message.created_at).to_std();
                crate::telemetry::record_outbox_published(lag.unwrap_or_default());
            }
            outcomes[i] = Some(outcome);
        }
    }
    messages
        .iter()
        .zip(outcomes)
        .map(|(message, outcome)| outcome.unwrap_or_else(|| Err(not_sent(message))))
        .collect()
}

/// `message` as [`publish_as`] publishes it: `None` when that is as stored (the payloads are
/// [`Payloads::Stored`], it is not an event of a type the upcasters know, or it is current
/// already), otherwise the message upcast.
///
/// # Errors
/// A [`permanent`](PublishError::permanent) error naming the message: its schema version header
/// is not a number, or its payload does not upcast (the [`DecodeError`](crate::DecodeError)).
pub fn current_form(
    message: &OutboxMessage,
    payloads: &Payloads,
) -> Result<Option<OutboxMessage>, PublishError> {
    let Payloads::Current(upcasters) = payloads else {
        return Ok(None);
    };
    let Some(version) = message.headers.get(headers::SCHEMA_VERSION) else {
        return Ok(None);
    };
    let failed = |why: String| {
        PublishError::permanent(format!(
            "outbox message {} (id {}) of key `{}` cannot be published in its current form: {why}",
            message.message_id, message.id, message.key
        ))
    };
    let version: u32 = version.parse().map_err(|_| {
        failed(format!(
            "its `{}` header `{version}` is not a schema version",
            headers::SCHEMA_VERSION
        ))
    })?;
    let Some(upcast) = upcasters.upcast(&message.message_type, version, &message.payload) else {
        return Ok(None);
    };
    let Some(current) = upcast.map_err(|error| failed(error.to_string()))? else {
        return Ok(None);
    };
    let mut headers = message.headers.clone();
    headers.insert(
        headers::EVENT_TYPE.to_owned(),
        current.event_type.to_owned(),
    );
    headers.insert(
        headers::SCHEMA_VERSION.to_owned(),
        current.schema_version.to_string(),
    );
    Ok(Some(OutboxMessage {
        message_type: current.event_type.to_owned(),
        payload: Box::<str>::from(current.data),
        headers,
        ..message.clone()
    }))
}

/// A future that runs several futures concurrently (in the task that polls it) and yields
/// their outputs in their order.
struct JoinAll<'a, T> {
    running: Vec<Option<Pin<Box<dyn Future<Output = T> + Send + 'a>>>>,
    outputs: Vec<Option<T>>,
}

impl<'a, T> JoinAll<'a, T> {
    fn new(futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Self {
        Self {
            outputs: futures.iter().map(|_| None).collect(),
            running: futures.into_iter().map(Some).collect(),
        }
    }
}

// The outputs are never pinned: they are moved out once every future is done.
impl<T> Unpin for JoinAll<'_, T> {}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, output) in this.running.iter_mut().zip(&mut this.outputs) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
    }
}

/// A future that turns a panic while it is polled into an `Err` with the panic's payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// A [`Publisher`] that keeps what it publishes in memory: the embedded default and the
/// publisher of tests. It can be told to reject every message of some keys (a poison key).
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    inner: Arc<Mutex<PublisherState>>,
    published: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct PublisherState {
    messages: Vec<OutboxMessage>,
    rejected_keys: HashSet<String>,
    rejections: u64,
}

impl PublisherState {
    /// Keeps `message`, or counts and reports its rejection when its key is rejected.
    fn accept(&mut self, message: &OutboxMessage) -> Result<(), PublishError> {
        if self.rejected_keys.contains(&message.key) {
            self.rejections += 1;
            return Err(rejected(message));
        }
        self.messages.push(message.clone());
        Ok(())
    }
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher")
            .field("published", &self.lock().messages.len())
            .finish_non_exhaustive()
    }
}

impl MemoryPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PublisherState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rejects every message of `key` from now on.
    pub fn reject_key(&self, key: impl Into<String>) {
        self.lock().rejected_keys.insert(key.into());
    }

    /// Accepts `key` again.
    pub fn accept_key(&self, key: &str) {
        self.lock().rejected_keys.remove(key);
    }

    /// Every message published so far, in publish order (duplicates included).
    pub fn published(&self) -> Vec<OutboxMessage> {
        self.lock().messages.clone()
    }

    /// Takes every message published so far, in publish order, and forgets them: the count
    /// starts again from zero. A long-running process (a benchmark, an embedded service that
    /// hands the messages on) keeps only what it has not taken yet.
    ///
    /// ```
    /// use dtx::outbox::MemoryPublisher;
    ///
    /// let publisher = MemoryPublisher::new();
    /// assert!(publisher.take().is_empty());
    /// assert_eq!(publisher.count(), 0);
    /// ```
    pub fn take(&self) -> Vec<OutboxMessage> {
        std::mem::take(&mut self.lock().messages)
    }

    /// How many messages were published so far.
    pub fn count(&self) -> usize {
        self.lock().messages.len()
    }

    /// How many publishes were rejected so far.
    pub fn rejections(&self) -> u64 {
        self.lock().rejections
    }

    /// Waits until at least `count` messages were published; `false` on timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.published.notified();
            if self.count() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= count;
            }
        }
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        self.lock().accept(message)?;
        self.published.notify_waiters();
        Ok(())
    }

    /// The batch under one lock, with one wake-up of [`wait_for`](Self::wait_for): each key's
    /// messages in order, a key stopping at its first rejected message (the later ones are
    /// reported unsent), each message kept in its [`publish_span`].
    async fn publish_batch(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        {
            let mut state = self.lock();
            let mut stopped: HashSet<&str> = HashSet::new();
            state.messages.reserve(messages.len());
            for message in messages {
                if stopped.contains(message.key.as_str()) {
                    outcomes.push(Err(not_sent(message)));
                    continue;
                }
                let _span = publish_span(message).entered();
                let outcome = state.accept(message);
                if outcome.is_err() {
                    stopped.insert(&message.key);
                }
                outcomes.push(outcome);
            }
        }
        self.published.notify_waiters();
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn message(id: i64, key: &str, headers: &[(&str, &str)]) -> OutboxMessage {
        OutboxMessage {
            id,
            key: key.to_owned(),
            sequence: Some(1),
            message_id: uuid::Uuid::now_v7(),
            message_type: "Placed".to_owned(),
            payload: format!("{{\"n\":{id}}}").into(),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            attempts: 0,
            last_error: None,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_batch_goes_as_stored_and_a_key_stops_at_a_message_that_cannot_be_sent() {
        let publisher = MemoryPublisher::new();
        // All as stored: the batch is handed over as it is.
        let batch = [message(1, "A", &[]), message(2, "B", &[("x-tenant", "7")])];
        let outcomes = publish_batch_as(&publisher, &batch, &Payloads::Stored).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(publisher.published(), batch);

        // A header that cannot be sent stops its key (A); the other key (B) still goes, in
        // order, and the messages after A's failure are reported unsent.
        let publisher = MemoryPublisher::new();
        let batch = [
            message(3, "B", &[]),
            message(4, "A", &[("bad name", "v")]),
            message(5, "A", &[]),
            message(6, "B", &[]),
        ];
        let outcomes = publish_batch_as(&publisher, &batch, &Payloads::Stored).await;
        let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, true, true, false]);
        assert!(outcomes[1].as_ref().is_err_and(|e| e.permanent));
        let sent: Vec<i64> = publisher.published().iter().map(|m| m.id).collect();
        assert_eq!(sent, [3, 6]);
    }

    /// The in-memory publisher's batch: a rejected key stops at its first message (counted as
    /// the one rejection), its later messages are reported unsent and kept nowhere, the other
    /// keys go through in order; `take` hands over what was published and starts again.
    #[tokio::test]
    async fn the_memory_batch_stops_a_rejected_key_and_take_starts_again() {
        let publisher = MemoryPublisher::new();
        publisher.reject_key("A");
        let waiting = {
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.wait_for(2, Duration::from_secs(30)).await })
        };
        let batch = [
            message(1, "A", &[]),
            message(2, "B", &[]),
            message(3, "A", &[]),
            message(4, "B", &[]),
        ];
        let outcomes = publisher.publish_batch(&batch).await;
        let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
        assert_eq!(failed, [true, false, true, false]);
        let rejected = outcomes[0].as_ref().expect_err("A is rejected");
        assert!(rejected.message.contains("`A` is rejected"), "{rejected}");
        let unsent = outcomes[2].as_ref().expect_err("behind A's failure");
        assert!(unsent.message.contains("was not sent"), "{unsent}");
        assert_eq!(publisher.rejections(), 1);
        assert!(
            waiting.await.expect("waiter"),
            "one wake-up for the batch reaches waiters"
        );

        let taken: Vec<i64> = publisher.take().iter().map(|m| m.id).collect();
        assert_eq!(taken, [2, 4]);
        assert_eq!(publisher.count(), 0);
        assert!(publisher.take().is_empty());

        // A key accepted again goes through.
        publisher.accept_key("A");
        let outcomes = publisher.publish_batch(&batch[..1]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(publisher.published(), batch[..1]);
    }
}
