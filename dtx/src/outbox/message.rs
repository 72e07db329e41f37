//! The outbox's message types: a message to add, a stored message, its status and the counts.

use super::headers::{self, HeaderProblem, InvalidHeader};
use crate::store::{NewEvent, StreamId};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// Where a stored outbox message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxStatus {
    /// Waiting to be published (possibly after a failed attempt, see `next_attempt_at`).
    Pending,
    /// Published; removed by retention later.
    Published,
    /// Failed more than `max_retries` times; its key stops until it is requeued.
    Dead,
}

impl OutboxStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "published" => Some(Self::Published),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to add to the outbox.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    /// The ordering key: messages of one key are published in the order they were written.
    pub key: String,
    /// The message id brokers and consumers dedupe on.
    pub message_id: Uuid,
    /// The message type name.
    pub message_type: String,
    /// The JSON payload.
    pub payload: Box<RawValue>,
    /// Extra headers (the [`headers::EVENT_ID`], [`headers::EVENT_TYPE`] and
    /// [`headers::STREAM_ID`] headers are added from the fields above).
    pub headers: BTreeMap<String, String>,
}

impl NewOutboxMessage {
    /// A message with a fresh UUID v7 and any serialisable payload.
    pub fn new(
        key: impl Into<String>,
        message_type: impl Into<String>,
        payload: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            key: key.into(),
            message_id: Uuid::now_v7(),
            message_type: message_type.into(),
            payload: serde_json::value::to_raw_value(payload)?,
            headers: BTreeMap::new(),
        })
    }

    /// Adds a header, if it obeys [`headers::check`] (a token name, a value without line
    /// breaks or other control characters).
    ///
    /// ```
    /// use dtx::outbox::NewOutboxMessage;
    ///
    /// let message = NewOutboxMessage::new("Order-1", "Shipped", &1)?.with_header("x-tenant", "7")?;
    /// assert_eq!(message.headers["x-tenant"], "7");
    /// assert!(message.with_header("x-tenant", "7\r\nx-admin: 1").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`InvalidHeader`] naming the message, when the header breaks the rule.
    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, InvalidHeader> {
        let (name, value) = (name.into(), value.into());
        headers::check(&name, &value).map_err(|problem| self.invalid(problem))?;
        self.headers.insert(name, value);
        Ok(self)
    }

    /// Checks every header ([`headers::check`]), those set through the public
    /// [`headers`](Self::headers) field included: both outboxes' `enqueue` call it.
    ///
    /// # Errors
    /// [`InvalidHeader`] naming the message and the first header that breaks the rule.
    pub fn check_headers(&self) -> Result<(), InvalidHeader> {
        headers::check_all(&self.headers).map_err(|problem| self.invalid(problem))
    }

    fn invalid(&self, problem: HeaderProblem) -> InvalidHeader {
        InvalidHeader {
            key: self.key.clone(),
            message_id: self.message_id,
            problem,
        }
    }

    /// [`crate::Error::Unstorable`] unless every backend can store this message: its payload is
    /// JSON PostgreSQL's `jsonb` takes, and its type and headers hold no NUL character.
    pub fn check_storable(&self) -> crate::Result<()> {
        use crate::store::storable::{check_json, check_text};
        let what = |part: &str| {
            format!(
                "the {part} of outbox message {} (`{}`, key `{}`)",
                self.message_id, self.message_type, self.key
            )
        };
        check_json(None, self.payload.get(), || what("payload"))?;
        check_text(None, &self.message_type, || what("type"))?;
        for (name, value) in &self.headers {
            check_text(None, name, || what("headers"))?;
            check_text(None, value, || what("headers"))?;
        }
        Ok(())
    }

    /// The headers a published message carries: the extra ones plus id, type and key.
    pub fn all_headers(&self) -> BTreeMap<String, String> {
        let mut all = self.headers.clone();
        all.insert(headers::EVENT_ID.to_owned(), self.message_id.to_string());
        all.insert(headers::EVENT_TYPE.to_owned(), self.message_type.clone());
        all.insert(headers::STREAM_ID.to_owned(), self.key.clone());
        all
    }
}

/// The headers of an event's outbox message (the same the PostgreSQL relay makes). A
/// `traceparent` that is not a valid header value (see [`headers::check`]) is left out: it
/// cannot be a W3C trace context, and would make the message unpublishable.
pub fn event_headers(stream: &StreamId, event: &NewEvent) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    all.insert(headers::EVENT_ID.to_owned(), event.event_id.to_string());
    all.insert(headers::EVENT_TYPE.to_owned(), event.event_type.clone());
    all.insert(headers::STREAM_ID.to_owned(), stream.to_string());
    all.insert(
        headers::SCHEMA_VERSION.to_owned(),
        event.schema_version.to_string(),
    );
    let meta = &event.metadata;
    if let Some(id) = meta.correlation_id {
        all.insert(headers::CORRELATION_ID.to_owned(), id.to_string());
    }
    if let Some(id) = meta.causation_id {
        all.insert(headers::CAUSATION_ID.to_owned(), id.to_string());
    }
    if let Some(traceparent) = &meta.traceparent
        && headers::check(headers::TRACEPARENT, traceparent).is_ok()
    {
        all.insert(headers::TRACEPARENT.to_owned(), traceparent.clone());
    }
    all
}

/// A stored outbox message, as a relay hands it to a [`Publisher`](super::Publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row id (the order of messages within one key).
    pub id: i64,
    /// The ordering key (the stream id for events).
    pub key: String,
    /// The event's version in its stream, for events.
    pub sequence: Option<u64>,
    /// The message id (the event id for events).
    pub message_id: Uuid,
    /// The message type name.
    pub message_type: String,
    /// The JSON payload as text.
    pub payload: Box<str>,
    /// The headers, see [`headers`].
    pub headers: BTreeMap<String, String>,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the message was written.
    pub created_at: DateTime<Utc>,
}

/// Counts of outbox messages by status, and the outbox lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Messages waiting to be published.
    pub pending: u64,
    /// Published messages not yet removed by retention.
    pub published: u64,
    /// Dead-lettered messages.
    pub dead: u64,
    /// The age of the oldest pending message (the outbox lag); `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}
