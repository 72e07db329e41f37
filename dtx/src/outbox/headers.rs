//! The header names every outbox message carries (when the value is known), and the rule every
//! header obeys ([`check`]).
//!
//! A header name is a token of RFC 9110 (letters, digits and ``!#$%&'*+-.^_`|~``); a value holds
//! no control character other than a tab (no CR or LF, which would end it early in the NATS and
//! HTTP wire formats). [`NewOutboxMessage::with_header`](super::NewOutboxMessage::with_header) and
//! both outboxes' `enqueue` refuse a header that breaks the rule; a stored message whose headers
//! break it (written before the rule, or by another program) is dead-lettered by the relay at its
//! first attempt, since no retry can change it.

use uuid::Uuid;

/// The message id (the event id for events): consumers dedupe on it.
pub const EVENT_ID: &str = "dtx-event-id";
/// The stored event type name.
pub const EVENT_TYPE: &str = "dtx-event-type";
/// The schema version of an event's payload (consumers decode it at that version).
pub const SCHEMA_VERSION: &str = "dtx-schema-version";
/// The stream (ordering key) the message belongs to.
pub const STREAM_ID: &str = "dtx-stream-id";
/// The correlation id of the business operation.
pub const CORRELATION_ID: &str = "dtx-correlation-id";
/// The id of the command or event that caused this one.
pub const CAUSATION_ID: &str = "dtx-causation-id";
/// The W3C trace context of the span that produced the message.
pub const TRACEPARENT: &str = "traceparent";

/// What is wrong with a header (see [`check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// The name is empty or holds a character outside the token characters.
    #[error("header name {name:?} is not a token (letters, digits and !#$%&'*+-.^_`|~)")]
    Name {
        /// The name.
        name: String,
    },
    /// The value holds a CR, LF or another control character (a tab is allowed).
    #[error("the value of header `{name}` holds a line break or another control character")]
    Value {
        /// The header's name.
        name: String,
    },
}

/// A header of an outbox message breaks the rule of [`check`]: names the message and its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox message {message_id} of key `{key}`: {problem}")]
pub struct InvalidHeader {
    /// The message's ordering key.
    pub key: String,
    /// The message's id.
    pub message_id: Uuid,
    /// What is wrong.
    pub problem: HeaderProblem,
}

impl From<InvalidHeader> for crate::Error {
    fn from(error: InvalidHeader) -> Self {
        let (reason, value) = match &error.problem {
            HeaderProblem::Name { name } => (
                "a header name is a token (letters, digits and !#$%&'*+-.^_`|~)",
                name,
            ),
            HeaderProblem::Value { name } => (
                "a header value holds no line break or other control character",
                name,
            ),
        };
        crate::Error::Invalid {
            what: "outbox header",
            value: format!(
                "{} (message {} of key `{}`)",
                value.chars().take(80).collect::<String>(),
                error.message_id,
                error.key
            ),
            reason,
        }
    }
}

/// Whether `name: value` is a header every publisher can send: `name` a non-empty token,
/// `value` free of control characters other than a tab.
///
/// ```
/// use dtx::outbox::headers::{HeaderProblem, check};
///
/// assert!(check("x-tenant", "7").is_ok());
/// assert!(matches!(check("x tenant", "7"), Err(HeaderProblem::Name { .. })));
/// assert!(matches!(check("x-tenant", "7\r\nx-admin: 1"), Err(HeaderProblem::Value { .. })));
/// ```
///
/// # Errors
/// The first thing wrong, name before value.
pub fn check(name: &str, value: &str) -> Result<(), HeaderProblem> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(HeaderProblem::Name {
            name: name.to_owned(),
        });
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(HeaderProblem::Value {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks every header of a message ([`check`]).
///
/// # Errors
/// The first header, in name order, that breaks the rule.
pub fn check_all<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), HeaderProblem> {
    headers
        .into_iter()
        .try_for_each(|(name, value)| check(name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_tokens_and_values_hold_no_control_characters() {
        for name in ["x-tenant", "X_Custom.1", "a!#$%&'*+-.^_`|~z", "traceparent"] {
            assert_eq!(check(name, "v"), Ok(()), "{name}");
        }
        for name in ["", "x tenant", "x:y", "x\r\n", "ü", "x\"", "(x)", "x\0"] {
            assert!(
                matches!(check(name, "v"), Err(HeaderProblem::Name { .. })),
                "{name:?}"
            );
        }
        for value in ["", "a b", "tab\there", "ünïcode", "00-ab-cd-01"] {
            assert_eq!(check("x", value), Ok(()), "{value:?}");
        }
        for value in [
            "a\rb",
            "a\nb",
            "a\r\nx-admin: 1",
            "nul\0",
            "\u{7f}",
            "\u{85}",
        ] {
            assert!(
                matches!(check("x", value), Err(HeaderProblem::Value { .. })),
                "{value:?}"
            );
        }
    }
}
