//! [`Upcasters`]: stored payloads brought to their current form without decoding them into
//! their enum, for the readers that pass payloads on (the outbox relay's
//! [`Payloads::Current`](crate::outbox::Payloads::Current)).

use super::{DecodeError, DomainEvent};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A stored payload in its current form: the current name (an alias replaced), the current
/// schema version, and the payload as the current type serialises it.
#[derive(Debug, Clone)]
pub struct CurrentForm {
    /// The current type name.
    pub event_type: &'static str,
    /// The current schema version.
    pub schema_version: u32,
    /// The payload, upcast and re-encoded.
    pub data: Box<RawValue>,
}

/// The upcasting of one enum, type-erased.
type UpcastFn = fn(&str, u32, &str) -> Result<Option<CurrentForm>, DecodeError>;

#[derive(Clone, Copy)]
struct Entry {
    enum_name: &'static str,
    upcast: UpcastFn,
    /// Another enum of the set that also knows the name: upcasting it is refused.
    conflict: Option<&'static str>,
}

/// A set of `#[derive(DomainEvent)]` enums, by the names they store and decode: brings a stored
/// `(event_type, schema_version, data)` to its current form with the enum's upcasts.
///
/// ```
/// use dtx::DomainEvent;
/// use dtx::event::Upcasters;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct PlacedV1 { cents: i64 }
/// #[derive(Serialize, Deserialize)]
/// struct Placed { total: i64 }
/// impl From<PlacedV1> for Placed {
///     fn from(v1: PlacedV1) -> Self { Self { total: v1.cents } }
/// }
/// #[derive(DomainEvent)]
/// enum OrderEvent {
///     #[event(name = "order.placed", version = 2, alias = "Placed", upcast(from = 1, type = PlacedV1))]
///     Placed(Placed),
/// }
///
/// let upcasters = Upcasters::new().with::<OrderEvent>();
/// let current = upcasters.upcast("Placed", 1, r#"{"cents":5}"#).unwrap()?.unwrap();
/// assert_eq!((current.event_type, current.schema_version), ("order.placed", 2));
/// assert_eq!(current.data.get(), r#"{"total":5}"#);
/// // Already current: nothing to do.
/// assert!(upcasters.upcast("order.placed", 2, r#"{"total":5}"#).unwrap()?.is_none());
/// // Not an event of the set.
/// assert!(upcasters.upcast("Shipped", 1, "{}").is_none());
/// # Ok::<(), dtx::DecodeError>(())
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    by_name: Arc<HashMap<&'static str, Entry>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&&str> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Upcasters").field("names", &names).finish()
    }
}

impl Upcasters {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the enum `E`: the names it stores and decodes ([`DomainEvent::EVENT_TYPES`]). A
    /// name that an enum already in the set knows too is ambiguous: [`upcast`](Self::upcast)
    /// refuses it, naming both enums.
    #[must_use]
    pub fn with<E: DomainEvent>(mut self) -> Self {
        let enum_name = std::any::type_name::<E>();
        let by_name = Arc::make_mut(&mut self.by_name);
        for &name in E::EVENT_TYPES {
            let entry = Entry {
                enum_name,
                upcast: upcast_with::<E>,
                conflict: None,
            };
            by_name
                .entry(name)
                .and_modify(|first| {
                    if first.enum_name != enum_name {
                        first.conflict = Some(enum_name);
                    }
                })
                .or_insert(entry);
        }
        self
    }

    /// Whether no enum was added.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The current form of a payload stored as `event_type` at `schema_version`: `None` when no
    /// enum of the set knows the name, `Ok(None)` when the payload is already current (its name
    /// is not an alias and its version is the current one: it is not decoded), otherwise the
    /// payload decoded (upcast) and encoded again.
    ///
    /// # Errors
    /// The [`DecodeError`] of decoding it, or [`DecodeError::Upcast`] when two enums of the set
    /// know the name or the upcast payload does not encode.
    pub fn upcast(
        &self,
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Option<Result<Option<CurrentForm>, DecodeError>> {
        let entry = self.by_name.get(event_type)?;
        if let Some(second) = entry.conflict {
            return Some(Err(DecodeError::Upcast {
                event_type: event_type.to_owned(),
                stored: schema_version,
                to: schema_version,
                source: format!(
                    "two enums of the upcasters know this name, `{}` and `{second}`: add only one",
                    entry.enum_name
                )
                .into(),
            }));
        }
        Some((entry.upcast)(event_type, schema_version, data))
    }
}

/// Upcasts through `E`: decode (which upcasts), encode the current form.
fn upcast_with<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    data: &str,
) -> Result<Option<CurrentForm>, DecodeError> {
    if let Some((name, version)) = E::current_form(event_type)
        && name == event_type
        && version == schema_version
    {
        return Ok(None);
    }
    let event = E::from_payload(event_type, schema_version, data)?;
    if event.event_type() == event_type && event.schema_version() == schema_version {
        return Ok(None);
    }
    let encoded = event.to_payload().map_err(|source| DecodeError::Upcast {
        event_type: event_type.to_owned(),
        stored: schema_version,
        to: event.schema_version(),
        source: source.into(),
    })?;
    Ok(Some(CurrentForm {
        event_type: event.event_type(),
        schema_version: event.schema_version(),
        data: encoded,
    }))
}
