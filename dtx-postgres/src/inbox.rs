//! The inbox on PostgreSQL (`inbox_messages`, `inbox_dead_letters`, `consumer_offsets`).

use crate::PgUnitOfWork;
use crate::sql::{Schema, get, millis, to_i32, to_u32};
use async_trait::async_trait;
use dtx::inbox::{
    DeadLetter, DeadLetterStatus, InboundMessage, InboxStore, OffsetAdvance, PartitionKey,
    PartitionOffset,
};
use dtx::{Error, Result, UnitOfWork};
use sqlx::postgres::{PgPool, PgRow};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The inbox in PostgreSQL: a consumer's inbox record, its handler's writes and (for Kafka)
/// its partition offset commit in one transaction ([`PgUnitOfWork`]), so each message's effect
/// on the database happens exactly once.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> dtx::Result<()> {
/// use dtx::inbox::{Inbox, InboxStore};
/// use dtx_postgres::PgInbox;
///
/// let inbox = Inbox::new(PgInbox::new(pool));
/// for letter in inbox.store().dead_letters(Some("payments")).await? {
///     println!("{} {}: {}", letter.message.message_id, letter.message.event_type, letter.error);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgInbox {
    pool: PgPool,
    sql: Arc<Sql>,
}

#[derive(Debug)]
struct Sql {
    record: String,
    record_all: String,
    contains: String,
    dead_letter: String,
    dead_letters: String,
    requeue: String,
    discard: String,
    requeued: String,
    resolve: String,
    fail_requeued: String,
    purge: String,
    acquire: String,
    advance: String,
    release: String,
    partitions: String,
}

/// The columns of a dead letter, as [`dead_letter`] reads them.
const DEAD_COLUMNS: &str = "consumer, message_id, message_type, message_key, schema_version, \
     correlation_id, causation_id, traceparent, headers::text AS headers, payload, source, \
     delivery, error, attempts, status, dead_at";

const OFFSET_COLUMNS: &str =
    "consumer, topic, partition, next_offset, owner, lease_until, updated_at";

impl Sql {
    fn new(schema: &Schema) -> Self {
        let inbox = schema.table("inbox_messages");
        let dead = schema.table("inbox_dead_letters");
        let offsets = schema.table("consumer_offsets");
        Self {
            record: format!(
                "INSERT INTO {inbox} (consumer, message_id, message_type) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING"
            ),
            // Duplicates within the batch are inserted once (the first: `DO NOTHING` for the
            // others); the ids returned are those that were new.
            record_all: format!(
                "INSERT INTO {inbox} (consumer, message_id, message_type)
                 SELECT $1, m.id, m.type FROM UNNEST($2::uuid[], $3::text[]) AS m(id, type)
                 ON CONFLICT DO NOTHING
                 RETURNING message_id"
            ),
            contains: format!(
                "SELECT EXISTS (SELECT 1 FROM {inbox} WHERE consumer = $1 AND message_id = $2)"
            ),
            // Recorded as received too, so a redelivery is a duplicate.
            dead_letter: format!(
                "WITH received AS (
                     INSERT INTO {inbox} (consumer, message_id, message_type) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING)
                 INSERT INTO {dead} (consumer, message_id, message_type, message_key, schema_version,
                                     correlation_id, causation_id, traceparent, headers, payload,
                                     source, delivery, error, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14)
                 ON CONFLICT (consumer, message_id) DO UPDATE
                    SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, status = 'dead',
                        delivery = EXCLUDED.delivery, dead_at = now()"
            ),
            dead_letters: format!(
                "SELECT {DEAD_COLUMNS} FROM {dead} WHERE $1::text IS NULL OR consumer = $1
                 ORDER BY dead_at, consumer, message_id"
            ),
            requeue: format!(
                "UPDATE {dead} SET status = 'requeued' WHERE consumer = $1 AND message_id = $2"
            ),
            discard: format!("DELETE FROM {dead} WHERE consumer = $1 AND message_id = $2"),
            requeued: format!(
                "SELECT {DEAD_COLUMNS} FROM {dead} WHERE consumer = $1 AND status = 'requeued'
                 ORDER BY dead_at LIMIT $2"
            ),
            // Locks the row until the handler's transaction ends: a second instance waits, then
            // finds it gone.
            resolve: format!(
                "DELETE FROM {dead} WHERE consumer = $1 AND message_id = $2 AND status = 'requeued'"
            ),
            fail_requeued: format!(
                "UPDATE {dead} SET status = 'dead', error = $3, attempts = attempts + 1, dead_at = now()
                  WHERE consumer = $1 AND message_id = $2"
            ),
            // Small batches by the received_at index: never a long lock on the hot table.
            purge: format!(
                "DELETE FROM {inbox} WHERE ctid = ANY (ARRAY(
                     SELECT ctid FROM {inbox}
                      WHERE received_at < now() - $1 * interval '1 millisecond'
                      ORDER BY received_at LIMIT $2
                      FOR UPDATE SKIP LOCKED))"
            ),
            acquire: format!(
                "INSERT INTO {offsets} AS o (consumer, topic, partition, next_offset, owner, lease_until)
                 VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond')
                 ON CONFLICT (consumer, topic, partition) DO UPDATE
                    SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
                  WHERE o.owner IS NULL OR o.owner = EXCLUDED.owner OR o.lease_until <= now()
                 RETURNING next_offset"
            ),
            advance: format!(
                "UPDATE {offsets}
                    SET next_offset = $6, lease_until = now() + $7 * interval '1 millisecond',
                        updated_at = now()
                  WHERE consumer = $1 AND topic = $2 AND partition = $3 AND owner = $4
                    AND next_offset = $5"
            ),
            release: format!(
                "UPDATE {offsets} SET owner = NULL, lease_until = NULL, updated_at = now()
                  WHERE consumer = $1 AND topic = $2 AND partition = $3 AND owner = $4"
            ),
            partitions: format!(
                "SELECT {OFFSET_COLUMNS} FROM {offsets} WHERE $1::text IS NULL OR consumer = $1
                 ORDER BY consumer, topic, partition"
            ),
        }
    }
}

impl PgInbox {
    /// The inbox in the tables the pool's `search_path` finds.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sql: Arc::new(Sql::new(&Schema::default())),
        }
    }

    /// The inbox in the tables of `schema` (validated and quoted).
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.sql = Arc::new(Sql::new(&Schema::named(schema)?));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn dead_letter(row: &PgRow) -> Result<DeadLetter> {
    let headers: String = get(row, "headers")?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&headers).map_err(Error::storage)?;
    let status: String = get(row, "status")?;
    let consumer: String = get(row, "consumer")?;
    Ok(DeadLetter {
        message: InboundMessage {
            message_id: get(row, "message_id")?,
            event_type: get(row, "message_type")?,
            schema_version: get::<Option<i32>>(row, "schema_version")?.map(to_u32),
            key: get(row, "message_key")?,
            correlation_id: get(row, "correlation_id")?,
            causation_id: get(row, "causation_id")?,
            traceparent: get(row, "traceparent")?,
            headers,
            payload: get(row, "payload")?,
            source: get(row, "source")?,
            delivery: to_u32(get(row, "delivery")?),
        },
        error: get(row, "error")?,
        attempts: to_u32(get(row, "attempts")?),
        status: DeadLetterStatus::parse(&status).ok_or_else(|| Error::Inbox {
            consumer: consumer.clone(),
            reason: format!("dead letter with unknown status {status:?}"),
        })?,
        dead_at: get(row, "dead_at")?,
        consumer,
    })
}

fn offset(row: &PgRow) -> Result<PartitionOffset> {
    Ok(PartitionOffset {
        key: PartitionKey::new(
            get::<String>(row, "consumer")?,
            get::<String>(row, "topic")?,
            get::<i32>(row, "partition")?,
        ),
        next_offset: get(row, "next_offset")?,
        owner: get(row, "owner")?,
        lease_until: get(row, "lease_until")?,
        updated_at: get(row, "updated_at")?,
    })
}

#[async_trait]
impl InboxStore for PgInbox {
    async fn begin(&self) -> Result<Box<dyn UnitOfWork>> {
        Ok(Box::new(PgUnitOfWork::begin(&self.pool).await?))
    }

    async fn record_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
    ) -> Result<bool> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        let inserted = sqlx::query(&self.sql.record)
            .bind(consumer)
            .bind(message.message_id)
            .bind(message.event_type.replace('\0', "\u{FFFD}"))
            .execute(conn)
            .await
            .map_err(Error::storage)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn record_all_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        messages: &[&InboundMessage],
    ) -> Result<Vec<bool>> {
        let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
        let types: Vec<String> = messages
            .iter()
            .map(|m| m.event_type.replace('\0', "\u{FFFD}"))
            .collect();
        let conn = PgUnitOfWork::connection_of(uow).await?;
        let inserted: Vec<Uuid> = sqlx::query_scalar(&self.sql.record_all)
            .bind(consumer)
            .bind(&ids)
            .bind(&types)
            .fetch_all(conn)
            .await
            .map_err(Error::storage)?;
        let mut new: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        // The first occurrence of a new id is the new one.
        Ok(ids.iter().map(|id| new.remove(id)).collect())
    }

    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        sqlx::query_scalar(&self.sql.contains)
            .bind(consumer)
            .bind(message_id)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)
    }

    async fn dead_letter_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message: &InboundMessage,
        error: &str,
        attempts: u32,
    ) -> Result<()> {
        let headers = serde_json::to_string(&message.headers).map_err(Error::storage)?;
        let conn = PgUnitOfWork::connection_of(uow).await?;
        // Text columns cannot hold NUL: what a broker delivered may.
        let text = |s: &str| s.replace('\0', "\u{FFFD}");
        sqlx::query(&self.sql.dead_letter)
            .bind(consumer)
            .bind(message.message_id)
            .bind(text(&message.event_type))
            .bind(message.key.as_deref().map(text))
            .bind(message.schema_version.map(to_i32))
            .bind(message.correlation_id)
            .bind(message.causation_id)
            .bind(message.traceparent.as_deref().map(text))
            .bind(text(&headers))
            .bind(&message.payload)
            .bind(message.source.as_deref().map(text))
            .bind(to_i32(message.delivery))
            .bind(text(error))
            .bind(to_i32(attempts))
            .execute(conn)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    async fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>> {
        sqlx::query(&self.sql.dead_letters)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?
            .iter()
            .map(dead_letter)
            .collect()
    }

    async fn requeue(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        let updated = sqlx::query(&self.sql.requeue)
            .bind(consumer)
            .bind(message_id)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(updated.rows_affected() == 1)
    }

    async fn discard(&self, consumer: &str, message_id: Uuid) -> Result<bool> {
        let deleted = sqlx::query(&self.sql.discard)
            .bind(consumer)
            .bind(message_id)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn requeued(&self, consumer: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        sqlx::query(&self.sql.requeued)
            .bind(consumer)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?
            .iter()
            .map(dead_letter)
            .collect()
    }

    async fn resolve_in(
        &self,
        uow: &mut dyn UnitOfWork,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<bool> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        let deleted = sqlx::query(&self.sql.resolve)
            .bind(consumer)
            .bind(message_id)
            .execute(conn)
            .await
            .map_err(Error::storage)?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn fail_requeued(&self, consumer: &str, message_id: Uuid, error: &str) -> Result<()> {
        sqlx::query(&self.sql.fail_requeued)
            .bind(consumer)
            .bind(message_id)
            .bind(error.replace('\0', "\u{FFFD}"))
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    async fn purge(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let deleted = sqlx::query(&self.sql.purge)
            .bind(millis(older_than))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(deleted.rows_affected())
    }

    async fn acquire_partition(
        &self,
        key: &PartitionKey,
        owner: Uuid,
        lease: Duration,
        initial: i64,
    ) -> Result<Option<i64>> {
        sqlx::query_scalar(&self.sql.acquire)
            .bind(&key.consumer)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(initial)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::storage)
    }

    async fn advance_partition_in(
        &self,
        uow: &mut dyn UnitOfWork,
        key: &PartitionKey,
        step: &OffsetAdvance,
    ) -> Result<()> {
        let conn = PgUnitOfWork::connection_of(uow).await?;
        let moved = sqlx::query(&self.sql.advance)
            .bind(&key.consumer)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(step.owner)
            .bind(step.from)
            .bind(step.to)
            .bind(millis(step.lease))
            .execute(conn)
            .await
            .map_err(Error::storage)?;
        if moved.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::Inbox {
                consumer: key.consumer.clone(),
                reason: format!(
                    "partition {}/{} is no longer held by instance {} at offset {} \
                     (lease lost, or moved meanwhile)",
                    key.topic, key.partition, step.owner, step.from
                ),
            })
        }
    }

    async fn release_partition(&self, key: &PartitionKey, owner: Uuid) -> Result<()> {
        sqlx::query(&self.sql.release)
            .bind(&key.consumer)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(Error::storage)?;
        Ok(())
    }

    async fn partitions(&self, consumer: Option<&str>) -> Result<Vec<PartitionOffset>> {
        sqlx::query(&self.sql.partitions)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::storage)?
            .iter()
            .map(offset)
            .collect()
    }
}
