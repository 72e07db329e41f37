//! The Kafka inbox consumer (feature `kafka`): a topic's records applied exactly once to the
//! database, with the offsets kept in the database.
//!
//! **Offsets in the database.** A [`KafkaConsumer`] keeps the offset of each partition it reads
//! in the inbox store ([`InboxStore::acquire_partition`](dtx::inbox::InboxStore::acquire_partition))
//! and moves it in the same unit of work as the handlers' effects and the inbox records: the
//! records of one fetched batch are handled one by one
//! ([`Inbox::handle_in`]), the offset moves past the last of them
//! ([`InboxStore::advance_partition_in`](dtx::inbox::InboxStore::advance_partition_in)), and
//! everything commits at once. A crash before the commit leaves the offset where it was and the
//! batch is fetched again; after it, the batch is behind the offset. The database's effects
//! therefore happen exactly once, with no consumer group and no commit at the broker.
//!
//! **Sharing partitions.** Several instances (processes, each with its own owner id) share a
//! topic's partitions through leases in the database. Each instance announces itself with a
//! membership lease (a row of the pseudo-topic `"{topic}#members"` among the consumer's
//! partitions) and holds at most its fair share of the partitions — `ceil(partitions /
//! live instances)` — giving back what is over it when another instance joins. The leases are
//! renewed every [`KafkaConsumerOptions::poll_interval`] and by each committed batch; an
//! instance that dies stops renewing, and once its leases expire
//! ([`KafkaConsumerOptions::lease`]) the others take its partitions over, from the offsets it
//! committed. An instance whose lease was taken over cannot move the offset any more: its batch
//! rolls back. Lease expiry is compared with the clock of the consuming host, so keep the
//! hosts' clocks in sync (NTP) and the lease well above their drift.
//!
//! **Failures.** When a record's handler fails, the batch rolls back; the records before the
//! failing one are applied again in a unit of work of their own, and the failing one is retried
//! alone with backoff ([`ConsumerOptions::backoff`]) up to [`ConsumerOptions::max_deliveries`].
//! Then it is dead-lettered ([`InboxStore::dead_letters`](dtx::inbox::InboxStore::dead_letters)),
//! in the same unit of work as the offset moving past it, and the partition goes on: a poison
//! record never blocks its partition, and the order of the records of a partition is otherwise
//! kept. A record that is not a dtx message (no `dtx-event-id` or `dtx-event-type` header) or
//! whose payload does not decode is dead-lettered at once. Dead letters an operator requeues are
//! handled again between batches ([`Inbox::redeliver_requeued`]).
//!
//! **Shutdown.** [`KafkaConsumer::run`] returns once its shutdown future completes: each
//! partition finishes the batch it is applying (nothing that holds a database transaction is
//! ever aborted), and the leases are given back so that another instance takes over at once.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use dtx::inbox::{Consumer, Inbox, InboundMessage};
//! use dtx::projection::HandlerError;
//! use dtx::uow::{BoxFuture, UnitOfWork};
//! use dtx_postgres::kafka::{KafkaConsumer, KafkaConsumerOptions};
//!
//! struct Payments;
//! impl Consumer for Payments {
//!     const NAME: &'static str = "payments";
//!     fn event_types() -> &'static [&'static str] { &["OrderPlaced"] }
//!     fn handle<'a>(&'a self, message: &'a InboundMessage, uow: &'a mut dyn UnitOfWork)
//!         -> BoxFuture<'a, Result<(), HandlerError>> {
//!         Box::pin(async move {
//!             let conn = dtx_postgres::PgUnitOfWork::connection_of(uow).await
//!                 .map_err(HandlerError::failed)?;
//!             sqlx::query("INSERT INTO payments_due (order_event) VALUES ($1)")
//!                 .bind(message.message_id)
//!                 .execute(conn)
//!                 .await
//!                 .map_err(HandlerError::failed)?;
//!             Ok(())
//!         })
//!     }
//! }
//!
//! let inbox = Inbox::new(dtx_postgres::PgInbox::new(pool));
//! let consumer = KafkaConsumer::connect(["127.0.0.1:9092"], "orders.events", inbox, Payments)
//!     .await?
//!     .with_options(KafkaConsumerOptions::default());
//! // Until the future given completes: a signal, a shutdown channel (here: never).
//! consumer.run(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

use dtx::inbox::{
    Consumer, ConsumerOptions, Handled, InboundMessage, Inbox, MessageProblem, OffsetAdvance,
    PartitionKey, Refused, SharedInboxStore,
};
use dtx::projection::HandlerError;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::RecordAndOffset;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use uuid::Uuid;

/// Where a consumer starts reading a partition it has no offset for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartOffset {
    /// The earliest record the broker still keeps (the default).
    #[default]
    Earliest,
    /// The records produced from now on.
    Latest,
}

/// How a [`KafkaConsumer`] fetches, retries and shares partitions.
#[derive(Debug, Clone)]
pub struct KafkaConsumerOptions {
    /// Deliveries before dead-lettering, backoff, and records applied per unit of work
    /// (`batch_size`).
    pub delivery: ConsumerOptions,
    /// How long a partition stays with an instance that stops renewing its lease: the failover
    /// time when an instance dies (default 30 s).
    pub lease: Duration,
    /// How often an instance renews its leases, looks for partitions to take over and handles
    /// requeued dead letters (default 1 s; kept under a third of the lease).
    pub poll_interval: Duration,
    /// Where a partition with no stored offset starts (default: the earliest record).
    pub start: StartOffset,
    /// How long a fetch waits at the broker for new records (default 500 ms).
    pub fetch_wait: Duration,
    /// The most bytes one fetch asks for (default 4 MiB).
    pub fetch_max_bytes: i32,
}

impl Default for KafkaConsumerOptions {
    fn default() -> Self {
        Self {
            delivery: ConsumerOptions::default(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            start: StartOffset::Earliest,
            fetch_wait: Duration::from_millis(500),
            fetch_max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl KafkaConsumerOptions {
    fn tick(&self) -> Duration {
        self.poll_interval
            .min(self.lease / 3)
            .max(Duration::from_millis(10))
    }

    fn batch_size(&self) -> usize {
        self.delivery.batch_size.max(1)
    }
}

/// Why a [`KafkaConsumer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConsumerError {
    /// No broker answered.
    #[error("connecting to Kafka at {brokers}: {reason}")]
    Connect {
        /// The bootstrap brokers.
        brokers: String,
        /// What went wrong.
        reason: String,
    },
    /// The topic does not exist.
    #[error("Kafka topic {0:?} does not exist")]
    NoTopic(String),
    /// A broker request failed.
    #[error("Kafka topic {topic:?}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The inbox store failed.
    #[error(transparent)]
    Store(#[from] dtx::Error),
}

/// Consumes one Kafka topic into consumer `C` through an [`Inbox`], exactly once for the
/// database's effects; see the [module documentation](crate::kafka).
///
/// ```no_run
/// # async fn demo<C: dtx::inbox::Consumer>(inbox: dtx::inbox::Inbox, consumer: C)
/// # -> Result<(), dtx_postgres::kafka::KafkaConsumerError> {
/// use dtx_postgres::kafka::{KafkaConsumer, KafkaConsumerOptions, StartOffset};
/// use std::time::Duration;
///
/// let consumer = KafkaConsumer::connect(["kafka-1:9092"], "orders.events", inbox, consumer)
///     .await?
///     .with_options(KafkaConsumerOptions {
///         lease: Duration::from_secs(10),
///         start: StartOffset::Latest,
///         ..KafkaConsumerOptions::default()
///     });
/// consumer.run(std::future::pending()).await?;
/// # Ok(())
/// # }
/// ```
pub struct KafkaConsumer<C: Consumer> {
    client: Arc<Client>,
    topic: String,
    inbox: Inbox,
    consumer: Arc<C>,
    owner: Uuid,
    options: KafkaConsumerOptions,
}

impl<C: Consumer> std::fmt::Debug for KafkaConsumer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("consumer", &C::NAME)
            .field("topic", &self.topic)
            .field("owner", &self.owner)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<C: Consumer> KafkaConsumer<C> {
    /// Connects to the cluster through `brokers` (`host:port` bootstrap addresses, plaintext)
    /// and consumes `topic` into `consumer` through `inbox`. Connecting gives up after 10 s.
    ///
    /// # Errors
    ///
    /// No broker reachable within 10 s.
    pub async fn connect<I, S>(
        brokers: I,
        topic: impl Into<String>,
        inbox: Inbox,
        consumer: C,
    ) -> Result<Self, KafkaConsumerError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let brokers: Vec<String> = brokers.into_iter().map(Into::into).collect();
        let timeout = Duration::from_secs(10);
        let backoff = rskafka::BackoffConfig {
            deadline: Some(timeout),
            ..rskafka::BackoffConfig::default()
        };
        let build = ClientBuilder::new(brokers.clone())
            .client_id("dtx-inbox")
            .backoff_config(backoff)
            .build();
        let failed = |reason: String| KafkaConsumerError::Connect {
            brokers: brokers.join(","),
            reason,
        };
        match tokio::time::timeout(timeout, build).await {
            Ok(Ok(client)) => Ok(Self::new(client, topic, inbox, consumer)),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
        }
    }

    /// A consumer on a connected [`rskafka`] client (build it through
    /// `dtx_postgres::rskafka`), with a fresh owner id and the default options.
    pub fn new(client: Client, topic: impl Into<String>, inbox: Inbox, consumer: C) -> Self {
        Self {
            client: Arc::new(client),
            topic: topic.into(),
            inbox,
            consumer: Arc::new(consumer),
            owner: Uuid::now_v7(),
            options: KafkaConsumerOptions::default(),
        }
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: KafkaConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the id this instance holds its leases under (default: a fresh UUID). Two running
    /// instances must never share one.
    #[must_use]
    pub fn with_owner(mut self, owner: Uuid) -> Self {
        self.owner = owner;
        self
    }

    /// The id this instance holds its leases under.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// The topic it consumes.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Consumes until `shutdown` completes: takes this instance's share of the partitions,
    /// applies their records, renews the leases, takes over partitions whose leases expired and
    /// handles requeued dead letters. On shutdown every partition finishes the batch it is
    /// applying and the leases are released.
    ///
    /// # Errors
    ///
    /// The topic does not exist or its metadata cannot be read when starting. Later failures
    /// (the broker or the database unreachable for a while) are logged and retried.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), KafkaConsumerError> {
        let span = tracing::info_span!(
            "dtx.kafka.consumer",
            consumer = C::NAME,
            topic = %self.topic,
            owner = %self.owner,
        );
        async {
            self.topic_partitions().await?;
            let mut state = Membership::default();
            tokio::pin!(shutdown);
            loop {
                if let Err(e) = self.rebalance(&mut state).await {
                    tracing::warn!(error = %e, "taking partitions failed; retrying");
                }
                if let Err(e) = self
                    .inbox
                    .redeliver_requeued(&*self.consumer, self.options.batch_size())
                    .await
                {
                    tracing::warn!(error = %e, "redelivering requeued dead letters failed");
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(self.options.tick()) => {}
                }
            }
            self.stop_all(&mut state).await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn store(&self) -> &SharedInboxStore {
        self.inbox.store()
    }

    fn key(&self, partition: i32) -> PartitionKey {
        PartitionKey::new(C::NAME, self.topic.clone(), partition)
    }

    /// The pseudo-topic of the membership leases: `#` is not allowed in Kafka topic names.
    fn member_key(&self, slot: i32) -> PartitionKey {
        PartitionKey::new(C::NAME, format!("{}#members", self.topic), slot)
    }

    async fn topic_partitions(&self) -> Result<BTreeSet<i32>, KafkaConsumerError> {
        let topics =
            self.client
                .list_topics()
                .await
                .map_err(|source| KafkaConsumerError::Kafka {
                    topic: self.topic.clone(),
                    source,
                })?;
        topics
            .into_iter()
            .find(|t| t.name == self.topic)
            .map(|t| t.partitions)
            .ok_or_else(|| KafkaConsumerError::NoTopic(self.topic.clone()))
    }

    async fn partition_client(
        &self,
        state: &mut Membership,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaConsumerError> {
        if let Some(client) = state.clients.get(&partition) {
            return Ok(Arc::clone(client));
        }
        let client = self
            .client
            .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|source| KafkaConsumerError::Kafka {
                topic: self.topic.clone(),
                source,
            })?;
        let client = Arc::new(client);
        state.clients.insert(partition, Arc::clone(&client));
        Ok(client)
    }

    /// One round of the partition sharing: renews this instance's membership and leases,
    /// gives back what is over its share, takes free and expired partitions up to it.
    async fn rebalance(&self, state: &mut Membership) -> Result<(), KafkaConsumerError> {
        let partitions = self.topic_partitions().await?;
        let lease = self.options.lease;
        let store = self.store();

        // Membership: keep (or find) a slot under the pseudo-topic.
        if let Some(slot) = state.slot
            && store
                .acquire_partition(&self.member_key(slot), self.owner, lease, 0)
                .await?
                .is_none()
        {
            state.slot = None;
        }
        let rows = store.partitions(Some(C::NAME)).await?;
        let member_topic = format!("{}#members", self.topic);
        if state.slot.is_none() {
            let used = rows.iter().filter(|r| r.key.topic == member_topic).count();
            for slot in 0..=i32::try_from(used).unwrap_or(i32::MAX) {
                if store
                    .acquire_partition(&self.member_key(slot), self.owner, lease, 0)
                    .await?
                    .is_some()
                {
                    state.slot = Some(slot);
                    break;
                }
            }
        }
        let now = chrono::Utc::now();
        let live = |r: &dtx::inbox::PartitionOffset| r.lease_until.is_some_and(|u| u > now);
        let mut members: BTreeSet<Uuid> = rows
            .iter()
            .filter(|r| r.key.topic == member_topic && live(r))
            .filter_map(|r| r.owner)
            .collect();
        members.insert(self.owner);

        // Workers that stopped (lease lost, panic): forget them.
        let finished: Vec<i32> = state
            .workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in finished {
            if let Some(worker) = state.workers.remove(&partition)
                && let Err(e) = worker.task.await
            {
                tracing::error!(partition, error = %e, "a partition's task panicked");
            }
        }

        // Renew the leases held; a lost one stops its worker.
        let held: Vec<i32> = state.workers.keys().copied().collect();
        for partition in held {
            let renewed = store
                .acquire_partition(&self.key(partition), self.owner, lease, 0)
                .await?;
            if renewed.is_none()
                && let Some(worker) = state.workers.get(&partition)
            {
                tracing::info!(partition, "lease lost to another instance");
                let _ = worker.stop.send(true);
            }
        }

        let count = partitions.len();
        let share = count.div_ceil(members.len().max(1));

        // Over the share (an instance joined): give the highest partitions back.
        while state.workers.len() > share {
            let Some((partition, worker)) = state.workers.pop_last() else {
                break;
            };
            let _ = worker.stop.send(true);
            if let Err(e) = worker.task.await {
                tracing::error!(partition, error = %e, "a partition's task panicked");
            }
            store
                .release_partition(&self.key(partition), self.owner)
                .await?;
            tracing::info!(partition, share, "partition handed over");
        }

        // Under it: take free partitions, and those whose lease expired.
        if state.workers.len() < share {
            self.take_free(state, &partitions, &rows, share).await?;
        }
        Ok(())
    }

    /// Takes free partitions, and those whose lease expired, until this instance holds `share`.
    async fn take_free(
        &self,
        state: &mut Membership,
        partitions: &BTreeSet<i32>,
        rows: &[dtx::inbox::PartitionOffset],
        share: usize,
    ) -> Result<(), KafkaConsumerError> {
        let now = chrono::Utc::now();
        let live = |r: &dtx::inbox::PartitionOffset| r.lease_until.is_some_and(|u| u > now);
        let store = self.store();
        let lease = self.options.lease;
        {
            let stored: HashMap<i32, &dtx::inbox::PartitionOffset> = rows
                .iter()
                .filter(|r| r.key.topic == self.topic)
                .map(|r| (r.key.partition, r))
                .collect();
            for &partition in partitions {
                if state.workers.len() >= share {
                    break;
                }
                if state.workers.contains_key(&partition) {
                    continue;
                }
                let row = stored.get(&partition);
                let free = row.is_none_or(|r| r.owner.is_none_or(|o| o == self.owner) || !live(r));
                if !free {
                    continue;
                }
                let client = self.partition_client(state, partition).await?;
                let initial = if row.is_some() {
                    0
                } else {
                    let at = match self.options.start {
                        StartOffset::Earliest => OffsetAt::Earliest,
                        StartOffset::Latest => OffsetAt::Latest,
                    };
                    client
                        .get_offset(at)
                        .await
                        .map_err(|source| KafkaConsumerError::Kafka {
                            topic: self.topic.clone(),
                            source,
                        })?
                };
                let key = self.key(partition);
                if let Some(next) = store
                    .acquire_partition(&key, self.owner, lease, initial)
                    .await?
                {
                    tracing::info!(partition, next_offset = next, share, "partition taken");
                    let (stop, stopped) = watch::channel(false);
                    let worker = PartitionWorker {
                        key,
                        client,
                        inbox: self.inbox.clone(),
                        consumer: Arc::clone(&self.consumer),
                        owner: self.owner,
                        options: self.options.clone(),
                        next,
                        stop: stopped,
                    };
                    state.workers.insert(
                        partition,
                        Running {
                            stop,
                            task: tokio::spawn(worker.run()),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Stops every partition after its current batch, then gives the leases back.
    async fn stop_all(&self, state: &mut Membership) {
        for worker in state.workers.values() {
            let _ = worker.stop.send(true);
        }
        let store = self.store();
        while let Some((partition, worker)) = state.workers.pop_first() {
            if let Err(e) = worker.task.await {
                tracing::error!(partition, error = %e, "a partition's task panicked");
            }
            if let Err(e) = store
                .release_partition(&self.key(partition), self.owner)
                .await
            {
                tracing::warn!(partition, error = %e, "releasing the partition failed");
            }
        }
        if let Some(slot) = state.slot.take()
            && let Err(e) = store
                .release_partition(&self.member_key(slot), self.owner)
                .await
        {
            tracing::warn!(error = %e, "releasing the membership lease failed");
        }
    }
}

/// What [`KafkaConsumer::run`] holds: its membership slot, its partitions' tasks.
#[derive(Default)]
struct Membership {
    slot: Option<i32>,
    workers: BTreeMap<i32, Running>,
    clients: HashMap<i32, Arc<PartitionClient>>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Why a partition's work stopped short.
enum Halt {
    /// Shutdown or the lease taken: leave the rest to whoever holds the partition next.
    Stopped,
    /// The store failed (or a commit did): resynchronise the offset and go on.
    Failed(dtx::Error),
}

impl From<dtx::Error> for Halt {
    fn from(e: dtx::Error) -> Self {
        Self::Failed(e)
    }
}

/// A fetched record, read as a message (or why it is not one).
struct Delivery {
    offset: i64,
    message: Result<InboundMessage, (MessageProblem, InboundMessage)>,
}

/// Reads and applies one partition while this instance holds its lease.
struct PartitionWorker<C: Consumer> {
    key: PartitionKey,
    client: Arc<PartitionClient>,
    inbox: Inbox,
    consumer: Arc<C>,
    owner: Uuid,
    options: KafkaConsumerOptions,
    /// The offset of the next record: where the stored offset stands.
    next: i64,
    stop: watch::Receiver<bool>,
}

/// Runs `work` unless `stop` is (or becomes) set: only for what holds no transaction.
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => None,
        value = work => Some(value),
    }
}

impl<C: Consumer> PartitionWorker<C> {
    async fn run(mut self) {
        let span = tracing::info_span!(
            "dtx.kafka.partition",
            consumer = C::NAME,
            topic = %self.key.topic,
            partition = self.key.partition,
        );
        self.work().instrument(span).await;
    }

    async fn work(&mut self) {
        let mut failures = 0u32;
        loop {
            let wait_ms = i32::try_from(self.options.fetch_wait.as_millis()).unwrap_or(i32::MAX);
            let fetch = self.client.fetch_records(
                self.next,
                1..self.options.fetch_max_bytes.max(2),
                wait_ms,
            );
            let Some(fetched) = unless_stopped(&mut self.stop, fetch).await else {
                return;
            };
            let outcome = match fetched {
                Ok((records, _high_watermark)) => {
                    let records = self.deliveries(records);
                    if records.is_empty() {
                        // A broker that answers at once when there is nothing: do not spin.
                        let idle = tokio::time::sleep(Duration::from_millis(20));
                        if unless_stopped(&mut self.stop, idle).await.is_none() {
                            return;
                        }
                        continue;
                    }
                    self.apply(records).await
                }
                Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                }) => self.skip_to_earliest().await,
                Err(e) => Err(Halt::Failed(dtx::Error::storage(e))),
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(Halt::Stopped) => return,
                Err(Halt::Failed(e)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, next_offset = self.next, "partition work failed; retrying");
                    let pause = self.options.delivery.backoff_after(failures);
                    if unless_stopped(&mut self.stop, tokio::time::sleep(pause))
                        .await
                        .is_none()
                        || !self.resync().await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the stored offset again after a failure (a commit whose outcome is unknown moved
    /// it or not): `false` when the lease is gone.
    async fn resync(&mut self) -> bool {
        match self
            .inbox
            .store()
            .acquire_partition(&self.key, self.owner, self.options.lease, self.next)
            .await
        {
            Ok(Some(next)) => {
                self.next = next;
                true
            }
            Ok(None) => {
                tracing::info!("lease lost to another instance");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the stored offset failed");
                true
            }
        }
    }

    /// The stored offset is below what the broker still keeps (retention deleted records never
    /// consumed): move it to the earliest record kept.
    async fn skip_to_earliest(&mut self) -> Result<(), Halt> {
        let earliest = self
            .client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| Halt::Failed(dtx::Error::storage(e)))?;
        if earliest <= self.next {
            return Err(Halt::Failed(dtx::Error::Inbox {
                consumer: C::NAME.to_owned(),
                reason: format!(
                    "offset {} of {}/{} is out of the broker's range",
                    self.next, self.key.topic, self.key.partition
                ),
            }));
        }
        tracing::warn!(
            from = self.next,
            to = earliest,
            "records deleted by the broker before they were consumed: skipping to the earliest kept"
        );
        let store = self.inbox.store();
        let mut uow = store.begin().await?;
        if let Err(e) = store
            .advance_partition_in(uow.as_mut(), &self.key, &self.advance(earliest))
            .await
        {
            let _ = uow.rollback_boxed().await;
            return Err(e.into());
        }
        uow.commit_boxed().await?;
        self.next = earliest;
        Ok(())
    }

    fn advance(&self, to: i64) -> OffsetAdvance {
        OffsetAdvance {
            owner: self.owner,
            from: self.next,
            to,
            lease: self.options.lease,
        }
    }

    /// The fetched records from the next offset on, at most a batch, read as messages.
    fn deliveries(&self, mut records: Vec<RecordAndOffset>) -> Vec<Delivery> {
        records.retain(|r| r.offset >= self.next);
        records.sort_by_key(|r| r.offset);
        records.truncate(self.options.batch_size());
        let topic = &self.key.topic;
        let partition = self.key.partition;
        records
            .into_iter()
            .map(|r| {
                let headers = r
                    .record
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()));
                Delivery {
                    offset: r.offset,
                    message: InboundMessage::from_headers(
                        headers,
                        r.record.value.unwrap_or_default(),
                        format!("{topic}/{partition}@{}", r.offset),
                        1,
                    ),
                }
            })
            .collect()
    }

    /// Applies a fetched batch: all of it in one unit of work; when a record fails, the ones
    /// before it, then that one retried alone (then dead-lettered), then the rest.
    async fn apply(&mut self, deliveries: Vec<Delivery>) -> Result<(), Halt> {
        let mut pending = &deliveries[..];
        while !pending.is_empty() {
            let mut end = pending.len();
            loop {
                match self.apply_run(&pending[..end]).await? {
                    Ok(()) => {
                        pending = &pending[end..];
                        break;
                    }
                    Err((0, refused)) => {
                        self.retry_or_dead_letter(&pending[0], refused).await?;
                        pending = &pending[1..];
                        break;
                    }
                    Err((failed, _)) => end = failed,
                }
            }
        }
        Ok(())
    }

    /// Handles `run` in one unit of work with the offset moving past it. `Ok(Err((i, _)))`
    /// when the record at `i` was refused (everything rolled back); `Err` when the store failed
    /// or the lease is gone.
    async fn apply_run(&mut self, run: &[Delivery]) -> Result<Result<(), (usize, Refused)>, Halt> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Ok(()));
        };
        let span = tracing::info_span!(
            "dtx.kafka.batch",
            from = first.offset,
            to = last.offset,
            records = run.len(),
            delivery = first.message.as_ref().map_or(1, |m| m.delivery),
        );
        async {
            let started = Instant::now();
            let store = self.inbox.store();
            let mut uow = store.begin().await?;
            let mut messages = Vec::with_capacity(run.len());
            for (index, delivery) in run.iter().enumerate() {
                match &delivery.message {
                    Ok(message) => messages.push(message),
                    Err((problem, message)) => {
                        // Nothing written yet: the records before it are applied on their own.
                        let _ = uow.rollback_boxed().await;
                        let refused = Refused::Poison(not_a_message(problem, message));
                        return Ok(Err((index, refused)));
                    }
                }
            }
            let outcomes = match self
                .inbox
                .handle_all_in(&*self.consumer, &messages, uow.as_mut())
                .await
            {
                Ok(outcomes) => outcomes,
                Err(refused) => {
                    let _ = uow.rollback_boxed().await;
                    return Ok(Err(refused));
                }
            };
            let step = self.advance(last.offset + 1);
            if let Err(e) = store
                .advance_partition_in(uow.as_mut(), &self.key, &step)
                .await
            {
                let _ = uow.rollback_boxed().await;
                return Err(Halt::Failed(e));
            }
            uow.commit_boxed().await?;
            self.next = step.to;
            let each = started.elapsed() / u32::try_from(run.len()).unwrap_or(u32::MAX);
            for handled in outcomes {
                dtx::telemetry::record_inbox_message(C::NAME, outcome_name(handled), each);
            }
            Ok(Ok(()))
        }
        .instrument(span)
        .await
    }

    /// The record at the head of the partition was refused: retries it alone with backoff up to
    /// the maximum deliveries, then dead-letters it with the offset moving past it.
    async fn retry_or_dead_letter(
        &mut self,
        delivery: &Delivery,
        mut refused: Refused,
    ) -> Result<(), Halt> {
        let mut message = match &delivery.message {
            Ok(message) | Err((_, message)) => message.clone(),
        };
        let max = self.options.delivery.max_deliveries.max(1);
        while matches!(refused, Refused::Retry(_)) && message.delivery < max {
            tracing::info!(
                offset = delivery.offset,
                delivery = message.delivery,
                error = %refused,
                "record refused; retrying"
            );
            let pause = self.options.delivery.backoff_after(message.delivery);
            if unless_stopped(&mut self.stop, tokio::time::sleep(pause))
                .await
                .is_none()
            {
                return Err(Halt::Stopped);
            }
            message.delivery += 1;
            let retry = [Delivery {
                offset: delivery.offset,
                message: Ok(message.clone()),
            }];
            match self.apply_run(&retry).await? {
                Ok(()) => return Ok(()),
                Err((_, again)) => refused = again,
            }
        }
        self.dead_letter(delivery.offset, &message, &refused.error())
            .await
    }

    async fn dead_letter(
        &mut self,
        offset: i64,
        message: &InboundMessage,
        error: &str,
    ) -> Result<(), Halt> {
        let store = self.inbox.store();
        let mut uow = store.begin().await?;
        let written = async {
            store
                .dead_letter_in(uow.as_mut(), C::NAME, message, error, message.delivery)
                .await?;
            store
                .advance_partition_in(uow.as_mut(), &self.key, &self.advance(offset + 1))
                .await
        }
        .await;
        if let Err(e) = written {
            let _ = uow.rollback_boxed().await;
            return Err(Halt::Failed(e));
        }
        uow.commit_boxed().await?;
        self.next = offset + 1;
        dtx::telemetry::record_inbox_dead_letter(C::NAME);
        tracing::warn!(
            consumer = C::NAME,
            message_id = %message.message_id,
            event_type = %message.event_type,
            offset,
            attempts = message.delivery,
            error,
            "record dead-lettered"
        );
        Ok(())
    }
}

/// The handler error of a record that is not a dtx message.
fn not_a_message(problem: &MessageProblem, message: &InboundMessage) -> HandlerError {
    HandlerError::Decode(dtx::Error::InvalidMessage {
        message_id: message.message_id,
        event_type: message.event_type.clone(),
        source_name: message.source.clone(),
        reason: problem.to_string(),
    })
}

fn outcome_name(handled: Handled) -> &'static str {
    match handled {
        Handled::Applied => "applied",
        Handled::Ignored => "ignored",
        Handled::Duplicate => "duplicate",
    }
}
