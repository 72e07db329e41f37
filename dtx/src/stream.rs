//! Stream ids and version expectations: the names every other module uses for a stream.

use std::fmt;
use std::sync::Arc;

/// The id of one event stream, usually `{AggregateType}-{id}`.
///
/// Between 1 and [`StreamId::MAX_LEN`] bytes, without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub(crate) Arc<str>);

impl StreamId {
    /// The longest stream id accepted, in bytes.
    pub const MAX_LEN: usize = 512;

    /// A stream id read back from storage, taken as it is: what was stored is read whatever
    /// today's validation ([`StreamId::new`]) would say about it, so one old or hand-written row
    /// cannot stop a reader. For storage backends; everything else builds ids with
    /// [`StreamId::new`].
    #[doc(hidden)]
    pub fn from_stored(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The stream id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What the caller expects the stream's version to be before an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet (same as `Exact(0)`).
    NoStream,
    /// The stream must be exactly at this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the stream must be at, or `None` for [`ExpectedVersion::Any`].
    pub fn required(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(v) => Some(v),
        }
    }

    /// Whether a stream at `current` satisfies this expectation.
    pub fn admits(self, current: u64) -> bool {
        self.required().is_none_or(|v| v == current)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}
