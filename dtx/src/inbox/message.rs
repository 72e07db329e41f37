//! A message as a consumer receives it from a broker.

use crate::outbox::headers;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A message delivered by a broker: its dtx headers read, its payload as sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboundMessage {
    /// Its id (`dtx-event-id`): the inbox dedupes on it.
    pub message_id: Uuid,
    /// Its type (`dtx-event-type`): which handler runs.
    pub event_type: String,
    /// The schema version of its payload (`dtx-schema-version`), when the producer said.
    pub schema_version: Option<u32>,
    /// Its ordering key (`dtx-stream-id`: the stream of an event).
    pub key: Option<String>,
    /// The business operation it belongs to (`dtx-correlation-id`).
    pub correlation_id: Option<Uuid>,
    /// What caused it (`dtx-causation-id`).
    pub causation_id: Option<Uuid>,
    /// The W3C trace context of the span that produced it.
    pub traceparent: Option<String>,
    /// Every header it carried, the dtx ones included.
    pub headers: BTreeMap<String, String>,
    /// The payload, as sent (JSON for dtx's publishers).
    pub payload: Vec<u8>,
    /// Where it came from, for errors and dead letters (`subject #sequence`,
    /// `topic/partition@offset`).
    pub source: Option<String>,
    /// Which delivery this is (1 for the first), as the broker counts.
    pub delivery: u32,
}

/// Why a delivered message's headers are not those of a dtx message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageProblem {
    /// No `dtx-event-id` header, or not a UUID.
    #[error("header `{}` is missing or not a UUID", headers::EVENT_ID)]
    MessageId,
    /// No `dtx-event-type` header.
    #[error("header `{}` is missing", headers::EVENT_TYPE)]
    EventType,
    /// A header holds a malformed value.
    #[error("header `{name}` holds {value:?}, which is not {expected}")]
    Malformed {
        /// The header.
        name: &'static str,
        /// Its value (at most 80 characters of it).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

impl InboundMessage {
    /// A message of `event_type` with `payload` and nothing else (first delivery).
    pub fn new(message_id: Uuid, event_type: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            message_id,
            event_type: event_type.into(),
            schema_version: None,
            key: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            headers: BTreeMap::new(),
            payload,
            source: None,
            delivery: 1,
        }
    }

    /// Reads a delivered message from its headers (names compared as given, the dtx ones in
    /// lower case as dtx's publishers send them). `source` names where it came from; delivery
    /// is `delivery`.
    ///
    /// A message with no usable id or type is a [`MessageProblem`]; since it cannot be
    /// recognised on redelivery, a driver dead-letters it under [`InboundMessage::stand_in_id`].
    #[expect(
        clippy::result_large_err,
        reason = "both outcomes carry the whole message, which the caller keeps either way"
    )]
    pub fn from_headers(
        headers: impl IntoIterator<Item = (String, String)>,
        payload: Vec<u8>,
        source: impl Into<String>,
        delivery: u32,
    ) -> Result<Self, (MessageProblem, Self)> {
        let headers: BTreeMap<String, String> = headers.into_iter().collect();
        let source = source.into();
        let get = |name: &str| headers.get(name).map(String::as_str);
        let uuid = |name: &'static str| -> Result<Option<Uuid>, MessageProblem> {
            get(name)
                .map(|v| {
                    Uuid::parse_str(v.trim()).map_err(|_| MessageProblem::Malformed {
                        name,
                        value: v.chars().take(80).collect(),
                        expected: "a UUID",
                    })
                })
                .transpose()
        };
        let mut problem = None;
        let parsed_id = get(headers::EVENT_ID).and_then(|v| Uuid::parse_str(v.trim()).ok());
        let message_id = parsed_id.unwrap_or_else(|| {
            problem.get_or_insert(MessageProblem::MessageId);
            Self::stand_in_id(&source)
        });
        let event_type = match get(headers::EVENT_TYPE) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => {
                problem.get_or_insert(MessageProblem::EventType);
                String::new()
            }
        };
        let schema_version = match get(headers::SCHEMA_VERSION).map(|v| v.trim().parse::<u32>()) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                problem.get_or_insert(MessageProblem::Malformed {
                    name: headers::SCHEMA_VERSION,
                    value: get(headers::SCHEMA_VERSION)
                        .unwrap_or_default()
                        .chars()
                        .take(80)
                        .collect(),
                    expected: "a schema version (a positive integer)",
                });
                None
            }
        };
        let correlation_id = uuid(headers::CORRELATION_ID).unwrap_or_else(|e| {
            problem.get_or_insert(e);
            None
        });
        let causation_id = uuid(headers::CAUSATION_ID).unwrap_or_else(|e| {
            problem.get_or_insert(e);
            None
        });
        let message = Self {
            message_id,
            event_type,
            schema_version,
            key: get(headers::STREAM_ID).map(str::to_owned),
            correlation_id,
            causation_id,
            traceparent: get(headers::TRACEPARENT).map(str::to_owned),
            headers: headers.clone(),
            payload,
            source: Some(source),
            delivery: delivery.max(1),
        };
        match problem {
            None => Ok(message),
            Some(problem) => Err((problem, message)),
        }
    }

    /// The id a message without one is dead-lettered under: a UUID (v5) of where it came from,
    /// the same on every delivery of it.
    pub fn stand_in_id(source: &str) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("dtx-inbox:{source}").as_bytes(),
        )
    }

    /// The payload as text, if it is UTF-8.
    pub fn payload_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}
