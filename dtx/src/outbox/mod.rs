//! The transactional outbox: messages written in the same transaction as the events they carry,
//! published at least once, in order per stream key, by a relay.
//!
//! This module holds what every backend shares: the message types, the [`Publisher`] trait a
//! broker client implements, the relay settings ([`RelayOptions`]), the embedded
//! [`MemoryOutbox`] (fed atomically by [`crate::MemoryEventStore::with_outbox`]) and the
//! [`MemoryPublisher`]. The PostgreSQL outbox and its relay live in `dtx-postgres`
//! (`PgOutbox`, `OutboxRelay`), with a NATS `JetStream` publisher behind its `nats` feature and a
//! Kafka publisher behind its `kafka` feature.
//!
//! Delivery is at least once: a message published just before its relay dies is published again.
//! Every message carries its id in the [`headers::EVENT_ID`] header for consumers to dedupe on.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dtx::outbox::{MemoryOutbox, MemoryPublisher, RelayOptions};
//! use dtx::{EventStore, ExpectedVersion, MemoryEventStore, NewEvent, StreamId};
//!
//! let outbox = MemoryOutbox::new();
//! let store = MemoryEventStore::new().with_outbox(outbox.clone());
//! let stream = StreamId::new("Order-1")?;
//! let event = NewEvent::from_json("OrderPlaced", &serde_json::json!({"total": 5})).unwrap();
//! store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//!
//! let publisher = MemoryPublisher::new();
//! let published = outbox.publish_pending(&publisher, &RelayOptions::default()).await;
//! assert_eq!(published, 1);
//! assert_eq!(publisher.published()[0].key, "Order-1");
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

pub mod headers;
mod memory;
mod message;
mod options;
mod publisher;
mod uow;

pub use headers::InvalidHeader;
pub use memory::MemoryOutbox;
pub use message::{NewOutboxMessage, OutboxCounts, OutboxMessage, OutboxStatus, event_headers};
pub use options::{Payloads, RelayOptions};
pub use publisher::{
    MemoryPublisher, PublishError, Publisher, current_form, publish_as, publish_batch_as,
    publish_span, publish_traced,
};
pub use uow::Outbox;
