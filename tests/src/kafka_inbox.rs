//! What the Kafka inbox tests and their worker process share: the consumer whose handler writes
//! each record's effect to `inbox_effects` through the unit of work, the tables, a producer of
//! dtx-shaped records, and the checks of the effects.

use dtx::inbox::{Consumer, InboundMessage};
use dtx::outbox::headers;
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx_postgres::kafka::KafkaPublisher;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

/// The tables of the tests: the effects, and the cure that lets a poison record through.
pub const TABLES: &str = "
    CREATE TABLE inbox_effects (
        n BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL);
    CREATE TABLE inbox_cure (id INT PRIMARY KEY);";

/// The payload of a test record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    /// Its key (`K-n`).
    pub key: String,
    /// Its position among its key's records, from 1.
    pub seq: i64,
    /// Fails until a row is in `inbox_cure`.
    #[serde(default)]
    pub poison: bool,
    /// Fails on its first delivery.
    #[serde(default)]
    pub flaky: bool,
}

/// Writes each record's effect to `inbox_effects` in the unit of work, after sleeping `slow`
/// (to widen the window a kill hits).
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// A pause per record, inside its unit of work.
    pub slow: Duration,
}

impl Consumer for Effects {
    const NAME: &'static str = "effects";

    fn event_types() -> &'static [&'static str] {
        &["Ticked"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let tick: Tick = serde_json::from_slice(&message.payload).map_err(|e| {
                HandlerError::Decode(dtx::Error::InvalidMessage {
                    message_id: message.message_id,
                    event_type: message.event_type.clone(),
                    source_name: message.source.clone(),
                    reason: e.to_string(),
                })
            })?;
            if !self.slow.is_zero() {
                tokio::time::sleep(self.slow).await;
            }
            let conn = dtx_postgres::PgUnitOfWork::connection_of(uow)
                .await
                .map_err(HandlerError::failed)?;
            if tick.flaky && message.delivery == 1 {
                return Err(HandlerError::failed("flaky: fails on its first delivery"));
            }
            if tick.poison {
                let cured: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox_cure)")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(HandlerError::failed)?;
                if !cured {
                    return Err(HandlerError::failed("poison: no cure yet"));
                }
            }
            sqlx::query("INSERT INTO inbox_effects (message_id, key, seq) VALUES ($1, $2, $3)")
                .bind(message.message_id)
                .bind(&tick.key)
                .bind(tick.seq)
                .execute(&mut *conn)
                .await
                .map_err(HandlerError::failed)?;
            Ok(())
        })
    }
}

/// The test brokers: `KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn brokers() -> Vec<String> {
    std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Connects to the test broker.
///
/// # Panics
/// When no broker answers: these tests need one (`scripts/test.sh` starts tansu).
pub async fn kafka() -> Client {
    let brokers = brokers();
    let backoff = rskafka::BackoffConfig {
        deadline: Some(Duration::from_secs(5)),
        ..rskafka::BackoffConfig::default()
    };
    let connect = ClientBuilder::new(brokers.clone())
        .backoff_config(backoff)
        .build();
    match tokio::time::timeout(Duration::from_secs(8), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("a Kafka broker at {brokers:?} is needed for this test: {e}"),
        Err(e) => panic!("a Kafka broker at {brokers:?} is needed for this test: {e}"),
    }
}

/// A fresh topic of `partitions` partitions.
///
/// # Panics
/// When it cannot be created.
pub async fn fresh_topic(client: &Client, partitions: i32) -> String {
    let topic = format!("dtx_inbox_{}", Uuid::now_v7().simple());
    client
        .controller_client()
        .unwrap_or_else(|e| panic!("controller: {e}"))
        .create_topic(topic.clone(), partitions, 1, 5_000)
        .await
        .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
    topic
}

/// A record to produce: its event id and payload.
#[derive(Debug, Clone)]
pub struct Produced {
    /// Its `dtx-event-id`.
    pub id: Uuid,
    /// Its payload.
    pub tick: Tick,
}

/// `keys` keys of `per_key` records each, interleaved; every `duplicate_every`-th record is
/// produced twice (the same event id), as a relay that crashed before its checkpoint would.
pub fn ticks(keys: usize, per_key: i64, duplicate_every: usize) -> Vec<Produced> {
    let mut all = Vec::new();
    for seq in 1..=per_key {
        for k in 0..keys {
            let produced = Produced {
                id: Uuid::now_v7(),
                tick: Tick {
                    key: format!("K-{k}"),
                    seq,
                    poison: false,
                    flaky: false,
                },
            };
            all.push(produced.clone());
            if duplicate_every > 0 && all.len() % duplicate_every == 0 {
                all.push(produced);
            }
        }
    }
    all
}

/// Produces `records` to `topic` (each to its key's partition, in order), in chunks.
///
/// # Panics
/// When producing fails.
pub async fn produce(client: &Client, topic: &str, partitions: i32, records: &[Produced]) {
    let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    for p in records {
        let partition = KafkaPublisher::partition_for(&p.tick.key, partitions.unsigned_abs());
        let headers = [
            (headers::EVENT_ID, p.id.to_string()),
            (headers::EVENT_TYPE, "Ticked".to_owned()),
            (headers::STREAM_ID, p.tick.key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
        by_partition.entry(partition).or_default().push(Record {
            key: Some(p.tick.key.clone().into_bytes()),
            value: Some(serde_json::to_vec(&p.tick).unwrap_or_default()),
            headers,
            timestamp: rskafka::chrono::Utc::now(),
        });
    }
    for (partition, records) in by_partition {
        let client = client
            .partition_client(
                topic.to_owned(),
                i32::try_from(partition).unwrap_or_default(),
                UnknownTopicHandling::Retry,
            )
            .await
            .unwrap_or_else(|e| panic!("partition client: {e}"));
        for chunk in records.chunks(500) {
            client
                .produce(chunk.to_vec(), Compression::NoCompression)
                .await
                .unwrap_or_else(|e| panic!("producing: {e}"));
        }
    }
}

/// The effects as applied, in order: `(message_id, key, seq)`.
///
/// # Panics
/// When the query fails.
pub async fn effects(pool: &sqlx::PgPool) -> Vec<(Uuid, String, i64)> {
    sqlx::query_as("SELECT message_id, key, seq FROM inbox_effects ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("reading the effects: {e}"))
}

/// How many effects are applied.
///
/// # Panics
/// When the query fails.
pub async fn effect_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inbox_effects")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("counting the effects: {e}"))
}

/// Checks that every distinct record of `produced` has exactly one effect and that each key's
/// effects came in order (keys in `unordered` excepted); returns how many records were
/// produced twice.
///
/// # Panics
/// When an effect is missing, doubled, foreign or out of order.
pub async fn check_exactly_once_in_order(
    pool: &sqlx::PgPool,
    produced: &[Produced],
    unordered: &[&str],
) -> usize {
    let expected: HashMap<Uuid, &Tick> = produced.iter().map(|p| (p.id, &p.tick)).collect();
    let effects = effects(pool).await;
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (id, key, seq) in &effects {
        *seen.entry(*id).or_default() += 1;
        let tick = expected
            .get(id)
            .unwrap_or_else(|| panic!("an effect of a record never produced: {id}"));
        assert_eq!((&tick.key, tick.seq), (key, *seq), "{id}");
        if !unordered.contains(&key.as_str()) {
            let before = last.insert(key.clone(), *seq).unwrap_or(0);
            assert!(
                *seq > before,
                "{key}: seq {seq} applied after {before} (order lost)"
            );
        }
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "effects applied twice: {doubled:?}");
    assert_eq!(
        effects.len(),
        expected.len(),
        "every distinct record's effect once"
    );
    produced.len() - expected.len()
}
