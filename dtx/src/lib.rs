//! # dtx
//!
//! Distributed transactions on PostgreSQL for Rust services: event-sourced aggregates with
//! snapshots, an event store with a gap-free global feed, and (as they land) command and
//! query buses, sagas with persisted compensation, a transactional outbox and idempotency keys.
//!
//! Everything runs in memory out of the box ([`MemoryEventStore`]); the same code runs on
//! PostgreSQL through the `dtx-postgres` crate.
//!
//! ```
//! use dtx::{Aggregate, Apply, DomainEvent, Id, MemoryEventStore, Repository};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! pub struct Deposited { pub amount: u64 }
//!
//! #[derive(Debug, Clone, DomainEvent)]
//! pub enum AccountEvent {
//!     Deposited(Deposited),
//! }
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
//! #[aggregate(event = AccountEvent)]
//! pub struct Account {
//!     id: Id<Account>,
//!     balance: u64,
//! }
//!
//! impl Apply<Deposited> for Account {
//!     fn apply(&mut self, event: &Deposited) {
//!         self.balance += event.amount;
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let accounts = Repository::<Account>::new(MemoryEventStore::new());
//! let id = Id::<Account>::new();
//! let mut account = accounts.load(&id).await?;
//! account.record([Deposited { amount: 40 }])?;
//! accounts.save(&mut account).await?;
//!
//! let account = accounts.load(&id).await?;
//! assert_eq!(account.state().balance, 40);
//! assert_eq!(account.version(), 1);
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

extern crate self as dtx;

pub mod aggregate;
pub mod config;
pub mod error;
pub mod event;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use aggregate::{
    Aggregate, AggregateId, AggregateRoot, Apply, Id, InvariantViolation, Repository,
    SnapshotPolicy,
};
pub use config::{ConfigError, DtxConfig};
pub use error::{Error, Result};
pub use event::{DecodeError, DomainEvent, EventMetadata};
pub use store::{
    AppendResult, EventData, EventStore, ExpectedVersion, GlobalPosition, MemoryEventStore,
    NewEvent, RecordedEvent, SharedEventStore, Snapshot, StoreLimits, StreamId,
};
/// The UUID type of event, command and correlation ids.
pub use uuid::Uuid;

/// Derives [`DomainEvent`] for an enum whose variants each wrap one event struct.
///
/// Each variant is stored under an event type name (the variant name, or
/// `#[event(name = "..")]`) and a schema version (`#[event(version = N)]`, default 1). The
/// stored data is the wrapped struct's own JSON, never the enum's tag. The derive also
/// generates `From<Struct> for Enum` for every variant, and the dispatch that applies each
/// variant to an aggregate through its [`Apply`] impls.
///
/// ```
/// use dtx::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderPlaced { pub customer: String }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderCancelled { pub reason: String }
///
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum OrderEvent {
///     Placed(OrderPlaced),
///     #[event(name = "OrderCancelled", version = 2)]
///     Cancelled(OrderCancelled),
/// }
///
/// let event: OrderEvent = OrderCancelled { reason: "duplicate".into() }.into();
/// assert_eq!(event.event_type(), "OrderCancelled");
/// assert_eq!(event.schema_version(), 2);
/// ```
pub use dtx_macros::DomainEvent;

/// Derives [`Aggregate`] for an aggregate's state struct.
///
/// Options of `#[aggregate(..)]` on the struct:
///
/// - `event = Type` (required): the [`DomainEvent`] enum this aggregate applies; every variant
///   needs an [`Apply`] impl, or compilation fails naming the missing one;
/// - `name = ".."`: the aggregate type name used in stream ids (default: the struct name);
/// - `invariants = path`: a `fn(&Self) -> Result<(), E>` (`E: Display`) checked after events
///   are applied; a violation rejects the command and nothing is stored;
/// - `snapshot_every = N` / `snapshots = false`: snapshot policy (default: the configured
///   `EVENT_STORE_SNAPSHOT_FREQUENCY`); snapshots need `Serialize` and `Deserialize`;
/// - `snapshot_version = N`: bump it when a type nested in the state changes shape, so stored
///   snapshots are no longer trusted (the struct's own fields are hashed automatically);
/// - `crate = path`: where to find `dtx` when it is re-exported under another name.
///
/// The field holding the typed [`AggregateId`] is the one named `id`, or the one marked
/// `#[aggregate(id)]`; every other field must implement `Default`.
///
/// ```
/// use dtx::{Aggregate, Apply, DomainEvent, Id};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Opened {}
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum TicketEvent { Opened(Opened) }
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
/// #[aggregate(event = TicketEvent, name = "Ticket", snapshot_every = 20)]
/// pub struct Ticket {
///     #[aggregate(id)]
///     number: Id<Ticket>,
///     open: bool,
/// }
///
/// impl Apply<Opened> for Ticket {
///     fn apply(&mut self, _: &Opened) { self.open = true; }
/// }
///
/// assert_eq!(Ticket::TYPE, "Ticket");
/// ```
pub use dtx_macros::Aggregate;
