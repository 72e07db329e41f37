//! The other side of the broker: consumers that apply each message's effect exactly once,
//! through an **inbox**.
//!
//! The outbox publishes at least once, so a consumer sees some messages twice (a relay that
//! crashed between the broker's ack and its checkpoint, a broker that redelivers after a lost
//! ack). A [`Consumer`] declared with [`#[consumer]`](macro@crate::consumer) — the handler shape
//! of [`#[projection]`](macro@crate::projection), one method per event payload type — runs in a
//! unit of work together with the insert of the message's id into the inbox
//! ([`InboxStore::record_in`]): the second delivery of a message finds its id there and is
//! skipped, and the handler's database writes commit once with the record. The broker is
//! acknowledged only after that commit; a crash before it redelivers the message, which then
//! either applies (nothing was committed) or is recognised.
//!
//! A message arrives typed: the handler for the payload type named by the message's
//! `dtx-event-type` header is called with the payload decoded at the `dtx-schema-version` the
//! header gives. The `traceparent` header becomes the parent of the handler's span
//! (`dtx.inbox.handle`), so one trace crosses the services.
//!
//! A message that cannot be applied — its handler keeps failing, its payload does not decode,
//! its headers name no message id — is **dead-lettered**: stored with its error in the
//! database ([`InboxStore::dead_letters`]), never redelivered in a loop. An operator requeues it
//! ([`InboxStore::requeue`]) once the cause is fixed; the consumer then handles it again.
//!
//! The broker drivers live with the broker clients, in `dtx-postgres` (features `nats` and
//! `kafka`); the inbox itself is backend-neutral: [`MemoryInbox`] (the embedded default) and
//! `dtx_postgres::PgInbox` pass the same contract.

mod memory;
mod message;
mod store;

pub use memory::MemoryInbox;
pub use message::{InboundMessage, MessageProblem};
pub use store::{
    DeadLetter, DeadLetterStatus, InboxStore, OffsetAdvance, PartitionKey, PartitionOffset,
    SharedInboxStore,
};

use crate::error::{Error, Result};
use crate::projection::HandlerError;
use crate::uow::{BoxFuture, UnitOfWork};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// A consumer of messages from another service; implemented by
/// [`#[consumer]`](macro@crate::consumer).
pub trait Consumer: Send + Sync + 'static {
    /// Its name: the key of its inbox records, dead letters and partition offsets, unique among
    /// the consumers of a service.
    const NAME: &'static str;

    /// The event types it handles. A message of another type is recorded and acknowledged
    /// without a handler call.
    fn event_types() -> &'static [&'static str];

    /// Applies one message in `uow` (the unit of work its inbox record commits in).
    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;
}

/// A consumer registered at link time by [`#[consumer]`](macro@crate::consumer).
#[derive(Debug)]
pub struct ConsumerRegistration {
    /// Its name.
    pub name: &'static str,
    /// The Rust type it is declared on.
    pub type_name: fn() -> &'static str,
    /// The event types it handles.
    pub event_types: fn() -> &'static [&'static str],
    /// Where it is declared.
    pub file: &'static str,
    /// The line it is declared on.
    pub line: u32,
}

inventory::collect!(ConsumerRegistration);

impl ConsumerRegistration {
    /// `Type (file:line)`.
    pub fn location(&self) -> String {
        format!("{} ({}:{})", (self.type_name)(), self.file, self.line)
    }
}

/// Every consumer registered in this binary, by name, or [`Error::DuplicateConsumer`] naming
/// both declarations of a name registered twice.
pub fn registered() -> Result<Vec<&'static ConsumerRegistration>> {
    let mut all: Vec<&'static ConsumerRegistration> = inventory::iter::<ConsumerRegistration>
        .into_iter()
        .collect();
    all.sort_by_key(|r| (r.name, r.file, r.line));
    for pair in all.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::DuplicateConsumer {
                name: pair[0].name,
                first: pair[0].location(),
                second: pair[1].location(),
            });
        }
    }
    Ok(all)
}

/// What became of one delivery of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The handler ran and its effects committed with the inbox record.
    Applied,
    /// Recorded without a handler call: the consumer handles no message of its type.
    Ignored,
    /// The message was in the inbox already: a redelivery, skipped.
    Duplicate,
}

/// A delivery that was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The handler failed (or its unit of work did not commit); retry later, then dead-letter.
    #[error("{0}")]
    Retry(HandlerError),
    /// No retry can help (an undecodable payload): dead-letter it now.
    #[error("{0}")]
    Poison(HandlerError),
}

impl Refused {
    /// The error, as text for a dead letter.
    pub fn error(&self) -> String {
        match self {
            Self::Retry(e) | Self::Poison(e) => e.to_string(),
        }
    }
}

/// Runs consumers' handlers with their inbox records: what the broker drivers call for each
/// delivery. Cheap to clone.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dtx::inbox::{Consumer, Handled, Inbox, InboundMessage, MemoryInbox};
/// use dtx::projection::HandlerError;
/// use dtx::uow::{BoxFuture, UnitOfWork};
///
/// struct Audit;
/// impl Consumer for Audit {
///     const NAME: &'static str = "audit";
///     fn event_types() -> &'static [&'static str] { &["PaymentTaken"] }
///     fn handle<'a>(&'a self, _: &'a InboundMessage, _: &'a mut dyn UnitOfWork)
///         -> BoxFuture<'a, Result<(), HandlerError>> { Box::pin(async { Ok(()) }) }
/// }
///
/// let inbox = Inbox::new(MemoryInbox::new());
/// let message = InboundMessage::new(dtx::Uuid::new_v4(), "PaymentTaken", br#"{}"#.to_vec());
/// assert_eq!(inbox.receive(&Audit, &message).await.unwrap(), Handled::Applied);
/// assert_eq!(inbox.receive(&Audit, &message).await.unwrap(), Handled::Duplicate);
/// # });
/// ```
#[derive(Clone)]
pub struct Inbox {
    store: SharedInboxStore,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox on `store`.
    pub fn new(store: impl InboxStore) -> Self {
        Self {
            store: std::sync::Arc::new(store),
        }
    }

    /// An inbox on a shared store.
    pub fn shared(store: SharedInboxStore) -> Self {
        Self { store }
    }

    /// Its store.
    pub fn store(&self) -> &SharedInboxStore {
        &self.store
    }

    /// Records `message` for consumer `C` in `uow` and runs the handler there, unless the
    /// inbox holds it already. The caller commits `uow` (with whatever else it adds, such as a
    /// partition offset) and acknowledges the broker afterwards; on `Err` it rolls `uow` back.
    pub async fn handle_in<C: Consumer>(
        &self,
        consumer: &C,
        message: &InboundMessage,
        uow: &mut dyn UnitOfWork,
    ) -> std::result::Result<Handled, Refused> {
        let span = handle_span::<C>(message);
        let result = async {
            let fresh = self
                .store
                .record_in(uow, C::NAME, message)
                .await
                .map_err(|e| Refused::Retry(HandlerError::Failed(Box::new(e))))?;
            run_handler(consumer, message, uow, fresh).await
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", outcome_name(&result));
        result
    }

    /// [`handle_in`](Self::handle_in) for a batch of messages in one unit of work: their inbox
    /// records in one statement ([`InboxStore::record_all_in`]), then each fresh one's handler,
    /// in order. `Err((i, refused))` when the message at `i` was refused: the caller rolls `uow`
    /// back (with the records and effects of the messages before it) and applies the ones
    /// before it again without it.
    pub async fn handle_all_in<C: Consumer>(
        &self,
        consumer: &C,
        messages: &[&InboundMessage],
        uow: &mut dyn UnitOfWork,
    ) -> std::result::Result<Vec<Handled>, (usize, Refused)> {
        let fresh = self
            .store
            .record_all_in(uow, C::NAME, messages)
            .await
            .map_err(|e| (0, Refused::Retry(HandlerError::Failed(Box::new(e)))))?;
        let mut handled = Vec::with_capacity(messages.len());
        for (index, (message, fresh)) in messages.iter().zip(fresh).enumerate() {
            let span = handle_span::<C>(message);
            let result = run_handler(consumer, message, uow, fresh)
                .instrument(span.clone())
                .await;
            span.record("outcome", outcome_name(&result));
            handled.push(result.map_err(|refused| (index, refused))?);
        }
        Ok(handled)
    }

    /// One delivery in a unit of work of its own: [`handle_in`](Self::handle_in), then commit
    /// (or roll back on a refusal or a duplicate). Acknowledge the broker after `Ok`.
    pub async fn receive<C: Consumer>(
        &self,
        consumer: &C,
        message: &InboundMessage,
    ) -> std::result::Result<Handled, Refused> {
        let started = Instant::now();
        let mut uow = self
            .store
            .begin()
            .await
            .map_err(|e| Refused::Retry(HandlerError::Failed(Box::new(e))))?;
        let result = self.handle_in(consumer, message, uow.as_mut()).await;
        let result = match result {
            Ok(Handled::Duplicate) | Err(_) => {
                let _ = uow.rollback_boxed().await;
                result
            }
            Ok(handled) => match uow.commit_boxed().await {
                Ok(()) => Ok(handled),
                Err(e) => Err(Refused::Retry(HandlerError::Failed(Box::new(e)))),
            },
        };
        crate::telemetry::record_inbox_message(C::NAME, outcome_name(&result), started.elapsed());
        result
    }

    /// Dead-letters `message` for consumer `C` after `attempts` deliveries, with `error`: it is
    /// stored (visible, requeueable) and recorded in the inbox, so a later redelivery is a
    /// duplicate. Acknowledge (terminate) it at the broker afterwards.
    pub async fn dead_letter<C: Consumer>(
        &self,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> Result<()> {
        let mut uow = self.store.begin().await?;
        match self
            .store
            .dead_letter_in(uow.as_mut(), C::NAME, message, error, attempts)
            .await
        {
            Ok(()) => {
                uow.commit_boxed().await?;
                crate::telemetry::record_inbox_dead_letter(C::NAME);
                tracing::warn!(
                    consumer = C::NAME,
                    message_id = %message.message_id,
                    event_type = %message.event_type,
                    attempts,
                    error,
                    "message dead-lettered"
                );
                Ok(())
            }
            Err(e) => {
                let _ = uow.rollback_boxed().await;
                Err(e)
            }
        }
    }

    /// Handles the dead letters of `C` an operator requeued ([`InboxStore::requeue`]), at most
    /// `limit`: each one's handler runs with the removal of its dead letter, in one unit of
    /// work; one that fails again goes back to the dead letters with the new error. Returns how
    /// many were applied. The broker drivers call it between batches.
    pub async fn redeliver_requeued<C: Consumer>(
        &self,
        consumer: &C,
        limit: usize,
    ) -> Result<usize> {
        let mut applied = 0;
        for letter in self.store.requeued(C::NAME, limit).await? {
            let mut uow = self.store.begin().await?;
            if !self
                .store
                .resolve_in(uow.as_mut(), C::NAME, letter.message.message_id)
                .await?
            {
                // Another instance took it.
                let _ = uow.rollback_boxed().await;
                continue;
            }
            let outcome = if C::event_types().contains(&letter.message.event_type.as_str()) {
                consumer.handle(&letter.message, uow.as_mut()).await
            } else {
                Ok(())
            };
            match outcome {
                Ok(()) => {
                    uow.commit_boxed().await?;
                    applied += 1;
                }
                Err(e) => {
                    let _ = uow.rollback_boxed().await;
                    self.store
                        .fail_requeued(C::NAME, letter.message.message_id, &e.to_string())
                        .await?;
                }
            }
        }
        Ok(applied)
    }
}

/// The span of one message's handling, its parent the message's trace.
fn handle_span<C: Consumer>(message: &InboundMessage) -> tracing::Span {
    let span = tracing::info_span!(
        "dtx.inbox.handle",
        consumer = C::NAME,
        message_id = %message.message_id,
        event_type = %message.event_type,
        key = message.key.as_deref().unwrap_or(""),
        delivery = message.delivery,
        outcome = tracing::field::Empty,
    );
    crate::telemetry::set_parent(&span, message.traceparent.as_deref());
    span
}

/// Runs `consumer`'s handler for `message` unless it is a duplicate (`fresh == false`) or of a
/// type the consumer does not handle.
async fn run_handler<C: Consumer>(
    consumer: &C,
    message: &InboundMessage,
    uow: &mut dyn UnitOfWork,
    fresh: bool,
) -> std::result::Result<Handled, Refused> {
    if !fresh {
        return Ok(Handled::Duplicate);
    }
    if !C::event_types().contains(&message.event_type.as_str()) {
        return Ok(Handled::Ignored);
    }
    match consumer.handle(message, uow).await {
        Ok(()) => Ok(Handled::Applied),
        Err(e @ HandlerError::Decode(_)) => Err(Refused::Poison(e)),
        Err(e) => Err(Refused::Retry(e)),
    }
}

fn outcome_name(result: &std::result::Result<Handled, Refused>) -> &'static str {
    match result {
        Ok(Handled::Applied) => "applied",
        Ok(Handled::Ignored) => "ignored",
        Ok(Handled::Duplicate) => "duplicate",
        Err(Refused::Retry(_)) => "failed",
        Err(Refused::Poison(_)) => "poison",
    }
}

/// How a broker driver retries a message whose handler fails, and when it gives up.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Deliveries before a message is dead-lettered (at least 1).
    pub max_deliveries: u32,
    /// The delay before the first redelivery; doubled each time, up to `max_backoff`.
    pub backoff: Duration,
    /// The longest delay between redeliveries.
    pub max_backoff: Duration,
    /// Messages fetched per round trip.
    pub batch_size: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            batch_size: 100,
        }
    }
}

impl ConsumerOptions {
    /// The delay before delivery `delivery + 1` (delivery 1 is the first).
    pub fn backoff_after(&self, delivery: u32) -> Duration {
        let doublings = delivery.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// Decodes the payload of `message` as `E`, at the schema version its header gives (the
/// current one when it names none): what the handlers [`#[consumer]`](macro@crate::consumer)
/// generates call. The error names the message and is a [`HandlerError::Decode`].
pub fn decode<E: crate::projection::Event>(
    message: &InboundMessage,
) -> std::result::Result<E, HandlerError> {
    let problem = |reason: String| {
        HandlerError::Decode(Error::InvalidMessage {
            message_id: message.message_id,
            event_type: message.event_type.clone(),
            source_name: message.source.clone(),
            reason,
        })
    };
    let text = std::str::from_utf8(&message.payload)
        .map_err(|e| problem(format!("the payload is not UTF-8: {e}")))?;
    let version = message.schema_version.unwrap_or(E::SCHEMA_VERSION);
    E::decode(version, text).map_err(|e| problem(format!("the payload does not decode: {e}")))
}
