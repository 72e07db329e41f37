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
pub mod breaker;
pub mod config;
pub mod cqrs;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod inbox;
#[cfg(feature = "money")]
pub mod money;
pub mod outbox;
pub mod personal;
pub mod projection;
pub mod retention;
pub(crate) mod retry;
pub mod saga;
#[cfg(feature = "schema")]
pub mod schema;
pub mod store;
mod stream;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uow;

#[doc(hidden)]
pub mod __private;

pub use aggregate::{Aggregate, AggregateId, AggregateRoot, Apply, Id, Repository, SnapshotPolicy};
pub use config::{ConfigError, DtxConfig};
pub use error::{Error, InvariantViolation, Result};
pub use event::{DecodeError, DomainEvent, EventMetadata};
pub use retry::{Backoff, Jitter, Retry};
pub use store::{
    AppendResult, EventData, EventStore, ExpectedVersion, FeedPage, FeedWaker, GlobalPosition,
    MemoryEventStore, NewEvent, RecordedEvent, SharedEventStore, Snapshot, StoreLimits, StreamId,
    StreamState, Unreadable, WakeTicket,
};
pub use uow::{MemoryUnitOfWork, UnitOfWork};
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
/// Each wrapped struct also gets an impl of [`projection::Event`] (its stored name and version,
/// and its decoding), which lets a [`#[projection]`](macro@projection) handle it. A struct
/// wrapped by variants of **two enums** would then get two conflicting impls (error E0119):
/// write `#[event(payload_impl = false)]` on the variant of the enum that should not provide it,
/// or on that enum to opt out for all its variants. The struct keeps the `Event` impl of the
/// other enum, with that enum's name and version.
///
/// **Evolving an event** (see the README, "Evolving events"): a variant at `version = N` may
/// say how each older stored version becomes the next, one `upcast(from = k, ..)` per step,
/// oldest first, the last one from `N - 1`:
///
/// - `upcast(from = 1, with = v1_to_v2)`: a function on the JSON, `fn(serde_json::Value) ->
///   Value` or `-> Result<Value, E>` (an `Err` is [`DecodeError::Upcast`]);
/// - `upcast(from = 1, type = OrderPlacedV1)`: the payload of version 1 is `OrderPlacedV1`
///   (`Deserialize`), which converts `From` into the next version's type, the last one into
///   the variant's struct. Typed steps may follow JSON steps, not precede them.
///
/// A gap, a repeat or a step out of order is a compile error; a stored version older than the
/// first step is [`DecodeError::NoUpcaster`] when it is read. Without any `upcast`, an older
/// version decodes as the current struct, as it is. `alias = "OldName"` (repeatable) decodes
/// the rows stored under a name the variant had before a rename; the events are then written
/// under the new name. Every typed read upcasts: repository loads, stream and feed decodes,
/// projections, consumers and [`inbox::decode`].
///
/// With dtx's feature `schema`, every variant also registers its event type, version and
/// payload for `dtx::schema::export`, which needs each payload to implement `schemars::JsonSchema`;
/// `#[event(schema = false)]` on a variant, or on the enum for all its variants, leaves it out
/// of the exported contracts (an internal or test event). Without the feature the option is
/// accepted and nothing is registered.
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
///
/// use dtx::projection::Event;
/// assert_eq!(<OrderCancelled as Event>::EVENT_TYPE, "OrderCancelled");
/// assert_eq!(<OrderCancelled as Event>::SCHEMA_VERSION, 2);
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

/// Registers command handlers with the [`cqrs::CommandBus`] at link time.
///
/// **On an aggregate's `impl` block**, every method handles the command it takes:
///
/// - `fn name(&self, cmd: C) -> Result<Events, E>` decides from the current state; the bus
///   loads the aggregate (snapshot + events), runs the method, applies the events and checks the
///   invariants, and appends them expecting the loaded version. On a version conflict it
///   reloads and decides again, with exponential backoff and jitter ([`cqrs::RetryPolicy`]).
/// - `fn name(cmd: C) -> Result<Events, E>` (no receiver) creates the aggregate; if it exists
///   already the caller gets [`cqrs::CommandError::AlreadyExists`].
/// - `fn name(state: Option<&Self>, cmd: C) -> Result<Events, E>` creates or changes it: the
///   decision sees `None` when the aggregate has no events yet (one load, and a concurrent
///   create is a version conflict, decided again with the state it made).
/// - `Events` is one event, a `Vec`, an array or an `Option` of values convertible into the
///   aggregate's event enum. The caller receives a [`cqrs::Committed`].
/// - The command finds its aggregate through its field `<aggregate>_id` (`order_id` for
///   `Order`), or the field named by `#[command(target = field)]` on the method. Take the
///   command by value (it must be `Clone`: it is decided again after a conflict) or by `&C`.
///
/// **On an `async fn`**, the function handles the command it takes as its first argument and
/// returns `Result<Output, E>`; the caller receives `Output`.
///
/// After the command, handlers may take `State<T>` (shared state given to the bus builder) and
/// `&CommandContext` (metadata, follow-up commands). A command that implements
/// [`cqrs::Validate`] is validated before its handler runs; every broken rule is reported in
/// [`cqrs::CommandError::Invalid`] and nothing is stored.
///
/// ```
/// use dtx::cqrs::{CommandBus, Committed, State};
/// use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Opened { pub owner: String }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Renamed { pub owner: String }
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum AccountEvent { Opened(Opened), Renamed(Renamed) }
///
/// #[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
/// #[aggregate(event = AccountEvent)]
/// pub struct Account { id: Id<Account>, owner: String }
/// impl Apply<Opened> for Account { fn apply(&mut self, e: &Opened) { self.owner.clone_from(&e.owner) } }
/// impl Apply<Renamed> for Account { fn apply(&mut self, e: &Renamed) { self.owner.clone_from(&e.owner) } }
///
/// #[derive(Debug, Clone)]
/// pub struct OpenAccount { pub account_id: Id<Account>, pub owner: String }
/// #[derive(Debug, Clone)]
/// pub struct Rename { pub account_id: Id<Account>, pub owner: String }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("nothing to change")]
/// pub struct Unchanged;
///
/// #[command_handler]
/// impl Account {
///     fn open(cmd: OpenAccount) -> Result<Opened, Unchanged> {
///         Ok(Opened { owner: cmd.owner })
///     }
///
///     fn rename(&self, cmd: &Rename) -> Result<Vec<AccountEvent>, Unchanged> {
///         if cmd.owner == self.owner { return Err(Unchanged) }
///         Ok(vec![Renamed { owner: cmd.owner.clone() }.into()])
///     }
/// }
///
/// /// A free handler: any command, any output, async.
/// #[command_handler]
/// async fn greet(cmd: Greet, State(greeting): State<&'static str>) -> Result<String, Unchanged> {
///     Ok(format!("{greeting}, {}", cmd.0))
/// }
/// pub struct Greet(pub String);
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = CommandBus::builder().state("hello").registry().build()?;
/// let id = Id::<Account>::new();
/// let _: Committed = bus.execute(OpenAccount { account_id: id, owner: "ada".into() }).await?;
/// let renamed: Committed = bus.execute(Rename { account_id: id, owner: "grace".into() }).await?;
/// assert_eq!(renamed.version, 2);
/// let again = bus.execute(Rename { account_id: id, owner: "grace".into() }).await;
/// assert!(again.unwrap_err().domain::<Unchanged>().is_some());
/// let greeting: String = bus.execute(Greet("dtx".into())).await?;
/// assert_eq!(greeting, "hello, dtx");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::command_handler;

/// Registers a query handler with the [`cqrs::QueryBus`] at link time.
///
/// On an `async fn` that takes the query (then optionally `State<T>` and `&QueryContext`) and
/// returns `Result<Output, E>`. `#[query_handler(cache(ttl_secs = 30, capacity = 1000))]`
/// caches results per query value (the query type must be `Hash + Eq + Clone`, the output
/// `Clone`); [`cqrs::QueryBus::invalidate`] and [`cqrs::QueryBus::invalidate_all`] drop them.
///
/// ```
/// use dtx::cqrs::QueryBus;
/// use dtx::query_handler;
///
/// #[derive(Debug, Clone, PartialEq, Eq, Hash)]
/// pub struct Double(pub u32);
///
/// #[query_handler(cache(ttl_secs = 60))]
/// async fn double(q: Double) -> Result<u32, std::num::TryFromIntError> {
///     Ok(q.0 * 2)
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = QueryBus::from_registry()?;
/// let n: u32 = bus.execute(Double(21)).await?;
/// assert_eq!(n, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::query_handler;

/// Declares a projection (a read model built from events) or a subscription, one handler per
/// event payload type, and registers it at link time.
///
/// On an inherent `impl` block of the projection's type; it implements
/// [`projection::Projection`] for the type. Every method handles the event payload type it
/// takes: each struct that a variant of a [`DomainEvent`] enum wraps is one (it implements
/// [`projection::Event`]). A handler is
///
/// ```text
/// async fn name(&self, event: &Payload, ..) -> Result<(), E>
/// ```
///
/// taking the payload by reference or by value, then, in any order and each at most once:
///
/// - `meta: &RecordedEvent`: the stored event (its id, position, stream, metadata);
/// - `uow: &mut dyn UnitOfWork`: the unit of work the read model writes through, committed
///   with the projection's checkpoint (exactly once);
/// - `inv: &mut `[`projection::Invalidations`]: query cache entries to drop once that unit of
///   work has committed.
///
/// `E` is any error convertible into `Box<dyn Error + Send + Sync>` (`dtx::Error`, your own,
/// `String`): the event is retried with backoff, then the projection stops, visibly. An event
/// that does not decode stops it at once. Events of other types are ignored (the store does
/// not even send them: [`Projection::event_types`](projection::Projection::event_types)).
///
/// One method may be marked `#[clear]`: `async fn clear(&self, uow: &mut dyn UnitOfWork) ->
/// Result<(), E>` empties the read model, in the unit of work that resets its checkpoint to the
/// start (a reset, or the first run of a new `version`).
///
/// Options of `#[projection(..)]`:
///
/// - `name = ".."`: the key of its checkpoint, unique in a service (default: the type's name in
///   snake case, `order_summary` for `OrderSummary`);
/// - `version = N` (default 1): bump it to rebuild the read model from the first event;
/// - `subscription`: its effects leave the database (a mail, an HTTP call), so its handlers
///   take no unit of work and run **at least once**: use `meta.event_id` as an idempotency
///   key. It has no `#[clear]`;
/// - `crate = path`: where to find `dtx` when it is re-exported under another name.
///
/// A crate's projections exist only if the final binary links that crate.
/// [`projection::registered`] lists them, and refuses two projections with one name, naming
/// both. The module [`dtx::projection`](mod@projection) and this macro share a name in different
/// namespaces: `use dtx::projection;` imports both (but `use dtx::projection::{self, ..}` only
/// the module).
///
/// ```
/// use dtx::projection::{Invalidations, Projection, ProjectionKind};
/// use dtx::{
///     DomainEvent, EventMetadata, EventStore, ExpectedVersion, GlobalPosition, MemoryEventStore,
///     MemoryUnitOfWork, NewEvent, RecordedEvent, StreamId, UnitOfWork, projection,
/// };
/// use serde::{Deserialize, Serialize};
/// use std::collections::BTreeMap;
/// use std::sync::Mutex;
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderPlaced { pub customer: String }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderCancelled { pub customer: String }
///
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum OrderEvent { Placed(OrderPlaced), Cancelled(OrderCancelled) }
///
/// /// Open orders per customer. In memory here; a real read model writes its rows through
/// /// `uow` (a table in the event store's database), so they commit with its checkpoint.
/// #[derive(Default)]
/// pub struct OpenOrders { by_customer: Mutex<BTreeMap<String, u32>> }
///
/// /// The cached query that reads them.
/// #[derive(Debug, Clone, PartialEq, Eq, Hash)]
/// pub struct GetOpenOrders { pub customer: String }
///
/// #[projection(version = 2)]
/// impl OpenOrders {
///     async fn on_placed(&self, event: &OrderPlaced, inv: &mut Invalidations) -> Result<(), String> {
///         *self.rows().entry(event.customer.clone()).or_default() += 1;
///         inv.query(GetOpenOrders { customer: event.customer.clone() });
///         Ok(())
///     }
///
///     async fn on_cancelled(&self, event: OrderCancelled) -> Result<(), String> {
///         let mut rows = self.rows();
///         let open = rows.get_mut(&event.customer).ok_or("no open order")?;
///         *open -= 1;
///         Ok(())
///     }
///
///     #[clear]
///     async fn clear(&self, _uow: &mut dyn UnitOfWork) -> Result<(), String> {
///         self.rows().clear();
///         Ok(())
///     }
/// }
///
/// impl OpenOrders {
///     fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
///         self.by_customer.lock().expect("not poisoned")
///     }
/// }
///
/// /// Thanks each customer once per order: at least once, keyed by the event id.
/// #[derive(Default)]
/// pub struct ThankYouMail { sent: Mutex<Vec<(dtx::Uuid, String)>> }
///
/// #[projection(name = "thank-you-mail", subscription)]
/// impl ThankYouMail {
///     async fn on_placed(&self, event: &OrderPlaced, meta: &RecordedEvent) -> Result<(), String> {
///         let mut sent = self.sent.lock().expect("not poisoned");
///         if !sent.iter().any(|(id, _)| *id == meta.event_id) {
///             sent.push((meta.event_id, event.customer.clone()));
///         }
///         Ok(())
///     }
/// }
///
/// assert_eq!(OpenOrders::NAME, "open_orders");
/// assert_eq!((OpenOrders::VERSION, OpenOrders::KIND), (2, ProjectionKind::ReadModel));
/// assert_eq!(OpenOrders::event_types(), ["Placed", "Cancelled"]);
/// assert_eq!(ThankYouMail::KIND, ProjectionKind::Subscription);
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryEventStore::new();
/// let stream = StreamId::new("Order-1")?;
/// let events = [
///     OrderEvent::from(OrderPlaced { customer: "ada".into() }),
///     OrderPlaced { customer: "ada".into() }.into(),
///     OrderCancelled { customer: "ada".into() }.into(),
/// ];
/// let events = events
///     .iter()
///     .map(|e| NewEvent::encode(&stream, e, EventMetadata::default()))
///     .collect::<dtx::Result<_>>()?;
/// store.append(&stream, ExpectedVersion::NoStream, events).await?;
///
/// // What the runner does for each event of the feed: handle it in a unit of work (a read
/// // model's) and commit.
/// let (open_orders, mail) = (OpenOrders::default(), ThankYouMail::default());
/// for event in store.read_all(GlobalPosition::START, 100).await? {
///     let mut uow = MemoryUnitOfWork::new();
///     let mut invalidations = Invalidations::default();
///     open_orders.handle(&event, Some(&mut uow), &mut invalidations).await?;
///     uow.commit().await?;
///     mail.handle(&event, None, &mut Invalidations::default()).await?;
/// }
/// assert_eq!(open_orders.rows()["ada"], 1);
/// assert_eq!(mail.sent.lock().expect("not poisoned").len(), 2);
///
/// open_orders.clear(&mut MemoryUnitOfWork::new()).await?;
/// assert!(open_orders.rows().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::projection;

/// Declares a consumer of another service's messages, one handler per event payload type, and
/// registers it at link time: the handler shape of [`#[projection]`](macro@projection), run
/// through an [`inbox`] that applies each message exactly once.
///
/// On an inherent `impl` block of the consumer's type; it implements [`inbox::Consumer`] for the
/// type. Every method handles the event payload type it takes: each struct that a variant of a
/// [`DomainEvent`] enum wraps is one (it implements [`projection::Event`]), and a message is
/// handled when its `dtx-event-type` header is that variant's stored name. A handler is
///
/// ```text
/// async fn name(&self, event: &Payload, ..) -> Result<(), E>
/// ```
///
/// taking the payload by reference or by value (decoded at the schema version the message's
/// `dtx-schema-version` header gives), then, in any order and each at most once:
///
/// - `message: &`[`inbox::InboundMessage`]: the message (its id, headers, key, correlation id);
/// - `uow: &mut dyn UnitOfWork`: the unit of work the handler writes through, committed with the
///   message's inbox record, so a redelivery finds the record and skips the handler.
///
/// `E` is any error convertible into `Box<dyn Error + Send + Sync>` (`dtx::Error`, your own,
/// `String`): the message's writes roll back and it is retried with backoff, then
/// dead-lettered. A payload that does not decode is dead-lettered at once. A message of a type
/// no handler takes is recorded and acknowledged without a call.
///
/// Options of `#[consumer(..)]`:
///
/// - `name = ".."`: the key of its inbox records, dead letters and partition offsets, unique in
///   a service (default: the type's name in snake case, `payments` for `Payments`). Renaming a
///   consumer forgets which messages it received;
/// - `crate = path`: where to find `dtx` when it is re-exported under another name.
///
/// A crate's consumers exist only if the final binary links that crate.
/// [`inbox::registered`] lists them, and refuses two consumers with one name, naming both.
///
/// ```
/// use dtx::inbox::{Consumer, Handled, Inbox, InboundMessage, MemoryInbox, Refused};
/// use dtx::{
///     DomainEvent, EventMetadata, EventStore, ExpectedVersion, MemoryEventStore, NewEvent,
///     StreamId, UnitOfWork, consumer,
/// };
/// use serde::{Deserialize, Serialize};
///
/// // The order service's events, as the payment service reads them.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderPlaced { pub order: String, pub total: u64 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct OrderCancelled { pub order: String }
///
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum OrderEvent { OrderPlaced(OrderPlaced), OrderCancelled(OrderCancelled) }
///
/// // The payment service's own events.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct PaymentRequested { pub amount: u64 }
///
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum PaymentEvent { PaymentRequested(PaymentRequested) }
///
/// pub struct Payments { store: MemoryEventStore }
///
/// #[consumer]
/// impl Payments {
///     /// Requests the payment: the event is appended in `uow`, with the inbox record.
///     async fn on_placed(
///         &self,
///         event: &OrderPlaced,
///         message: &InboundMessage,
///         uow: &mut dyn UnitOfWork,
///     ) -> Result<(), dtx::Error> {
///         let stream = StreamId::new(format!("Payment-{}", event.order))?;
///         let requested = PaymentEvent::from(PaymentRequested { amount: event.total });
///         let metadata = EventMetadata {
///             correlation_id: message.correlation_id,
///             causation_id: Some(message.message_id),
///             ..EventMetadata::default()
///         };
///         let events = vec![NewEvent::encode(&stream, &requested, metadata)?];
///         self.store.append_in(uow, &stream, ExpectedVersion::NoStream, events).await?;
///         Ok(())
///     }
///
///     async fn on_cancelled(&self, event: OrderCancelled) -> Result<(), String> {
///         Err(format!("order {} cannot be cancelled yet", event.order))
///     }
/// }
///
/// assert_eq!(Payments::NAME, "payments");
/// assert_eq!(Payments::event_types(), ["OrderPlaced", "OrderCancelled"]);
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // What a broker driver does for each delivery: receive it, then acknowledge the broker.
/// let inbox = Inbox::new(MemoryInbox::new());
/// let payments = Payments { store: MemoryEventStore::new() };
/// let placed = InboundMessage::new(
///     dtx::Uuid::new_v4(),
///     "OrderPlaced",
///     br#"{"order":"42","total":30}"#.to_vec(),
/// );
/// assert_eq!(inbox.receive(&payments, &placed).await?, Handled::Applied);
/// assert_eq!(inbox.receive(&payments, &placed).await?, Handled::Duplicate);
/// let stream = StreamId::new("Payment-42")?;
/// assert_eq!(payments.store.read_stream(&stream, 0, 10).await?.len(), 1);
///
/// let cancelled = InboundMessage::new(dtx::Uuid::new_v4(), "OrderCancelled", br#"{"order":"42"}"#.to_vec());
/// let refused = inbox.receive(&payments, &cancelled).await;
/// assert!(matches!(refused, Err(Refused::Retry(_))), "{refused:?}");
///
/// let names: Vec<_> = dtx::inbox::registered()?.iter().map(|c| c.name).collect();
/// assert_eq!(names, ["payments"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::consumer;

/// Makes an async fn idempotent: the first call with a key runs the body and stores its `Ok`
/// value; a later call with the same key returns the stored value without running the body.
///
/// `#[idempotent(key = <expr>)]` on an `async fn` returning `Result<T, E>`, where the key
/// expression uses the arguments (`self` included) and yields anything `Display` (a
/// [`Uuid`], a `String`, ...). `T` must be `Serialize + DeserializeOwned` (it is stored as
/// JSON); `E` must implement `From<`[`idempotency::IdempotencyError`]`>`, which reports a
/// store failure, an invalid key, a key reused with another fingerprint, or a duplicate that
/// waited longer than the lock timeout.
///
/// - **Concurrent calls** with one key run the body once: the duplicates wait for the first
///   (up to its lock timeout) and return its result.
/// - **An `Err` is not stored**: the key is released and the next call runs the body again.
/// - **A crash** mid-body leaves the key locked until `lock_timeout_secs` (default 60), then
///   the next call runs the body again.
/// - Records are scoped by the function's path, so two functions never share results.
///
/// Options:
///
/// - `key = expr` (required): the idempotency key, 1 to 255 characters;
/// - `ttl_secs = N`: how long the result is kept (default: `IDEMPOTENCY_TTL_HOURS`, 24 h);
/// - `lock_timeout_secs = N`: how long a running call holds the key (default 60);
/// - `store = expr`: an [`idempotency::IdempotencyStore`] (e.g. `*STORE`, `self.store`, an
///   `Arc<dyn IdempotencyStore>`); default: the process-wide store,
///   [`idempotency::install`]ed at start-up, else in memory;
/// - `scope = expr`: a further scope (tenant, principal) for the key, `Display`;
/// - `fingerprint = expr`: a `Serialize` value identifying the request: reusing the key with
///   another value is refused;
/// - `crate = path`: where to find `dtx` when it is re-exported under another name.
///
/// ```
/// use dtx::idempotency::IdempotencyError;
/// use dtx::idempotent;
/// use serde::{Deserialize, Serialize};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Receipt { pub charge: u32, pub amount: u64 }
///
/// #[derive(Debug, thiserror::Error)]
/// pub enum PaymentError {
///     #[error("card declined")]
///     Declined,
///     #[error(transparent)]
///     Idempotency(#[from] IdempotencyError),
/// }
///
/// static CHARGES: AtomicU32 = AtomicU32::new(0);
///
/// #[idempotent(key = request_id, ttl_secs = 3600)]
/// async fn charge(request_id: &str, amount: u64) -> Result<Receipt, PaymentError> {
///     if amount == 0 { return Err(PaymentError::Declined) }
///     let charge = CHARGES.fetch_add(1, Ordering::SeqCst) + 1;
///     Ok(Receipt { charge, amount })
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let first = charge("req-1", 100).await?;
/// let retry = charge("req-1", 100).await?;
/// assert_eq!(first, retry, "the retry gets the stored receipt");
/// assert_eq!(CHARGES.load(Ordering::SeqCst), 1, "the card was charged once");
///
/// assert!(charge("req-2", 0).await.is_err(), "an error is not stored...");
/// assert_eq!(charge("req-2", 5).await?.charge, 2, "...so a retry runs again");
/// # Ok::<(), PaymentError>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::idempotent;

/// Declares a saga: ordered steps over a data struct, each wired to its compensation.
///
/// On the `impl` block of the saga's data (which must be `Serialize + Deserialize`; it is
/// persisted after every step). `#[step]` methods run in declaration order; each is
/// `async fn name(&mut self, ctx: &StepContext) -> Result<T, E>` where `T` is `()` or events to
/// record in the saga's stream, and `E` any error (`StepError::permanent(..)` skips retries).
///
/// Options of `#[saga(..)]`: `name = ".."` (default: the type's name; workers resume sagas by
/// it), `max_retries = N`, `step_timeout_secs = N`, `deadline_secs = N`, `crate = path`.
/// Options of `#[step(..)]`: `compensate = method` (a plain method of the same impl with the
/// same signature), `name = ".."`, `retries = N`, `await_event = ".."` with
/// `await_timeout_secs = N` (after its action the saga waits for that event, delivered by
/// [`saga::SagaOrchestrator::handle_event`], or compensates when it does not come in time).
///
/// ```
/// use dtx::saga::{MemorySagaStore, SagaOrchestrator, SagaStatus, StepContext, StepError, WorkerOptions};
/// use serde::{Deserialize, Serialize};
/// use std::sync::Arc;
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// pub struct Trip { hotel: Option<String>, flight: Option<String>, sold_out: bool }
///
/// #[dtx::saga(name = "BookTrip", max_retries = 0)]
/// impl Trip {
///     #[step(compensate = cancel_hotel)]
///     async fn book_hotel(&mut self, ctx: &StepContext) -> Result<(), StepError> {
///         // A real step calls a service with ctx.idempotency_key().
///         self.hotel = Some(ctx.idempotency_key());
///         Ok(())
///     }
///
///     async fn cancel_hotel(&mut self) -> Result<(), StepError> {
///         self.hotel = None;
///         Ok(())
///     }
///
///     #[step]
///     async fn book_flight(&mut self) -> Result<(), StepError> {
///         if self.sold_out { return Err(StepError::permanent("no seats")) }
///         self.flight = Some("LH 400".into());
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let sagas = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new())).registry().build()?;
/// let worker = sagas.worker(WorkerOptions::default());
///
/// let booked = sagas.start(Trip::default()).await?;
/// let failed = sagas.start(Trip { sold_out: true, ..Trip::default() }).await?;
/// worker.run_until_idle().await?;
///
/// assert_eq!(sagas.status(booked).await?.status, SagaStatus::Completed);
/// let undone = sagas.status(failed).await?;
/// assert_eq!(undone.status, SagaStatus::Compensated);
/// assert_eq!(undone.data["hotel"], serde_json::Value::Null);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::saga;

/// Traces a function: a span, error recording, and duration and error metrics.
///
/// On a `fn` or `async fn`, free or a method. Each call runs inside an info-level `tracing`
/// span named after the function. Unlike `tracing::instrument`, **no argument is recorded
/// unless listed** in `fields(..)`, so tokens and payloads do not leak into traces; a listed
/// argument is recorded with its `Debug` form. When the function returns an `Err`, the span
/// gets `error = true`, `exception.message` (the error's `Display`, or `Debug` if it has no
/// `Display`) and `otel.status_code = "ERROR"`, which `tracing-opentelemetry` maps to the
/// OpenTelemetry status. Every call records the `dtx.function.duration` histogram and every
/// `Err` the `dtx.function.errors` counter, labelled `code.function.name` (see
/// [`telemetry`]; they are no-ops without the `otel` feature). Your crate needs neither
/// `tracing` nor `opentelemetry` as a dependency.
///
/// Options: `name = ".."` (the span and metric name; default: the function's name),
/// `fields(arg, ..)` (arguments to record), `crate = path`.
///
/// Write it as `#[dtx::trace]`: importing it with `use dtx::trace;` next to `use tracing::trace;`
/// is a name clash (E0252), so it is in no prelude.
///
/// ```
/// #[derive(Debug)]
/// pub struct Card { pub number: String }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("card declined")]
/// pub struct Declined;
///
/// // `card` is not recorded: only `order_id` is listed.
/// #[dtx::trace(name = "payments.charge", fields(order_id))]
/// async fn charge(order_id: u64, card: &Card, amount: u64) -> Result<u64, Declined> {
///     if amount == 0 { return Err(Declined) }
///     Ok(amount)
/// }
///
/// #[dtx::trace]
/// fn total(lines: &[u64]) -> u64 {
///     lines.iter().sum()
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let card = Card { number: "4242".into() };
/// assert_eq!(charge(7, &card, 30).await?, 30);
/// assert!(charge(8, &card, 0).await.is_err(), "recorded as an error on the span");
/// assert_eq!(total(&[1, 2, 3]), 6);
/// # Ok::<(), Declined>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::trace;

/// Measures a function: a call counter and a duration histogram, with the labels you list.
///
/// On a `fn` or `async fn`, free or a method. With the feature `otel`, every call records, on
/// OpenTelemetry's global meter:
///
/// - `<name>.calls`, a counter; for a function returning a `Result`, labelled `outcome = "ok"`
///   or `outcome = "error"`;
/// - `<name>.duration`, a histogram in seconds.
///
/// Both carry the constant labels of `labels(..)` and the argument labels of `arg_labels(..)`.
/// The instruments are created on the first call and kept in a `static` of the function, so a
/// call costs an atomic load, a clock read and the two recordings. Without the feature `otel`,
/// nothing is measured and the function runs as written. A call that panics, or an `async fn`
/// whose future is dropped before it finishes, is not recorded.
///
/// Options:
///
/// - `name = ".."`: the metric name, in the characters OpenTelemetry allows (letters, digits,
///   `_`, `.`, `-`, `/`; default: the function's path with `.` for `::`, e.g.
///   `my_service.payments.charge`);
/// - `labels(key = "value", ..)`: constant labels (`service = "payments"`);
/// - `arg_labels(arg, ..)`: arguments whose value labels each call, under the argument's name.
///   Every distinct value is a time series of its own, so an argument must be of a type whose
///   values are a fixed set: one implementing [`telemetry::MetricLabel`] (an enum, `bool`, an
///   `Option` of these, a reference to one). A `String`, a number or an id is a compile error:
///   map it to such an enum first. No argument is a label unless listed;
/// - `crate = path`: where to find `dtx` when it is re-exported under another name.
///
/// `outcome` is reserved for the outcome label.
///
/// With [`#[dtx::trace]`](macro@trace): write `#[dtx::metric]` above `#[dtx::trace]`. The
/// attribute above expands first and the one below wraps the result, so the metric is then
/// recorded inside the function's span. The other order works too: the measured duration then
/// also covers opening and closing the span.
///
/// ```
/// use dtx::telemetry::MetricLabel;
///
/// #[derive(Debug, Clone, Copy)]
/// pub enum Method { Card, Transfer }
///
/// impl MetricLabel for Method {
///     fn metric_label(&self) -> &'static str {
///         match self { Method::Card => "card", Method::Transfer => "transfer" }
///     }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("card declined")]
/// pub struct Declined;
///
/// // `payments.charge.calls{service="payments", method="card", outcome="ok"}` and
/// // `payments.charge.duration{service="payments", method="card"}`; `customer` is no label.
/// #[dtx::metric(name = "payments.charge", labels(service = "payments"), arg_labels(method))]
/// #[dtx::trace(name = "payments.charge")]
/// async fn charge(customer: String, method: Method, amount: u64) -> Result<u64, Declined> {
///     if amount == 0 { return Err(Declined) }
///     Ok(amount)
/// }
///
/// // Named after its path: `<crate>.total.calls` and `<crate>.total.duration`.
/// #[dtx::metric]
/// fn total(lines: &[u64]) -> u64 {
///     lines.iter().sum()
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert_eq!(charge("ada".into(), Method::Card, 30).await?, 30);
/// assert!(charge("ada".into(), Method::Transfer, 0).await.is_err(), "counted as an error");
/// assert_eq!(total(&[1, 2, 3]), 6);
/// # Ok::<(), Declined>(())
/// # }).unwrap();
/// ```
pub use dtx_macros::metric;

#[doc = include_str!("breaker/circuit_breaker.md")]
pub use dtx_macros::circuit_breaker;

#[doc = include_str!("retry/retry.md")]
pub use dtx_macros::retry;
