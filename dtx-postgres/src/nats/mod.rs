//! NATS `JetStream` (feature `nats`): the outbox publisher, and the inbox consumer
//! [`NatsConsumer`] (see [its module](consumer)).
//!
//! Each message goes to the subject `{prefix}.{key}`, the key escaped into one subject token
//! ([`NatsPublisher::subject`]): `A-Z a-z 0-9 -` stay as they are, `_` becomes `__`, and every
//! other byte of the key's UTF-8 becomes `_` and two upper-case hex digits (`.` is `_2E`, a space
//! `_20`, `é` `_C3_A9`); the empty key is the token `_`. The mapping is injective (decoding reads
//! `__` as `_` and `_XX` as a byte), so two keys never share a subject, and every token is a valid
//! NATS subject token (no `.`, `*`, `>` or whitespace). With `Nats-Msg-Id` set to the message id so that the
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

pub mod consumer;

pub use consumer::{ConsumeStats, JetStream, NatsConsumer, NatsConsumerConfig, NatsConsumerError};

use async_nats::jetstream::context::PublishErrorKind;
use async_trait::async_trait;
use dtx::outbox::{OutboxMessage, PublishError, Publisher};

mod connect;
pub use connect::{NatsConnectError, NatsConnection};

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

    /// The subject a message of `key` goes to: `{prefix}.{token}`, the key escaped into one
    /// token as the [module docs](self) say. Distinct keys have distinct subjects.
    ///
    /// ```
    /// # async fn demo(client: dtx_postgres::async_nats::Client) {
    /// use dtx_postgres::nats::NatsPublisher;
    ///
    /// let publisher = NatsPublisher::new(client, "events");
    /// assert_eq!(publisher.subject("Order-1"), "events.Order-1");
    /// assert_eq!(publisher.subject("Order_1"), "events.Order__1");
    /// assert_eq!(publisher.subject("Order.1"), "events.Order_2E1");
    /// assert_eq!(publisher.subject("Order 1"), "events.Order_201");
    /// # }
    /// ```
    pub fn subject(&self, key: &str) -> String {
        format!("{}.{}", self.prefix, subject_token(key))
    }
}

/// `key` as one NATS subject token, injectively: `A-Z a-z 0-9 -` as they are, `_` as `__`, any
/// other byte as `_` and two upper-case hex digits; the empty key as `_` (no other key gives a
/// lone `_`, since an escape is always `__` or `_XX`).
fn subject_token(key: &str) -> String {
    use std::fmt::Write as _;
    if key.is_empty() {
        return "_".to_owned();
    }
    let mut token = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' => token.push(char::from(byte)),
            b'_' => token.push_str("__"),
            _ => {
                let _ = write!(token, "_{byte:02X}");
            }
        }
    }
    token
}

impl NatsPublisher {
    /// `message` as `JetStream` takes it: its headers, its payload, `Nats-Msg-Id` set to its id,
    /// and, when `after` is given, `Nats-Expected-Last-Msg-Id` set to that message id (the
    /// stream refuses the message unless its last message is that one).
    fn prepare(
        message: &OutboxMessage,
        after: Option<uuid::Uuid>,
    ) -> Result<async_nats::jetstream::message::PublishMessage, PublishError> {
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
        Ok(match after {
            Some(previous) => publish.expected_last_message_id(previous.to_string()),
            None => publish,
        })
    }

    /// One round of [`Publisher::publish_batch`]: each chain (a key's messages still to publish,
    /// in order) is sent whole, every message after a chain's first expecting the one before it
    /// as the stream's last message; then every ack is awaited together. Returns, per chain, the
    /// outcome of its messages up to the first that was not published.
    async fn round(
        &self,
        messages: &[OutboxMessage],
        chains: &[Vec<usize>],
    ) -> Vec<Vec<(usize, Outcome)>> {
        use std::future::IntoFuture as _;
        use tracing::Instrument as _;
        let mut sent: Vec<Vec<(usize, Result<usize, PublishError>)>> =
            Vec::with_capacity(chains.len());
        let mut acks = Vec::new();
        for chain in chains {
            let mut entries = Vec::with_capacity(chain.len());
            let mut after = None;
            for &i in chain {
                let message = &messages[i];
                let span = dtx::outbox::publish_span(message);
                let sending = async {
                    let publish = Self::prepare(message, after)?;
                    let ack = self
                        .jetstream
                        .send_publish(self.subject(&message.key), publish)
                        .await
                        .map_err(PublishError::from_source)?;
                    Ok::<_, PublishError>(ack)
                };
                match sending.instrument(span.clone()).await {
                    Ok(ack) => {
                        entries.push((i, Ok(acks.len())));
                        acks.push(ack.into_future().instrument(span));
                    }
                    Err(error) => {
                        // Nothing after it is sent: the chain ends with this failure.
                        entries.push((i, Err(error)));
                        break;
                    }
                }
                after = Some(message.message_id);
            }
            sent.push(entries);
        }
        let mut answers: Vec<Option<_>> = futures_util::future::join_all(acks)
            .await
            .into_iter()
            .map(Some)
            .collect();
        sent.into_iter()
            .map(|entries| {
                let mut outcomes = Vec::with_capacity(entries.len());
                for (position, (i, sent)) in entries.into_iter().enumerate() {
                    let outcome = match sent.map(|ack| answers[ack].take()) {
                        Ok(Some(Ok(_))) => Outcome::Published,
                        // Refused by the chain's check alone: the message before it is not the
                        // stream's last (another publisher's message came between, or it was a
                        // duplicate and stored earlier). Not a failure of this message.
                        Ok(Some(Err(error)))
                            if position > 0
                                && error.kind() == PublishErrorKind::WrongLastMessageId =>
                        {
                            Outcome::Rechain
                        }
                        Ok(Some(Err(error))) => Outcome::Failed(PublishError::from_source(error)),
                        Ok(None) => Outcome::Failed(PublishError::new(format!(
                            "outbox message {} (id {}) of key `{}`: no acknowledgement",
                            messages[i].message_id, messages[i].id, messages[i].key
                        ))),
                        Err(error) => Outcome::Failed(error),
                    };
                    let stop = !matches!(outcome, Outcome::Published);
                    outcomes.push((i, outcome));
                    if stop {
                        break;
                    }
                }
                outcomes
            })
            .collect()
    }
}

/// What a round of [`NatsPublisher::publish_batch`] made of a message.
enum Outcome {
    /// `JetStream` has it.
    Published,
    /// Refused only because the message before it in its chain was not the stream's last
    /// message: it starts a chain of its own in the next round.
    Rechain,
    /// It failed; its key stops here.
    Failed(PublishError),
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        let publish = Self::prepare(message, None)?;
        let ack = self
            .jetstream
            .send_publish(self.subject(&message.key), publish)
            .await
            .map_err(PublishError::from_source)?;
        ack.await.map_err(PublishError::from_source)?;
        Ok(())
    }

    /// Publishes the batch pipelined: every message is sent before any ack is awaited, and the
    /// acks are awaited together. Each key's messages are sent one after the other, and each
    /// after the key's first carries `Nats-Expected-Last-Msg-Id`, the id of the message before
    /// it: `JetStream` stores it only if that message is the stream's last. So a message is
    /// never stored when the one before it of its key was not (lost with a connection, refused
    /// by the server), and order per key holds without waiting for each ack. When another
    /// message came between (another publisher on the stream, or a message stored earlier and
    /// now a duplicate), the refused message is sent again as the first of a new chain in the
    /// next round: at worst, one message per key per round, as without pipelining.
    async fn publish_batch(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut outcomes: Vec<Option<Result<(), PublishError>>> =
            messages.iter().map(|_| None).collect();
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if let Some(k) = keys.iter().position(|key| *key == message.key) {
                chains[k].push(i);
            } else {
                keys.push(&message.key);
                chains.push(vec![i]);
            }
        }
        while !chains.is_empty() {
            let rounds = self.round(messages, &chains).await;
            let mut next = Vec::new();
            for (chain, done) in chains.iter().zip(rounds) {
                for (position, (i, outcome)) in done.into_iter().enumerate() {
                    match outcome {
                        Outcome::Published => outcomes[i] = Some(Ok(())),
                        Outcome::Failed(error) => outcomes[i] = Some(Err(error)),
                        Outcome::Rechain => next.push(chain[position..].to_vec()),
                    }
                }
            }
            chains = next;
        }
        messages
            .iter()
            .zip(outcomes)
            .map(|(message, outcome)| {
                outcome.unwrap_or_else(|| {
                    Err(PublishError::new(format!(
                        "outbox message {} (id {}) of key `{}` was not sent: an earlier message of its key failed",
                        message.message_id, message.id, message.key
                    )))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::subject_token;

    /// The inverse of `subject_token`, to prove it injective: `None` for a token it never makes.
    fn decode(token: &str) -> Option<Vec<u8>> {
        if token == "_" {
            return Some(Vec::new());
        }
        let mut bytes = token.bytes();
        let mut key = Vec::new();
        while let Some(byte) = bytes.next() {
            if byte != b'_' {
                key.push(byte);
                continue;
            }
            match bytes.next()? {
                b'_' => key.push(b'_'),
                high => {
                    let hex = [high, bytes.next()?];
                    key.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                }
            }
        }
        Some(key)
    }

    /// Whether `token` is one valid NATS subject token: not empty, no `.`, `*`, `>` or
    /// whitespace, printable ASCII.
    fn valid_token(token: &str) -> bool {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'))
    }

    #[test]
    fn keys_that_the_old_mapping_merged_get_distinct_subjects() {
        let keys = [
            "Order 1", "Order.1", "Order_1", "Order-1", "Order*1", "Order>1", "",
        ];
        let tokens: Vec<String> = keys.iter().map(|k| subject_token(k)).collect();
        assert_eq!(
            tokens,
            [
                "Order_201",
                "Order_2E1",
                "Order__1",
                "Order-1",
                "Order_2A1",
                "Order_3E1",
                "_"
            ]
        );
        for (key, token) in keys.iter().zip(&tokens) {
            assert!(valid_token(token), "{token}");
            assert_eq!(decode(token).as_deref(), Some(key.as_bytes()));
        }
    }

    /// Over many random keys (a fixed seed, so a failure reproduces), drawn from an alphabet
    /// dense in the characters an escape scheme can confuse: distinct keys give distinct tokens,
    /// every token is valid, and decoding it gives the key back.
    #[test]
    fn distinct_random_keys_give_distinct_valid_tokens() {
        const ALPHABET: &[char] = &[
            '_',
            '_',
            '-',
            '.',
            ' ',
            '*',
            '>',
            'a',
            'Z',
            '0',
            '2',
            'E',
            'F',
            'é',
            '\u{0}',
            '\t',
            '\u{1F600}',
            '$',
        ];
        let mut state: u64 = 0x005e_ed0f_d7c5;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut seen = std::collections::HashMap::new();
        let mut keys = 0;
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 9).unwrap_or(0);
            let key: String = (0..len)
                .map(|_| ALPHABET[usize::try_from(next()).unwrap_or(0) % ALPHABET.len()])
                .collect();
            let token = subject_token(&key);
            assert!(valid_token(&token), "{key:?} -> {token:?}");
            assert_eq!(decode(&token).as_deref(), Some(key.as_bytes()), "{token}");
            if let Some(other) = seen.insert(token.clone(), key.clone()) {
                assert_eq!(other, key, "two keys share the subject token {token}");
            } else {
                keys += 1;
            }
        }
        assert!(keys > 10_000, "only {keys} distinct keys were tried");
    }
}
