//! The header names every outbox message carries (when the value is known).

/// The message id (the event id for events): consumers dedupe on it.
pub const EVENT_ID: &str = "dtx-event-id";
/// The stored event type name.
pub const EVENT_TYPE: &str = "dtx-event-type";
/// The stream (ordering key) the message belongs to.
pub const STREAM_ID: &str = "dtx-stream-id";
/// The correlation id of the business operation.
pub const CORRELATION_ID: &str = "dtx-correlation-id";
/// The id of the command or event that caused this one.
pub const CAUSATION_ID: &str = "dtx-causation-id";
/// The W3C trace context of the span that produced the message.
pub const TRACEPARENT: &str = "traceparent";
