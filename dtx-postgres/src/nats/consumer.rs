//! The NATS `JetStream` inbox consumer (feature `nats`): a durable pull consumer that applies
//! each message through an [`Inbox`], exactly once for its database effects.
//!
//! [`NatsConsumer`] creates (or updates) a durable pull consumer on a stream, fetches messages in
//! batches of [`ConsumerOptions::batch_size`] and handles them **one at a time, in the order the
//! stream delivers them**. For each message:
//!
//! - its headers are read with [`InboundMessage::from_headers`] (`source` is `subject #sequence`,
//!   the stream sequence; `delivery` is `JetStream`'s delivery count). A message whose dtx headers
//!   are missing or malformed is dead-lettered at once (under
//!   [`InboundMessage::stand_in_id`] when it has no usable id) and terminated
//!   (`AckKind::Term`);
//! - otherwise [`Inbox::receive`] runs the handler in one unit of work with the message's inbox
//!   record. The broker is acknowledged **only after that commit**; a redelivery of a message
//!   already applied is recognised ([`Handled::Duplicate`]) and acknowledged without a handler
//!   call;
//! - a [`Refused::Poison`] message (its payload does not decode) is dead-lettered and terminated;
//! - a [`Refused::Retry`] (the handler failed, the database did not commit) is nak'd with the
//!   delay [`ConsumerOptions::backoff_after`]`(delivery)`; the failure of delivery
//!   [`ConsumerOptions::max_deliveries`] (or a later one) is dead-lettered in the database and
//!   terminated instead. Dead letters are visible and requeueable
//!   ([`dtx::inbox::InboxStore::dead_letters`], [`dtx::inbox::InboxStore::requeue`]); requeued
//!   ones are handled between batches ([`Inbox::redeliver_requeued`]).
//!
//! # How the durable consumer is configured
//!
//! - `ack_policy: Explicit`, `deliver_policy: All` (on creation).
//! - `max_deliver: -1` (unlimited): `JetStream` never drops a message on its own — that would
//!   lose it without a trace. The consumer gives up instead, by dead-lettering in the database
//!   before it terminates the message, so nothing leaves the stream unrecorded and nothing loops
//!   for ever.
//! - `ack_wait` ([`NatsConsumerConfig::ack_wait`], 30 s by default): how long a message delivered
//!   to an instance that died waits before it is delivered again. It must exceed the time one
//!   handler takes; while a batch is worked through, the messages still waiting in it are kept
//!   alive (`AckKind::Progress`) every half `ack_wait`.
//! - `max_ack_pending` ([`NatsConsumerConfig::max_ack_pending`], the batch size by default):
//!   bounds how far later messages can overtake those of an instance that crashed.
//!
//! `JetStream` counts every delivery, including those that ended without a verdict (the process
//! crashed or stopped, the ack timed out). So a message may reach `max_deliveries` with fewer
//! failures of its own; it is still handled, and dead-lettered only if that delivery fails too.
//! A message delivered more than twice `max_deliveries` times is dead-lettered *without* being
//! handled: its deliveries keep ending with no verdict, most likely because handling it stops
//! the process, and it must not take the consumer down for ever.
//!
//! # Order
//!
//! One instance handles a batch sequentially and a batch only after the previous one, so
//! messages of one key (one subject, one `dtx-stream-id`) are applied in stream order while
//! their handlers succeed and the instance runs. The guarantee has three limits:
//!
//! - **Retries**: a message nak'd with a delay is delivered again after it; the later messages
//!   of its key that arrive in the meantime are applied first. Where a handler's effect depends
//!   on its key's previous message, the handler must check (a version it expects, say) and fail
//!   until that message is applied.
//! - **Several instances** on one durable consumer share its messages: one key's messages may be
//!   handled by two instances at once, in any order. Run one instance per durable consumer where
//!   per-key order matters (a second one as a standby is fine: it waits while the first holds
//!   the messages).
//!
//! - **Crashes**: the messages a dead instance held and had not acknowledged come back after
//!   `ack_wait`, before any message not yet delivered; but in the meantime another instance
//!   (or the restarted one) may apply later messages of their keys. With `max_ack_pending` at
//!   the batch size (the default), at most as many as the dead instance had acknowledged of its
//!   last batch slip in before them; a clean stop ([`NatsConsumer::run`]'s `shutdown`) hands
//!   its messages back at once and keeps the order.
//!
//! # Stopping
//!
//! [`NatsConsumer::run`] stops when its `shutdown` future completes, between two messages: the
//! message in hand is finished (its unit of work committed or rolled back, the broker answered),
//! and the messages of the batch not handled yet are nak'd without delay, so another instance
//! gets them at once. It never abandons a unit of work half way.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use dtx::inbox::{Consumer, ConsumerOptions, InboundMessage, Inbox};
//! use dtx::projection::HandlerError;
//! use dtx::uow::{BoxFuture, UnitOfWork};
//! use dtx_postgres::PgUnitOfWork;
//! use dtx_postgres::nats::{NatsConsumer, NatsConsumerConfig};
//!
//! struct Payments;
//!
//! impl Consumer for Payments {
//!     const NAME: &'static str = "payments";
//!     fn event_types() -> &'static [&'static str] {
//!         &["OrderPlaced"]
//!     }
//!     fn handle<'a>(
//!         &'a self,
//!         message: &'a InboundMessage,
//!         uow: &'a mut dyn UnitOfWork,
//!     ) -> BoxFuture<'a, Result<(), HandlerError>> {
//!         Box::pin(async move {
//!             let conn = PgUnitOfWork::connection_of(uow).await.map_err(HandlerError::failed)?;
//!             sqlx::query("INSERT INTO payments_due (order_message) VALUES ($1)")
//!                 .bind(message.message_id)
//!                 .execute(conn)
//!                 .await
//!                 .map_err(HandlerError::failed)?;
//!             Ok(())
//!         })
//!     }
//! }
//!
//! // The client through dtx-postgres's re-export: its version always fits `NatsConsumer`.
//! let client = dtx_postgres::async_nats::connect("127.0.0.1:4222").await?;
//! let inbox = Inbox::new(dtx_postgres::PgInbox::new(pool));
//! let config = NatsConsumerConfig::new("ORDERS", "payments")
//!     .filter_subject("orders.>")
//!     .options(ConsumerOptions { max_deliveries: 5, ..ConsumerOptions::default() });
//! let consumer = NatsConsumer::new(client, inbox, Payments, config);
//! consumer.ensure().await?; // fail fast on a missing stream or a refused configuration
//! consumer.run(std::future::pending()).await?; // or a shutdown signal: stops cleanly
//! # Ok(())
//! # }
//! ```

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use dtx::inbox::{Consumer, ConsumerOptions, Handled, InboundMessage, Inbox, Refused};
use dtx::{Backoff, Jitter};
use futures_util::StreamExt as _;
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// Where a [`NatsConsumer`] reads and how its durable consumer is configured.
#[derive(Debug, Clone)]
pub struct NatsConsumerConfig {
    stream: String,
    durable: String,
    filter_subject: Option<String>,
    options: ConsumerOptions,
    ack_wait: Duration,
    max_ack_pending: Option<i64>,
    idle_wait: Duration,
    confirm_acks: bool,
}

impl NatsConsumerConfig {
    /// The durable consumer `durable` on the `JetStream` stream `stream`, reading every subject
    /// of the stream, with [`ConsumerOptions::default`].
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: None,
            options: ConsumerOptions::default(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: None,
            idle_wait: Duration::from_secs(5),
            confirm_acks: false,
        }
    }

    /// Reads only the subjects matching `subject` (wildcards allowed: `orders.>`). One filter
    /// subject per durable consumer; read several with a wildcard or one consumer each.
    #[must_use]
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// Retries, backoff, dead-lettering and batch size.
    #[must_use]
    pub fn options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// How long a delivered message may go unacknowledged before `JetStream` delivers it again
    /// (30 s by default): the delay before the messages of an instance that died come back.
    /// It must exceed the time one handler takes.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// The most messages delivered and not yet acknowledged (the batch size by default): a
    /// bound on how many later messages can overtake those of an instance that crashed (see
    /// the [module docs](self)).
    #[must_use]
    pub fn max_ack_pending(mut self, max_ack_pending: i64) -> Self {
        self.max_ack_pending = Some(max_ack_pending);
        self
    }

    /// How long one pull request waits for messages when there are none (5 s by default):
    /// requeued dead letters are looked at at least this often.
    #[must_use]
    pub fn idle_wait(mut self, idle_wait: Duration) -> Self {
        self.idle_wait = idle_wait;
        self
    }

    /// Whether each acknowledgement waits for the server's confirmation (`false` by default).
    /// Either way a message is acknowledged only after its unit of work committed, and an
    /// acknowledgement that is lost makes a redelivery the inbox recognises; confirming only
    /// narrows the window for those, at a round trip per message.
    #[must_use]
    pub fn confirm_acks(mut self, confirm: bool) -> Self {
        self.confirm_acks = confirm;
        self
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// The durable consumer's configuration, as [`NatsConsumer::ensure`] creates or updates it.
    pub fn jetstream_config(&self) -> pull::Config {
        let batch = i64::try_from(self.options.batch_size.max(1)).unwrap_or(i64::MAX);
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some("dtx inbox consumer".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            max_ack_pending: self.max_ack_pending.unwrap_or(batch),
            ..pull::Config::default()
        }
    }
}

/// What a [`NatsConsumer`] did with the messages it handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeStats {
    /// Messages whose handler ran and committed.
    pub applied: usize,
    /// Messages recorded without a handler call (a type the consumer does not handle).
    pub ignored: usize,
    /// Redeliveries of messages already in the inbox, skipped.
    pub duplicates: usize,
    /// Failures nak'd for a later retry.
    pub retried: usize,
    /// Messages dead-lettered (bad headers, poison, or out of deliveries).
    pub dead_lettered: usize,
    /// Requeued dead letters applied.
    pub requeued_applied: usize,
}

impl ConsumeStats {
    /// Messages taken from the broker.
    pub fn delivered(&self) -> usize {
        self.applied + self.ignored + self.duplicates + self.retried + self.dead_lettered
    }

    fn add(&mut self, other: Self) {
        self.applied += other.applied;
        self.ignored += other.ignored;
        self.duplicates += other.duplicates;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.requeued_applied += other.requeued_applied;
    }
}

/// A failure of the broker or of the database, as [`NatsConsumer`] reports it.
#[derive(Debug, thiserror::Error)]
pub enum NatsConsumerError {
    /// The durable consumer could not be created or updated (`JetStream` refused it, or did not
    /// answer).
    #[error("durable consumer `{durable}` on stream `{stream}`: {source}")]
    Setup {
        /// The stream.
        stream: String,
        /// The durable consumer.
        durable: String,
        /// `JetStream`'s answer.
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
        /// Whether retrying can help (a timeout or a lost connection, not a refusal).
        transient: bool,
    },
    /// Fetching or acknowledging failed.
    #[error("NATS JetStream: {0}")]
    Broker(#[source] async_nats::Error),
    /// The inbox's database failed (for requeued dead letters).
    #[error(transparent)]
    Inbox(#[from] dtx::Error),
}

/// A durable `JetStream` pull consumer feeding consumer `C` through an [`Inbox`]; see the
/// [module docs](self) for what it guarantees.
pub struct NatsConsumer<C: Consumer> {
    jetstream: jetstream::Context,
    inbox: Inbox,
    consumer: C,
    config: NatsConsumerConfig,
}

impl<C: Consumer> std::fmt::Debug for NatsConsumer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("consumer", &C::NAME)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What became of one message, for the stats and the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Handled(Handled),
    Retried,
    DeadLettered,
    /// The database could not dead-letter it: nak'd, to be decided on a later delivery.
    Undecided,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Self::Handled(Handled::Applied) => "applied",
            Self::Handled(Handled::Ignored) => "ignored",
            Self::Handled(Handled::Duplicate) => "duplicate",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Undecided => "undecided",
        }
    }

    fn count(self, stats: &mut ConsumeStats) {
        match self {
            Self::Handled(Handled::Applied) => stats.applied += 1,
            Self::Handled(Handled::Ignored) => stats.ignored += 1,
            Self::Handled(Handled::Duplicate) => stats.duplicates += 1,
            Self::Retried | Self::Undecided => stats.retried += 1,
            Self::DeadLettered => stats.dead_lettered += 1,
        }
    }
}

/// How a batch ended.
enum BatchEnd {
    /// Every message delivered was handled; the pull request is over.
    Done,
    /// `shutdown` completed: the rest of the batch was nak'd.
    Stopped,
}

impl<C: Consumer> NatsConsumer<C> {
    /// A consumer on a connected client (a [`jetstream::Context`] works too: it keeps its
    /// domain, prefix and timeout).
    pub fn new(
        jetstream: impl Into<JetStream>,
        inbox: Inbox,
        consumer: C,
        config: NatsConsumerConfig,
    ) -> Self {
        Self {
            jetstream: jetstream.into().0,
            inbox,
            consumer,
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &NatsConsumerConfig {
        &self.config
    }

    /// The consumer it feeds.
    pub fn consumer(&self) -> &C {
        &self.consumer
    }

    /// The inbox it records in.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Creates the durable consumer, or updates its configuration to
    /// [`NatsConsumerConfig::jetstream_config`]. [`run`](Self::run) does it too; calling it
    /// first fails fast on a missing stream or a configuration `JetStream` refuses.
    pub async fn ensure(&self) -> Result<(), NatsConsumerError> {
        self.pull_consumer().await.map(drop)
    }

    async fn pull_consumer(&self) -> Result<PullConsumer, NatsConsumerError> {
        use async_nats::jetstream::stream::ConsumerErrorKind;
        self.jetstream
            .create_consumer_on_stream(self.config.jetstream_config(), &self.config.stream)
            .await
            .map_err(|source| NatsConsumerError::Setup {
                stream: self.config.stream.clone(),
                durable: self.config.durable.clone(),
                transient: matches!(
                    source.kind(),
                    ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
                ),
                source,
            })
    }

    /// Runs until `shutdown` completes: fetches and handles batches, handles requeued dead
    /// letters between them, and waits up to [`NatsConsumerConfig::idle_wait`] for messages
    /// when there are none. Broker and database failures are logged and retried with backoff
    /// (the client reconnects by itself); only a durable consumer `JetStream` refuses to create
    /// at the start is an error. Stops between two messages, as the [module docs](self) say.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), NatsConsumerError> {
        tokio::pin!(shutdown);
        let backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Jitter::Equal,
        );
        let mut failures = 0u32;
        let mut pull = None;
        loop {
            if stopping(&mut shutdown).await {
                return Ok(());
            }
            let step = async {
                let pull = match &pull {
                    Some(pull) => pull,
                    None => pull.insert(self.pull_consumer().await?),
                };
                self.redeliver_requeued().await?;
                self.next_batch(pull, self.config.idle_wait, &mut shutdown)
                    .await
            }
            .await;
            match step {
                Ok((_, BatchEnd::Stopped)) => return Ok(()),
                Ok((_, BatchEnd::Done)) => failures = 0,
                Err(NatsConsumerError::Setup {
                    transient: false, ..
                }) if failures == 0 && pull.is_none() => {
                    // Refused at the start: a configuration to fix, not a failure to wait out.
                    return step.map(drop);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.delay(failures);
                    tracing::warn!(
                        consumer = C::NAME,
                        stream = %self.config.stream,
                        durable = %self.config.durable,
                        %error,
                        retry_in = ?delay,
                        "NATS inbox consumer failed; retrying"
                    );
                    // The durable consumer is created again: it may have been deleted.
                    pull = None;
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Handles what the stream holds for it now, batch after batch, and the requeued dead
    /// letters, until a fetch finds nothing: for tests, tools and one-off catch-ups. A message
    /// nak'd for a retry is not waited for.
    pub async fn run_until_idle(&self) -> Result<ConsumeStats, NatsConsumerError> {
        let pull = self.pull_consumer().await?;
        let mut total = ConsumeStats {
            requeued_applied: self.redeliver_requeued().await?,
            ..ConsumeStats::default()
        };
        let never = std::future::pending::<()>();
        let mut never = std::pin::pin!(never);
        loop {
            let (stats, _) = self.next_batch(&pull, Duration::ZERO, &mut never).await?;
            total.add(stats);
            if stats.delivered() == 0 {
                return Ok(total);
            }
            total.requeued_applied += self.redeliver_requeued().await?;
        }
    }

    async fn redeliver_requeued(&self) -> Result<usize, NatsConsumerError> {
        let applied = self
            .inbox
            .redeliver_requeued(&self.consumer, self.config.options.batch_size.max(1))
            .await?;
        if applied > 0 {
            tracing::info!(consumer = C::NAME, applied, "requeued dead letters applied");
        }
        Ok(applied)
    }

    /// One pull request of up to a batch of messages, handled one by one as they arrive; it
    /// waits up to `wait` for them (`ZERO`: takes what is there).
    async fn next_batch<S: Future<Output = ()>>(
        &self,
        pull: &PullConsumer,
        wait: Duration,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> Result<(ConsumeStats, BatchEnd), NatsConsumerError> {
        let batch_size = self.config.options.batch_size.max(1);
        let mut messages = if wait.is_zero() {
            pull.fetch().max_messages(batch_size).messages().await
        } else {
            pull.batch()
                .max_messages(batch_size)
                .expires(wait)
                .messages()
                .await
        }
        .map_err(|e| NatsConsumerError::Broker(Box::new(e)))?;
        let span = tracing::debug_span!(
            "dtx.nats.batch",
            consumer = C::NAME,
            stream = %self.config.stream,
            durable = %self.config.durable,
            messages = tracing::field::Empty,
        );
        let mut stats = ConsumeStats::default();
        let mut kept_alive = Instant::now();
        let end = async {
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.as_mut() => None,
                    next = messages.next() => Some(next),
                };
                let Some(next) = next else {
                    // Stopping: hand back what the client holds or is receiving for this
                    // pull request, so that another instance gets it without waiting for
                    // `ack_wait`; a request still waiting for messages is left to expire.
                    while let Ok(Some(Ok(message))) =
                        tokio::time::timeout(Duration::from_millis(100), messages.next()).await
                    {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    return Ok(BatchEnd::Stopped);
                };
                let message = match next {
                    None => return Ok(BatchEnd::Done),
                    Some(Ok(message)) => message,
                    Some(Err(error)) => return Err(NatsConsumerError::Broker(error)),
                };
                if kept_alive.elapsed() > self.config.ack_wait / 2 {
                    // The messages waiting in this batch were delivered a while ago: keep the
                    // one in hand from being redelivered while it is handled.
                    message
                        .ack_with(AckKind::Progress)
                        .await
                        .map_err(NatsConsumerError::Broker)?;
                    kept_alive = Instant::now();
                }
                let verdict = self.deliver(&message).await?;
                verdict.count(&mut stats);
            }
        }
        .instrument(span.clone())
        .await;
        span.record("messages", stats.delivered());
        end.map(|end| (stats, end))
    }

    /// Handles one message and answers the broker: the whole verdict path of the
    /// [module docs](self). `Err` only when the broker could not be answered.
    async fn deliver(&self, message: &jetstream::Message) -> Result<Verdict, NatsConsumerError> {
        let info = message.info().map_err(NatsConsumerError::Broker)?;
        let sequence = info.stream_sequence;
        let delivery = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let span = tracing::info_span!(
            "dtx.nats.message",
            consumer = C::NAME,
            subject = %message.subject,
            stream_sequence = sequence,
            delivery,
            outcome = tracing::field::Empty,
        );
        let verdict = self
            .verdict(message, sequence, delivery)
            .instrument(span.clone())
            .await;
        let answer = match verdict {
            Verdict::Handled(_) => AckKind::Ack,
            Verdict::DeadLettered => AckKind::Term,
            Verdict::Retried | Verdict::Undecided => {
                AckKind::Nak(Some(self.config.options.backoff_after(delivery)))
            }
        };
        span.record("outcome", verdict.name());
        let answered = if self.config.confirm_acks && matches!(answer, AckKind::Ack) {
            message.double_ack().await
        } else {
            message.ack_with(answer).await
        };
        answered.map_err(NatsConsumerError::Broker)?;
        Ok(verdict)
    }

    async fn verdict(&self, message: &jetstream::Message, sequence: u64, delivery: u32) -> Verdict {
        let mut headers = Vec::new();
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                if let Some(value) = values.first() {
                    headers.push((name.to_string(), value.as_str().to_owned()));
                }
            }
        }
        let source = format!("{} #{sequence}", message.subject);
        let inbound =
            match InboundMessage::from_headers(headers, message.payload.to_vec(), source, delivery)
            {
                Ok(inbound) => inbound,
                Err((problem, stand_in)) => {
                    return self
                        .dead_letter(&stand_in, &problem.to_string(), delivery)
                        .await;
                }
            };
        let max = self.config.options.max_deliveries.max(1);
        if delivery > max.saturating_mul(2) {
            let error = format!(
                "delivered {delivery} times, {} of them without an answer (the consumer stopped \
                 or crashed while handling it, or its ack timed out): not handled again",
                delivery.saturating_sub(max)
            );
            return self.dead_letter(&inbound, &error, delivery).await;
        }
        match self.inbox.receive(&self.consumer, &inbound).await {
            Ok(handled) => Verdict::Handled(handled),
            Err(refused @ Refused::Poison(_)) => {
                self.dead_letter(&inbound, &refused.error(), delivery).await
            }
            Err(refused @ Refused::Retry(_)) if delivery >= max => {
                self.dead_letter(&inbound, &refused.error(), delivery).await
            }
            Err(refused) => {
                tracing::debug!(
                    consumer = C::NAME,
                    message_id = %inbound.message_id,
                    delivery,
                    error = %refused.error(),
                    "handler failed; the message comes back later"
                );
                Verdict::Retried
            }
        }
    }

    async fn dead_letter(&self, message: &InboundMessage, error: &str, delivery: u32) -> Verdict {
        match self.inbox.dead_letter::<C>(message, error, delivery).await {
            Ok(()) => Verdict::DeadLettered,
            Err(store_error) => {
                tracing::warn!(
                    consumer = C::NAME,
                    message_id = %message.message_id,
                    error = %store_error,
                    "the message could not be dead-lettered; it comes back later"
                );
                Verdict::Undecided
            }
        }
    }
}

/// Whether `shutdown` has completed, without waiting for it.
async fn stopping<S: Future<Output = ()>>(shutdown: &mut std::pin::Pin<&mut S>) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => true,
        () = std::future::ready(()) => false,
    }
}

/// The `JetStream` connection a [`NatsConsumer`] uses: made from an [`async_nats::Client`] or
/// a [`jetstream::Context`].
#[derive(Debug, Clone)]
pub struct JetStream(jetstream::Context);

impl From<async_nats::Client> for JetStream {
    fn from(client: async_nats::Client) -> Self {
        Self(jetstream::new(client))
    }
}

impl From<jetstream::Context> for JetStream {
    fn from(context: jetstream::Context) -> Self {
        Self(context)
    }
}
