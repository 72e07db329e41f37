//! Event contracts: the JSON Schema of every registered event type and version (feature
//! `schema`), so that another team's consumer can validate what dtx publishes.
//!
//! Every variant of a `#[derive(DomainEvent)]` enum registers its event type, schema version
//! and payload type at link time. Derive [`JsonSchema`] on each payload struct (and the types
//! in it) beside `Serialize` and `Deserialize`; [`export`] then builds one JSON Schema document
//! (draft 2020-12) per event type and version, describing the payload exactly as it is stored
//! and published (the message body; the event type and version travel in the
//! `dtx-event-type` and `dtx-schema-version` headers, see [`crate::outbox::headers`]).
//!
//! Each document carries
//!
//! - `"$id": "urn:dtx:event:<event type>:v<version>"` (the event type percent-encoded),
//! - `"title": "<event type> v<version>"`,
//! - `"x-dtx-event-type"` and `"x-dtx-schema-version"`,
//!
//! and [`write_to`] stores it as `<event type>.v<version>.schema.json`.
//!
//! Like handlers, an event is registered only when the final binary links the crate that
//! declares it. A variant or enum marked `#[event(schema = false)]` (internal or test events)
//! is not part of the contract. A payload without `JsonSchema` makes [`export`] fail, naming
//! every such event at once: a contract never silently misses an event.
//!
//! ```standalone_crate
//! use dtx::DomainEvent;
//! use dtx::schema::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! /// A customer placed an order.
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! pub struct OrderPlaced { pub customer: String, pub lines: u32 }
//!
//! #[derive(Debug, Clone, DomainEvent)]
//! pub enum OrderEvent {
//!     #[event(version = 2)]
//!     OrderPlaced(OrderPlaced),
//! }
//!
//! let schemas = dtx::schema::export()?;
//! let placed = schemas.iter().find(|s| s.event_type() == "OrderPlaced").unwrap();
//! assert_eq!(placed.version(), 2);
//! assert_eq!(placed.id(), "urn:dtx:event:OrderPlaced:v2");
//! assert_eq!(placed.document()["title"], "OrderPlaced v2");
//! assert_eq!(placed.document()["required"], serde_json::json!(["customer", "lines"]));
//!
//! let dir = std::env::temp_dir().join(format!("dtx-schemas-{}", dtx::Uuid::new_v4()));
//! let written = dtx::schema::write_to(&dir)?;
//! assert!(written.iter().any(|p| p.ends_with("OrderPlaced.v2.schema.json")));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `schemars` crate, for hand-written [`JsonSchema`] impls.
pub use schemars;
/// Derive it on event payloads, with `schemars` 1.x among your dependencies (or
/// `#[schemars(crate = "dtx::schema::schemars")]` on each type). Its `#[schemars(..)]` and
/// `#[serde(..)]` attributes shape the schema as they shape the JSON.
pub use schemars::JsonSchema;

/// The JSON Schema of one event type at one schema version.
///
/// ```standalone_crate
/// # use dtx::DomainEvent;
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, dtx::schema::JsonSchema)]
/// # pub struct Shipped { pub parcel: String }
/// # #[derive(Debug, Clone, DomainEvent)]
/// # pub enum ShipmentEvent { Shipped(Shipped) }
/// let schemas = dtx::schema::export()?;
/// let shipped = &schemas[0];
/// assert_eq!((shipped.event_type(), shipped.version()), ("Shipped", 1));
/// assert!(shipped.payload_type().ends_with("::Shipped"));
/// assert_eq!(shipped.file_name(), "Shipped.v1.schema.json");
/// assert_eq!(shipped.document()["properties"]["parcel"]["type"], "string");
/// # Ok::<(), dtx::schema::SchemaError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    event_type: &'static str,
    version: u32,
    payload_type: &'static str,
    id: String,
    document: serde_json::Value,
}

impl EventSchema {
    /// The stored event type name.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The schema version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The Rust payload type (its `std::any::type_name`), for diagnostics.
    pub fn payload_type(&self) -> &'static str {
        self.payload_type
    }

    /// The document's `$id`: `urn:dtx:event:<event type>:v<version>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The JSON Schema document (draft 2020-12).
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// The file [`write_to`] stores it in: `<event type>.v<version>.schema.json`, characters
    /// other than ASCII letters, digits, `-` and `_` in the event type replaced by `_`.
    pub fn file_name(&self) -> String {
        let stem: String = self
            .event_type
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{stem}.v{}.schema.json", self.version)
    }
}

/// Why the event contracts could not be exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// These events' payloads do not implement [`JsonSchema`] (each as
    /// `<event type> v<version> (<payload type>)`).
    #[error(
        "the payloads of {} do not implement `JsonSchema`: derive it beside `Serialize`, or mark the variant `#[event(schema = false)]` if it is not part of a contract",
        events.join(", ")
    )]
    MissingJsonSchema {
        /// The events, sorted.
        events: Vec<String>,
    },
    /// Two payload types with different schemas are registered under one event type and
    /// version.
    #[error(
        "event type `{event_type}` v{version} is registered with two different schemas, by `{first}` and by `{second}`"
    )]
    Conflict {
        /// The event type.
        event_type: &'static str,
        /// The version.
        version: u32,
        /// One payload type.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// Two event types map to one file name in [`write_to`].
    #[error("event types `{first}` and `{second}` would both be written to `{file}`")]
    FileNameClash {
        /// The file name.
        file: String,
        /// One event type.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// Writing a document failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The JSON Schema of every registered event type and version, sorted by event type, then
/// version. An event registered by two enums with the same schema is listed once.
///
/// See the [module](self) for an example.
pub fn export() -> Result<Vec<EventSchema>, SchemaError> {
    let mut schemas: BTreeMap<(&'static str, u32), EventSchema> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut contracts: Vec<&crate::__private::EventContract> =
        inventory::iter::<crate::__private::EventContract>().collect();
    // inventory's order differs between builds: sort, so the first of two conflicting payload
    // types is always the same one.
    contracts.sort_by_key(|c| (c.event_type, c.version, (c.payload_type)()));
    for contract in contracts {
        let payload_type = (contract.payload_type)();
        let Some(schema) = (contract.schema)() else {
            missing.push(format!(
                "{} v{} ({payload_type})",
                contract.event_type, contract.version
            ));
            continue;
        };
        let schema = document(contract.event_type, contract.version, schema);
        let key = (contract.event_type, contract.version);
        match schemas.get(&key) {
            Some(first) if first.document != schema.document => {
                return Err(SchemaError::Conflict {
                    event_type: contract.event_type,
                    version: contract.version,
                    first: first.payload_type,
                    second: payload_type,
                });
            }
            Some(_) => {}
            None => {
                schemas.insert(
                    key,
                    EventSchema {
                        payload_type,
                        ..schema
                    },
                );
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(SchemaError::MissingJsonSchema { events: missing });
    }
    Ok(schemas.into_values().collect())
}

/// Writes every [`export`]ed schema to `dir` (created if needed), one pretty-printed file per
/// event type and version ([`EventSchema::file_name`]); returns the paths written.
///
/// See the [module](self) for an example.
pub fn write_to(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, SchemaError> {
    let dir = dir.as_ref();
    let schemas = export()?;
    let mut files: BTreeMap<String, &'static str> = BTreeMap::new();
    for schema in &schemas {
        if let Some(first) = files.insert(schema.file_name(), schema.event_type) {
            return Err(SchemaError::FileNameClash {
                file: schema.file_name(),
                first,
                second: schema.event_type,
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| SchemaError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::with_capacity(schemas.len());
    for schema in schemas {
        let path = dir.join(schema.file_name());
        let mut text = serde_json::to_string_pretty(&schema.document)
            .unwrap_or_else(|_| unreachable!("a JSON value always serialises"));
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| SchemaError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The document of one event: the payload's root schema with its `$id`, title and dtx names.
fn document(event_type: &'static str, version: u32, schema: schemars::Schema) -> EventSchema {
    let id = format!("urn:dtx:event:{}:v{version}", percent_encode(event_type));
    let mut document = schema.to_value();
    if let Some(object) = document.as_object_mut() {
        // `$schema` first, then the names, then the payload's own keywords.
        let mut named = serde_json::Map::new();
        if let Some(dialect) = object.remove("$schema") {
            named.insert("$schema".into(), dialect);
        }
        named.insert("$id".into(), id.clone().into());
        named.insert("title".into(), format!("{event_type} v{version}").into());
        named.insert("x-dtx-event-type".into(), event_type.into());
        named.insert("x-dtx-schema-version".into(), version.into());
        object.remove("title");
        named.append(object);
        document = serde_json::Value::Object(named);
    }
    EventSchema {
        event_type,
        version,
        payload_type: "",
        id,
        document,
    }
}

/// Percent-encodes what is not an unreserved URI character.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}
