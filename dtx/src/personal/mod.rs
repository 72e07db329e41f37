//! Personal data: event payload fields tied to a data subject, sealed at rest with the
//! subject's own key, and forgotten for good when that key is deleted (crypto-shredding).
//!
//! - A payload field holding personal data has the type [`Personal<T>`], and the event's
//!   variant names the field with the subject's id: `#[event(personal(subject = customer_id))]`.
//! - The event stores seal every such value before they write it (events, the outbox copies
//!   that share their rows, snapshots): AES-256-GCM under a key of the subject's own, kept by a
//!   [`SubjectKeys`] store (the `subject_keys` table on PostgreSQL), optionally wrapped by a
//!   master key of yours ([`KeyWrap`], [`MasterKey`]).
//! - Reads open what they return: a value whose key exists reads as
//!   [`Personal::get`]` == Some(..)`; after [`EventStore::forget`](crate::EventStore::forget)
//!   deleted the key, as [`Personal::is_forgotten`], with every other field of the event as it
//!   was.
//!
//! ```
//! use dtx::personal::Personal;
//! use dtx::{DomainEvent, EventStore, MemoryEventStore, NewEvent, StreamId};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Registered {
//!     customer_id: String,
//!     name: Personal<String>,
//!     tier: String,
//! }
//!
//! #[derive(Debug, Clone, DomainEvent)]
//! enum CustomerEvent {
//!     #[event(personal(subject = customer_id))]
//!     Registered(Registered),
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryEventStore::new();
//! let stream = StreamId::new("Customer-7")?;
//! let event = CustomerEvent::Registered(Registered {
//!     customer_id: "customer-7".into(),
//!     name: Personal::new("Ada Lovelace".to_owned()),
//!     tier: "gold".into(),
//! });
//! let new = NewEvent::encode(&stream, &event, Default::default())?;
//! store.append(&stream, dtx::ExpectedVersion::NoStream, vec![new]).await?;
//!
//! let events = store.read_stream(&stream, 1, 10).await?;
//! let CustomerEvent::Registered(registered) = events[0].decode::<CustomerEvent>()?;
//! assert_eq!(registered.name.get().map(String::as_str), Some("Ada Lovelace"));
//!
//! assert!(store.forget("customer-7").await?);
//! let events = store.read_stream(&stream, 1, 10).await?;
//! let CustomerEvent::Registered(registered) = events[0].decode::<CustomerEvent>()?;
//! assert!(registered.name.is_forgotten());
//! assert_eq!(registered.tier, "gold");
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

mod keys;
mod seal;

pub use keys::{DataKey, KeyWrap, MasterKey, MemorySubjectKeys, SubjectKeys};
pub use seal::PersonalData;

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The key that marks a personal value in a stored payload: `{"dtx:personal": "<subject>", ..}`.
pub(crate) const MARK: &str = "dtx:personal";
/// The form's member holding the value in clear (in memory only, never at rest).
pub(crate) const VALUE: &str = "value";
/// The form's member holding the sealed value: base64 of nonce and ciphertext.
pub(crate) const SEALED: &str = "sealed";
/// The form's member of a value whose key was deleted.
pub(crate) const FORGOTTEN: &str = "forgotten";

/// A value of personal data about one data subject (a customer, an employee): stored sealed
/// with the subject's key, read back as the value while the key exists and as forgotten once
/// [`EventStore::forget`](crate::EventStore::forget) deleted it.
///
/// Use it as the type of an event payload's field, and name the subject on the event's variant
/// with `#[event(personal(subject = field))]`; keep it as `Personal<T>` in aggregate state too,
/// so that snapshots hold it sealed rather than in clear.
///
/// Its `Debug` never shows the value. Clones share the subject a value learns when its event is
/// stored.
pub struct Personal<T> {
    subject: Arc<OnceLock<Box<str>>>,
    state: State<T>,
}

#[derive(Clone)]
enum State<T> {
    /// Readable; `sealed` is the stored form it was opened from, if it was read.
    Known { value: T, sealed: Option<Box<str>> },
    /// Read without opening (a message published sealed, say): the stored form, as it was.
    Sealed(Box<str>),
    /// Its key was deleted.
    Forgotten,
}

impl<T> Personal<T> {
    /// A value whose subject the event's `#[event(personal(subject = ..))]` gives when it is
    /// stored.
    pub fn new(value: T) -> Self {
        Self {
            subject: Arc::default(),
            state: State::Known {
                value,
                sealed: None,
            },
        }
    }

    /// A value about `subject`, for a place no event variant names it (aggregate state built
    /// by hand, a saga's data).
    pub fn of(subject: impl fmt::Display, value: T) -> Self {
        let this = Self::new(value);
        let _ = this.subject.set(subject.to_string().into_boxed_str());
        this
    }

    /// A value that reads as forgotten.
    pub fn forgotten() -> Self {
        Self {
            subject: Arc::default(),
            state: State::Forgotten,
        }
    }

    /// The value, unless it was forgotten (or read sealed, see [`is_sealed`](Self::is_sealed)).
    pub fn get(&self) -> Option<&T> {
        match &self.state {
            State::Known { value, .. } => Some(value),
            State::Sealed(_) | State::Forgotten => None,
        }
    }

    /// The value, unless it was forgotten or read sealed.
    pub fn into_inner(self) -> Option<T> {
        match self.state {
            State::Known { value, .. } => Some(value),
            State::Sealed(_) | State::Forgotten => None,
        }
    }

    /// Whether the subject's key was deleted: the value is gone for good.
    pub fn is_forgotten(&self) -> bool {
        matches!(self.state, State::Forgotten)
    }

    /// Whether the value was read in its sealed form without being opened: a message a relay
    /// published as stored, read by a consumer. Serialising it writes the sealed form again.
    pub fn is_sealed(&self) -> bool {
        matches!(self.state, State::Sealed(_))
    }

    /// The data subject's id, once known (given to [`Personal::of`], stored, or read).
    pub fn subject(&self) -> Option<&str> {
        self.subject.get().map(|s| &**s)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: Clone> Clone for Personal<T> {
    fn clone(&self) -> Self {
        Self {
            subject: Arc::clone(&self.subject),
            state: self.state.clone(),
        }
    }
}

impl<T> fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Known { .. } => "<personal>",
            State::Sealed(_) => "<sealed>",
            State::Forgotten => "<forgotten>",
        };
        f.debug_tuple("Personal")
            .field(&format_args!("{state}"))
            .finish()
    }
}

/// Equal when both hold equal values, or both are forgotten; a sealed value equals no other.
impl<T: PartialEq> PartialEq for Personal<T> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.state, &other.state) {
            (State::Known { value: a, .. }, State::Known { value: b, .. }) => a == b,
            (State::Forgotten, State::Forgotten) => true,
            _ => false,
        }
    }
}

impl<T: Default> Default for Personal<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

thread_local! {
    /// The subject of the event being encoded, set by [`with_subject`].
    static SUBJECT: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// Runs `encode` with `subject` as the subject of every [`Personal`] value it serialises: how a
/// variant's `#[event(personal(subject = ..))]` reaches its fields.
pub(crate) fn with_subject<R>(subject: String, encode: impl FnOnce() -> R) -> R {
    /// Puts the previous subject back, even when `encode` panics.
    struct Restore(Option<Box<str>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SUBJECT.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SUBJECT.with(|s| s.replace(Some(subject.into_boxed_str()))));
    encode()
}

impl<T: Serialize> Serialize for Personal<T> {
    /// A known value serialises in clear, marked with its subject, for the store to seal before
    /// it writes it: inside an event being encoded, or when it was never stored. A value read
    /// from the store serialises as the sealed form it was read from (in a saga's data, a
    /// snapshot), never in clear.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let scoped = SUBJECT.with(|s| s.borrow().clone());
        let mut map = serializer.serialize_map(Some(2))?;
        match &self.state {
            State::Known { value, sealed } => {
                if let Some(subject) = &scoped {
                    let _ = self.subject.set(subject.clone());
                }
                map.serialize_entry(MARK, &self.subject())?;
                if let (Some(sealed), None) = (sealed, &scoped) {
                    map.serialize_entry(SEALED, sealed)?;
                } else {
                    map.serialize_entry(VALUE, value)?;
                }
            }
            State::Sealed(sealed) => {
                map.serialize_entry(MARK, &self.subject())?;
                map.serialize_entry(SEALED, sealed)?;
            }
            State::Forgotten => {
                map.serialize_entry(MARK, &self.subject())?;
                map.serialize_entry(FORGOTTEN, &true)?;
            }
        }
        map.end()
    }
}

/// A stored form, as read.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Form<T> {
    #[serde(rename = "dtx:personal")]
    subject: Option<String>,
    #[serde(default = "none", deserialize_with = "present")]
    value: Option<T>,
    #[serde(default)]
    sealed: Option<String>,
    #[serde(default)]
    forgotten: bool,
}

fn none<T>() -> Option<T> {
    None
}

/// A member that is present is `Some`, even when it holds `null` (a `Personal<Option<T>>`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = Form::<T>::deserialize(deserializer)?;
        let subject = Arc::new(OnceLock::new());
        if let Some(s) = form.subject {
            let _ = subject.set(s.into_boxed_str());
        }
        let state = match (form.value, form.sealed) {
            (Some(value), sealed) => State::Known {
                value,
                sealed: sealed.map(String::into_boxed_str),
            },
            (None, Some(sealed)) if !form.forgotten => State::Sealed(sealed.into_boxed_str()),
            (None, _) => State::Forgotten,
        };
        Ok(Self { subject, state })
    }
}

/// The id of a data subject, as a payload field holds it: named by
/// `#[event(personal(subject = ..))]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the id of a data subject",
    label = "named in `personal(subject = ..)`",
    note = "name a field of type `String`, `&str`, `Uuid`, an integer or `dtx::Id<A>`, or implement `dtx::personal::SubjectId` for `{Self}`"
)]
pub trait SubjectId {
    /// The id as the key store keys it.
    fn subject_id(&self) -> String;
}

impl SubjectId for str {
    fn subject_id(&self) -> String {
        self.to_owned()
    }
}

impl SubjectId for String {
    fn subject_id(&self) -> String {
        self.clone()
    }
}

impl<T: SubjectId + ?Sized> SubjectId for &T {
    fn subject_id(&self) -> String {
        (**self).subject_id()
    }
}

impl SubjectId for uuid::Uuid {
    fn subject_id(&self) -> String {
        self.to_string()
    }
}

impl<A> SubjectId for crate::Id<A> {
    fn subject_id(&self) -> String {
        self.to_string()
    }
}

macro_rules! integer_subjects {
    ($($ty:ty),*) => {$(
        impl SubjectId for $ty {
            fn subject_id(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_subjects!(u32, u64, i32, i64, u128, i128);

#[cfg(feature = "schema")]
mod json_schema {
    use super::Personal;
    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
    use std::borrow::Cow;

    /// The form other services see (a published message): the subject's id, and the value
    /// sealed, or the mark of a forgotten one. The value itself is never published in clear.
    impl<T> JsonSchema for Personal<T> {
        fn schema_name() -> Cow<'static, str> {
            "Personal".into()
        }

        fn schema_id() -> Cow<'static, str> {
            "dtx::personal::Personal".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "type": "object",
                "description": "A personal value, sealed with its data subject's key (AES-256-GCM; base64 of nonce and ciphertext), or forgotten once the key was deleted.",
                "properties": {
                    "dtx:personal": { "type": ["string", "null"] },
                    "sealed": { "type": "string" },
                    "forgotten": { "const": true },
                },
                "required": ["dtx:personal"],
            })
        }
    }
}
