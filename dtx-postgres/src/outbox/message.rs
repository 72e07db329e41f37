//! Reading a message: an outbox row, completed from `event_store` for an event.

use chrono::{DateTime, Utc};
use dtx::Error;
use dtx::outbox::{OutboxMessage, headers};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The columns of a message (see `MESSAGE_COLUMNS` in the statements): a message's row carries
/// its own id, type, payload and headers; an event's row is completed from `event_store`, and
/// its headers are made from the event's metadata.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct MessageRow {
    id: i64,
    stream_key: String,
    sequence: Option<i64>,
    event_id: Option<Uuid>,
    event_type: Option<String>,
    /// `None` for an event that is no longer in the event store.
    payload: Option<String>,
    /// A message's headers (JSON); `None` for an event.
    headers: Option<String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    traceparent: Option<String>,
    schema_version: Option<i32>,
    attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
}

/// A message whose publish failed (or that could not be read): it is retried with backoff or
/// dead-lettered.
#[derive(Debug)]
pub(super) struct Failed {
    /// The message.
    pub(super) message: OutboxMessage,
    /// Why, as recorded in `last_error`.
    pub(super) error: String,
    /// Whether no retry can succeed (the row cannot be read, the message cannot be sent): it is
    /// dead-lettered at once.
    pub(super) permanent: bool,
}

impl MessageRow {
    /// The message's id (for an event, its global position).
    pub(super) fn id(&self) -> i64 {
        self.id
    }

    /// The message's key (for an event, its stream).
    pub(super) fn key(&self) -> &str {
        &self.stream_key
    }

    /// The message. `Err`: the row cannot become one, a failure the relay records like a failed
    /// publish (with the message as far as it could be read). The row's event is no longer
    /// stored (retried: it may come back from a backup), or its headers are not a JSON object
    /// of strings (written by another program or by hand: dead-lettered at once, so that the
    /// rest of the backlog flows).
    #[expect(
        clippy::result_large_err,
        reason = "both outcomes carry the whole message, which the caller keeps either way"
    )]
    pub(super) fn into_message(self) -> std::result::Result<OutboxMessage, Failed> {
        let sequence = self.sequence.and_then(|s| u64::try_from(s).ok());
        let (headers, unreadable) = match &self.headers {
            // a message: the headers it was enqueued with
            Some(headers) => match serde_json::from_str(headers) {
                Ok(headers) => (headers, None),
                Err(error) => (BTreeMap::new(), Some(error)),
            },
            None => (self.event_headers(), None),
        };
        let missing = self.payload.is_none();
        let message = OutboxMessage {
            id: self.id,
            sequence,
            message_id: self.event_id.unwrap_or_default(),
            message_type: self.event_type.unwrap_or_default(),
            payload: self
                .payload
                .unwrap_or_else(|| "null".to_owned())
                .into_boxed_str(),
            headers,
            attempts: crate::sql::to_u32(self.attempts),
            last_error: self.last_error,
            created_at: self.created_at,
            key: self.stream_key,
        };
        if let Some(error) = unreadable {
            let error = format!(
                "the headers of outbox message {} (id {}) of key `{}` are not a JSON object of \
                 strings: {error}",
                message.message_id, message.id, message.key
            );
            return Err(Failed {
                message,
                error,
                permanent: true,
            });
        }
        if missing {
            let error = format!(
                "event {} of stream `{}` is no longer in the event store",
                sequence.unwrap_or_default(),
                message.key
            );
            return Err(Failed {
                message,
                error,
                permanent: false,
            });
        }
        Ok(message)
    }

    /// An event's headers: those of its metadata.
    fn event_headers(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        if let Some(id) = self.event_id {
            all.insert(headers::EVENT_ID.to_owned(), id.to_string());
        }
        if let Some(kind) = &self.event_type {
            all.insert(headers::EVENT_TYPE.to_owned(), kind.clone());
        }
        all.insert(headers::STREAM_ID.to_owned(), self.stream_key.clone());
        if let Some(version) = self.schema_version {
            all.insert(headers::SCHEMA_VERSION.to_owned(), version.to_string());
        }
        for (name, id) in [
            (headers::CORRELATION_ID, self.correlation_id),
            (headers::CAUSATION_ID, self.causation_id),
        ] {
            if let Some(id) = id {
                all.insert(name.to_owned(), id.to_string());
            }
        }
        // Left out when it is no valid header value, as `dtx::outbox::event_headers` does.
        if let Some(traceparent) = &self.traceparent
            && headers::check(headers::TRACEPARENT, traceparent).is_ok()
        {
            all.insert(headers::TRACEPARENT.to_owned(), traceparent.clone());
        }
        all
    }
}

/// The error of a relay or status query that finds the feed's checkpoint row gone.
pub(super) fn missing_checkpoint() -> Error {
    Error::storage(
        "the outbox feed's checkpoint (row 'events' of outbox_feed) is missing: no event is \
         published from the feed until it is restored (the dtx migrations create it)",
    )
}
