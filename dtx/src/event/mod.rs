//! Domain events: the [`DomainEvent`] trait, event metadata, decoding errors, and the
//! [`Upcasters`] that bring events stored at older schema versions to the current form.

mod upcast;

pub use upcast::{CurrentForm, Upcasters};

use crate::error::BoxError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// An enum of the events one aggregate emits, stored as `(event_type, schema_version, data)`.
///
/// Implement it with `#[derive(DomainEvent)]`: the stored `data` is the payload struct alone,
/// and decoding looks the type up by its stored name — never by a type name inside the payload.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event enum",
    label = "expected an enum with `#[derive(dtx::DomainEvent)]`",
    note = "write `#[derive(dtx::DomainEvent)] enum MyEvent {{ Happened(Happened), .. }}` with one payload struct per variant"
)]
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every event type name this enum can store or decode: the variants' names in declaration
    /// order, then the older names they still decode from (`#[event(alias = "..")]`).
    const EVENT_TYPES: &'static [&'static str];

    /// The stored type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version of this event's payload.
    fn schema_version(&self) -> u32;

    /// Serialises the payload alone (without the enum tag).
    fn to_payload(&self) -> Result<Box<RawValue>, serde_json::Error>;

    /// Decodes a stored payload (JSON text) by its stored type name and schema version,
    /// upcasting a payload stored at an older version (see `#[event(upcast(..))]`).
    fn from_payload(event_type: &str, schema_version: u32, data: &str)
    -> Result<Self, DecodeError>;

    /// The current name and schema version of the events stored under `event_type` (a
    /// variant's name or one of its aliases); `None` for a name the enum does not know.
    ///
    /// `#[derive(DomainEvent)]` implements it; the default knows no name, so that
    /// [`Upcasters`] decodes every payload of a hand-written enum to learn its form.
    fn current_form(event_type: &str) -> Option<(&'static str, u32)> {
        let _ = event_type;
        None
    }
}

/// Why a stored event could not be decoded into its [`DomainEvent`] type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No variant of the enum is stored under this name.
    #[error("unknown event type `{event_type}` (known: {known})")]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
        /// The names the enum knows, comma separated.
        known: String,
    },
    /// The stored schema version is newer than the code knows.
    #[error(
        "event type `{event_type}` has schema version {stored}, newer than the supported {supported}"
    )]
    UnsupportedSchemaVersion {
        /// The stored type name.
        event_type: String,
        /// The stored version.
        stored: u32,
        /// The newest version this build understands.
        supported: u32,
    },
    /// The payload is not valid for the type.
    #[error("malformed payload for event type `{event_type}`: {source}")]
    Malformed {
        /// The stored type name.
        event_type: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The stream read has a gap: the event after version `expected - 1` is not version
    /// `expected` (a row was lost or deleted). Nothing after the gap can be trusted to rebuild
    /// state.
    #[error("the stored stream has a gap: expected version {expected}, found version {found}")]
    VersionGap {
        /// The version that should have come next.
        expected: u64,
        /// The version that came instead.
        found: u64,
    },
    /// The payload is stored at a schema version older than the oldest one the type upcasts
    /// from: its chain of `#[event(upcast(..))]` steps does not reach back that far.
    #[error(
        "event type `{event_type}` is stored at schema version {stored}, but its upcasts start at \
         version {oldest}: add `upcast(from = {stored}, ..)` to its `#[event(..)]`"
    )]
    NoUpcaster {
        /// The stored type name.
        event_type: String,
        /// The stored version.
        stored: u32,
        /// The oldest version an upcast starts from.
        oldest: u32,
    },
    /// An upcast step failed: a JSON upcaster returned an error, the stored payload does not
    /// decode as the old type of a typed step, or the upcast payload does not decode as the
    /// current type.
    #[error(
        "event type `{event_type}` stored at schema version {stored}: upcasting to version {to} \
         failed: {source}"
    )]
    Upcast {
        /// The stored type name.
        event_type: String,
        /// The stored version.
        stored: u32,
        /// The version the failed step was to produce.
        to: u32,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A stored column holds a value dtx never writes (a negative schema version, say).
    #[error("stored {column} is {value}, which dtx never writes")]
    ImpossibleValue {
        /// The column.
        column: &'static str,
        /// Its value.
        value: i64,
    },
}

/// Context stored with every event: who caused it and which trace it belongs to.
///
/// The event id, timestamp and schema version are stored next to it on [`crate::RecordedEvent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Groups every event of one business operation (usually the first command's id).
    pub correlation_id: Option<Uuid>,
    /// The id of the command or event that directly caused this event.
    pub causation_id: Option<Uuid>,
    /// The W3C `traceparent` of the span that produced the event.
    pub traceparent: Option<String>,
}

impl EventMetadata {
    /// Metadata with a correlation id.
    #[must_use]
    pub fn correlated(correlation_id: Uuid) -> Self {
        Self {
            correlation_id: Some(correlation_id),
            ..Self::default()
        }
    }

    /// Sets the causation id.
    #[must_use]
    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Sets the W3C `traceparent`.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}
