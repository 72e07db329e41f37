//! The NATS `JetStream` outbox publisher (feature `nats`).
//!
//! Each message goes to the subject `{prefix}.{key}` (the key with every character outside
//! `A-Z a-z 0-9 _ -` replaced by `_`), with `Nats-Msg-Id` set to the message id so that the
//! stream's duplicate window drops a message the relay publishes twice, and with the dtx headers
//! ([`dtx::outbox::headers`]). `publish` returns only once `JetStream` has acknowledged the message;
//! every error (no stream, timeout, connection lost) is a [`PublishError`] that the relay retries.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use dtx::outbox::RelayOptions;
//! use dtx_postgres::PgOutbox;
//! use dtx_postgres::nats::NatsPublisher;
//!
//! // The client through dtx-postgres's re-export: its version always fits `NatsPublisher`.
//! let client = dtx_postgres::async_nats::connect("127.0.0.1:4222").await?;
//! let publisher = NatsPublisher::new(client, "events");
//! let relay = PgOutbox::new(pool).relay(publisher, RelayOptions::default());
//! relay.run(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

use async_trait::async_trait;
use dtx::outbox::{OutboxMessage, PublishError, Publisher};

/// Publishes outbox messages to NATS `JetStream`; a stream must capture `{prefix}.>`.
#[derive(Clone)]
pub struct NatsPublisher {
    jetstream: async_nats::jetstream::Context,
    prefix: String,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// A publisher on a connected client, to subjects under `prefix`.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        Self {
            jetstream: async_nats::jetstream::new(client),
            prefix: prefix.into(),
        }
    }

    /// The subject a message of `key` goes to.
    pub fn subject(&self, key: &str) -> String {
        let key: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{key}", self.prefix)
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        // The fallible conversions: async-nats panics on an invalid name or value given as
        // text. `publish_traced` checks the headers first; this keeps a direct call safe too.
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &message.headers {
            let invalid = |problem: &dyn std::fmt::Display| {
                PublishError::permanent(format!(
                    "outbox message {} (id {}) of key `{}`: header `{}`: {problem}",
                    message.message_id,
                    message.id,
                    message.key,
                    name.escape_debug()
                ))
            };
            let parsed_name: async_nats::header::HeaderName =
                name.parse().map_err(|e| invalid(&e))?;
            let parsed_value: async_nats::HeaderValue = value.parse().map_err(|e| invalid(&e))?;
            headers.insert(parsed_name, parsed_value);
        }
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes::Bytes::copy_from_slice(message.payload.as_bytes()))
            .headers(headers)
            .message_id(message.message_id.to_string());
        let ack = self
            .jetstream
            .send_publish(self.subject(&message.key), publish)
            .await
            .map_err(PublishError::from_source)?;
        ack.await.map_err(PublishError::from_source)?;
        Ok(())
    }
}
