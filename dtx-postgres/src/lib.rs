//! # dtx-postgres
//!
//! The PostgreSQL runtime of [`dtx`], on `sqlx`: [`PgEventStore`] (events, global feed,
//! snapshots) and the embedded [`migrate`] for the tables it uses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dtx::{EventStore, Repository};
//! use dtx_postgres::{PgEventStore, migrate};
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
//! migrate(&pool).await?;
//! let store = PgEventStore::new(pool);
//! # Ok(())
//! # }
//! ```
//!
//! The SQL of [`migrate`] is the crate's `migrations/` folder, embedded at compile time; `sqlx
//! migrate run` applies the same files (both record them in `_sqlx_migrations`, so either may
//! run first). The broker clients of the outbox publishers are re-exported, so their versions
//! always match: `dtx_postgres::async_nats` (feature `nats`) and `dtx_postgres::rskafka` (feature
//! `kafka`). [`nats::NatsConnection`] and [`kafka::KafkaConnection`] connect them to a real
//! cluster: TLS ([`tls::Tls`]) and credentials.

mod deferred;
pub mod health;
mod idempotency;
mod inbox;
#[cfg(feature = "kafka")]
pub mod kafka;
mod migrate;
#[cfg(feature = "nats")]
pub mod nats;
pub mod outbox;
mod personal;
mod projection;
mod restore;
pub mod retention;
mod saga;
mod sql;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(any(feature = "nats", feature = "kafka"))]
pub mod tls;
mod uow;

pub use deferred::PgDeferredUnitOfWork;
pub use idempotency::PgIdempotencyStore;
pub use inbox::PgInbox;
pub use migrate::{MIGRATOR, MigrationState, migrate, migrate_in_schema, migration_status};
pub use outbox::{OutboxRelay, PgOutbox, RelayPass};
pub use personal::PgSubjectKeys;
pub use projection::PgCheckpointStore;
pub use restore::{
    FeedRepair, check_feed, check_feed_in_schema, repair_restored_feed,
    repair_restored_feed_in_schema,
};
pub use saga::PgSagaStore;
pub use store::{Combining, CombiningStats, PgEventStore};
pub use uow::PgUnitOfWork;

/// The `sqlx` version dtx-postgres is built on, for pools and transactions.
pub use sqlx;

/// The NATS client the [`nats::NatsPublisher`] is built on (feature `nats`): connect with it, so
/// your `async_nats` version always matches dtx-postgres's.
#[cfg(feature = "nats")]
pub use async_nats;

/// The Kafka client the [`kafka::KafkaPublisher`] is built on (feature `kafka`): build its
/// client with this re-export, so your `rskafka` version always matches dtx-postgres's.
#[cfg(feature = "kafka")]
pub use rskafka;

/// Validates a schema name and returns it quoted for SQL (`"name"`).
///
/// Names are 1 to 63 bytes (longer ones would be silently truncated by PostgreSQL) of ASCII
/// letters, digits and `_`, not starting with a digit.
///
/// ```
/// assert_eq!(dtx_postgres::quote_identifier("tenant_7").unwrap(), "\"tenant_7\"");
/// assert!(dtx_postgres::quote_identifier("x\"; DROP TABLE t; --").is_err());
/// ```
pub fn quote_identifier(name: &str) -> dtx::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(dtx::Error::Invalid {
            what: "schema name",
            value: name.chars().take(80).collect(),
            reason: "use 1 to 63 ASCII letters, digits or `_`, not starting with a digit",
        })
    }
}
