//! The Kafka outbox publisher and inbox consumer (feature `kafka`), on the pure-Rust [`rskafka`]
//! client. The consumer, [`KafkaConsumer`], is described in its own documentation; what follows
//! is the publisher.
//!
//! Each message becomes one record of the publisher's topic: the record key is the message key
//! (the stream id for events), the value is the JSON payload, the record headers are the dtx
//! headers ([`dtx::outbox::headers`]: event id, type, stream, correlation, causation,
//! traceparent) and the timestamp is when the message was written.
//!
//! **Partitioning.** The partition is chosen from the key alone, with the hash of Kafka's default
//! partitioner (murmur2 of the key bytes, modulo the topic's partition count), so every message of
//! a stream goes to the same partition as a Java client would choose, and the relay's per-key order
//! is the order of the records in that partition. The partition count is read once, on the first
//! publish; adding partitions to the topic later moves keys, so restart the relay (and mind the
//! consumers) when doing that.
//!
//! **Delivery.** Records are produced with `acks = all` (`-1`): `publish` returns only once the
//! partition's leader and its in-sync replicas have the record. Every error (unknown topic,
//! broker unreachable, timeout, a broker error) is a [`PublishError`] that the relay retries; a
//! produce that takes longer than [`KafkaPublisher::with_timeout`] (default 10 s) is one too, so a
//! dead broker never hangs the relay. Delivery is at least once: consumers dedupe on the
//! [`dtx::outbox::headers::EVENT_ID`] header.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use dtx::outbox::RelayOptions;
//! use dtx_postgres::PgOutbox;
//! use dtx_postgres::kafka::KafkaPublisher;
//!
//! let publisher = KafkaPublisher::connect(["127.0.0.1:9092"], "events").await?;
//! let relay = PgOutbox::new(pool).relay(publisher, RelayOptions::default());
//! relay.run(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod consumer;

pub use consumer::{KafkaConsumer, KafkaConsumerError, KafkaConsumerOptions, StartOffset};

use async_trait::async_trait;
use dtx::outbox::{OutboxMessage, PublishError, Publisher};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

mod connect;
pub use connect::{KafkaConnectError, KafkaConnection, SaslMechanism};

/// The default bound on one produce (and on connecting, in [`KafkaPublisher::connect`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes outbox messages to one Kafka topic, partitioned by message key.
///
/// The topic must exist (create it with the partition count you want); cloning is cheap and
/// clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use dtx_postgres::kafka::KafkaPublisher;
/// use std::time::Duration;
///
/// let publisher = KafkaPublisher::connect(["kafka-1:9092", "kafka-2:9092"], "orders.events")
///     .await?
///     .with_timeout(Duration::from_secs(5));
/// assert_eq!(publisher.topic(), "orders.events");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    client: Client,
    topic: String,
    /// One client per partition of the topic, in partition order; filled on the first publish.
    partitions: OnceCell<Vec<PartitionClient>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.inner.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Connects to the cluster through `brokers` (`host:port` bootstrap addresses, plaintext)
    /// and publishes to `topic`.
    ///
    /// The client stops retrying a broker request after the publisher's timeout (default 10 s),
    /// and connecting fails with a [`PublishError`] naming the brokers when none answers in that
    /// time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dtx::outbox::PublishError> {
    /// let publisher = dtx_postgres::kafka::KafkaPublisher::connect(["127.0.0.1:9092"], "events").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// No broker reachable (or the metadata request failing) within the timeout.
    pub async fn connect<I, S>(brokers: I, topic: impl Into<String>) -> Result<Self, PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with_timeout(brokers, topic, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) bounded by `timeout` instead of 10 s: connecting, each broker
    /// request's retries and each `publish` (see [`with_timeout`](Self::with_timeout)).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dtx::outbox::PublishError> {
    /// use dtx_postgres::kafka::KafkaPublisher;
    /// use std::time::Duration;
    ///
    /// let publisher =
    ///     KafkaPublisher::connect_with_timeout(["127.0.0.1:9092"], "events", Duration::from_secs(2))
    ///         .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// No broker reachable (or the metadata request failing) within `timeout`.
    pub async fn connect_with_timeout<I, S>(
        brokers: I,
        topic: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, PublishError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let brokers: Vec<String> = brokers.into_iter().map(Into::into).collect();
        let backoff = rskafka::BackoffConfig {
            deadline: Some(timeout),
            ..rskafka::BackoffConfig::default()
        };
        let build = ClientBuilder::new(brokers.clone())
            .client_id("dtx-outbox")
            .backoff_config(backoff)
            .build();
        let client = match tokio::time::timeout(timeout, build).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(PublishError::new(format!(
                    "connecting to Kafka at {}: {e}",
                    brokers.join(",")
                )));
            }
            Err(_) => {
                return Err(PublishError::new(format!(
                    "connecting to Kafka at {}: no answer within {timeout:?}",
                    brokers.join(",")
                )));
            }
        };
        Ok(Self::new(client, topic).with_timeout(timeout))
    }

    /// A publisher on a connected [`rskafka`] client, to `topic`.
    ///
    /// Give the client a [`rskafka::BackoffConfig`] with a `deadline`, or its retries of an
    /// unreachable broker only end with this publisher's timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// // The client through dtx-postgres's re-export: its version always fits `KafkaPublisher`.
    /// use dtx_postgres::rskafka::client::ClientBuilder;
    ///
    /// let client = ClientBuilder::new(vec!["127.0.0.1:9092".to_owned()])
    ///     .build()
    ///     .await?;
    /// let publisher = dtx_postgres::kafka::KafkaPublisher::new(client, "events");
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(client: Client, topic: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                topic: topic.into(),
                partitions: OnceCell::new(),
            }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds one `publish` (finding the topic's partitions included): past it the publish is a
    /// retryable [`PublishError`] (default 10 s).
    ///
    /// ```no_run
    /// # async fn demo(publisher: dtx_postgres::kafka::KafkaPublisher) {
    /// let publisher = publisher.with_timeout(std::time::Duration::from_secs(3));
    /// # }
    /// ```
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The topic messages go to.
    ///
    /// ```no_run
    /// # fn demo(publisher: dtx_postgres::kafka::KafkaPublisher) {
    /// println!("publishing to {}", publisher.topic());
    /// # }
    /// ```
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition (of `partitions`) a message of `key` goes to: Kafka's default partitioner,
    /// `murmur2(key) & 0x7fffffff % partitions`, so a stream's messages share a partition.
    ///
    /// ```
    /// use dtx_postgres::kafka::KafkaPublisher;
    ///
    /// let p = KafkaPublisher::partition_for("Order-1", 3);
    /// assert!(p < 3);
    /// assert_eq!(p, KafkaPublisher::partition_for("Order-1", 3));
    /// ```
    ///
    /// # Panics
    ///
    /// When `partitions` is 0.
    pub fn partition_for(key: &str, partitions: u32) -> u32 {
        assert!(partitions > 0, "a topic has at least one partition");
        (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
    }

    /// The topic's partition clients, looked up once.
    async fn partitions(&self) -> Result<&[PartitionClient], PublishError> {
        let inner = &*self.inner;
        inner
            .partitions
            .get_or_try_init(|| async {
                let topics = inner
                    .client
                    .list_topics()
                    .await
                    .map_err(PublishError::from_source)?;
                let topic = topics
                    .into_iter()
                    .find(|t| t.name == inner.topic)
                    .ok_or_else(|| {
                        PublishError::new(format!("Kafka topic {:?} does not exist", inner.topic))
                    })?;
                if topic.partitions.is_empty() {
                    return Err(PublishError::new(format!(
                        "Kafka topic {:?} has no partitions",
                        inner.topic
                    )));
                }
                let mut clients = Vec::with_capacity(topic.partitions.len());
                for partition in topic.partitions {
                    clients.push(
                        inner
                            .client
                            .partition_client(
                                inner.topic.clone(),
                                partition,
                                UnknownTopicHandling::Error,
                            )
                            .await
                            .map_err(PublishError::from_source)?,
                    );
                }
                Ok(clients)
            })
            .await
            .map(Vec::as_slice)
    }

    async fn produce(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let partitions = self.partitions().await?;
        let count = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
        let index = Self::partition_for(&message.key, count) as usize;
        let partition = partitions
            .get(index)
            .ok_or_else(|| PublishError::new("Kafka partition index out of range"))?;
        let record = Record {
            key: Some(message.key.as_bytes().to_vec()),
            value: Some(message.payload.as_bytes().to_vec()),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.as_bytes().to_vec()))
                .collect(),
            timestamp: message.created_at,
        };
        partition
            .produce(vec![record], Compression::NoCompression)
            .await
            .map_err(PublishError::from_source)?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        match tokio::time::timeout(self.timeout, self.produce(message)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(format!(
                "producing to Kafka topic {:?}: no acknowledgement within {:?}",
                self.inner.topic, self.timeout
            ))),
        }
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes the length as a Java int; longer keys than 2 GiB do not exist here.
    #[allow(clippy::cast_possible_truncation, reason = "Java int length")]
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        if rest.len() == 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    #[allow(clippy::cast_sign_loss, reason = "Java ints")]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected as u32, "{data:?}");
        }
    }

    #[test]
    fn a_key_always_maps_to_one_partition_in_range() {
        for n in 1..20 {
            let key = format!("Order-{n}");
            let p = KafkaPublisher::partition_for(&key, 7);
            assert!(p < 7);
            assert_eq!(p, KafkaPublisher::partition_for(&key, 7));
        }
    }
}
