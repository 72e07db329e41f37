//! Testing aggregates (feature `testing`): [`AggregateTest`], a given/when/then harness that
//! runs a command through the command bus's own handlers.

#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic on broken expectations by design"
)]

use super::{Command, CommandBus, CommandBusBuilder, CommandError};
use crate::store::{ExpectedVersion, GlobalPosition, NewEvent, RecordedEvent, StreamId};
use crate::{Aggregate, DomainEvent, Error, EventMetadata, MemoryEventStore, SharedEventStore};
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// A given/when/then harness for one aggregate instance: given its past events, when a command
/// runs, then these events are stored, or the command fails this way.
///
/// The command runs through a [`CommandBus`] on a fresh in-memory store, so it meets the
/// handlers `#[command_handler]` registered (or those of the builder given to
/// [`AggregateTest::with_bus`]) and the bus's whole path: validation, loading the given events,
/// the handler's decision, the aggregate's invariants, and the append. A failed expectation
/// panics with the expected and the actual events (as their stored type names and JSON data).
///
/// ```standalone_crate
/// use dtx::cqrs::testing::AggregateTest;
/// use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Stocked { pub quantity: u32 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Reserved { pub quantity: u32 }
/// #[derive(Debug, Clone, DomainEvent)]
/// pub enum StockEvent { Stocked(Stocked), Reserved(Reserved) }
///
/// #[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
/// #[aggregate(event = StockEvent)]
/// pub struct Stock { id: Id<Stock>, on_hand: u32, reserved: u32 }
/// impl Apply<Stocked> for Stock {
///     fn apply(&mut self, e: &Stocked) { self.on_hand += e.quantity; }
/// }
/// impl Apply<Reserved> for Stock {
///     fn apply(&mut self, e: &Reserved) { self.reserved += e.quantity; }
/// }
///
/// #[derive(Debug, Clone)]
/// pub struct Reserve { pub stock_id: Id<Stock>, pub quantity: u32 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("only {0} left")]
/// pub struct SoldOut(u32);
///
/// #[command_handler]
/// impl Stock {
///     fn reserve(&self, cmd: &Reserve) -> Result<Reserved, SoldOut> {
///         let left = self.on_hand - self.reserved;
///         if cmd.quantity > left { return Err(SoldOut(left)); }
///         Ok(Reserved { quantity: cmd.quantity })
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let stock_id = Id::<Stock>::new();
/// AggregateTest::<Stock>::new(stock_id)
///     .given([Stocked { quantity: 5 }])
///     .when(Reserve { stock_id, quantity: 3 })
///     .await
///     .then_events([Reserved { quantity: 3 }]);
///
/// let sold_out: SoldOut = AggregateTest::<Stock>::new(stock_id)
///     .given([StockEvent::from(Stocked { quantity: 5 }), Reserved { quantity: 4 }.into()])
///     .when(Reserve { stock_id, quantity: 2 })
///     .await
///     .then_rejected();
/// assert_eq!(sold_out.0, 1);
/// # });
/// ```
pub struct AggregateTest<A: Aggregate> {
    id: A::Id,
    bus: CommandBusBuilder,
    given: Vec<A::Event>,
}

impl<A: Aggregate> fmt::Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateTest")
            .field("aggregate", &A::TYPE)
            .field("id", &self.id)
            .field("given", &self.given.len())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// A harness for the aggregate `id`, with every handler linked into the test binary by
    /// `#[command_handler]` (the bus of [`CommandBus::from_registry`]).
    pub fn new(id: A::Id) -> Self {
        Self::with_bus(id, CommandBus::builder().registry())
    }

    /// A harness whose bus is built from `bus`: its handlers, state, configuration and retry
    /// policy. Its store is replaced by the harness's in-memory store.
    ///
    /// ```
    /// use dtx::cqrs::{CommandBus, testing::AggregateTest};
    /// use dtx::{Aggregate, Apply, DomainEvent, Id};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize)]
    /// pub struct Opened { pub owner: String }
    /// #[derive(Debug, Clone, Serialize, Deserialize)]
    /// pub struct Paid { pub cents: u64 }
    /// #[derive(Debug, Clone, DomainEvent)]
    /// pub enum TabEvent { Opened(Opened), Paid(Paid) }
    ///
    /// #[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
    /// #[aggregate(event = TabEvent)]
    /// pub struct Tab { id: Id<Tab>, paid: u64 }
    /// impl Apply<Opened> for Tab { fn apply(&mut self, _: &Opened) {} }
    /// impl Apply<Paid> for Tab { fn apply(&mut self, e: &Paid) { self.paid += e.cents; } }
    ///
    /// // A command with a handler registered by hand.
    /// pub struct Pay { tab: Id<Tab>, cents: u64 }
    /// impl dtx::cqrs::Command for Pay { type Output = dtx::cqrs::Committed; }
    ///
    /// let tab = Id::<Tab>::new();
    /// let bus = CommandBus::builder().aggregate_handler::<Tab, Pay, _, std::convert::Infallible>(
    ///     |cmd| cmd.tab,
    ///     |_tab, cmd| Ok(vec![Paid { cents: cmd.cents }]),
    /// );
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let committed = AggregateTest::<Tab>::with_bus(tab, bus)
    ///     .given([Opened { owner: "ada".into() }])
    ///     .when(Pay { tab, cents: 450 })
    ///     .await
    ///     .then_events([Paid { cents: 450 }]);
    /// assert_eq!(committed.version, 2);
    /// # });
    /// ```
    pub fn with_bus(id: A::Id, bus: CommandBusBuilder) -> Self {
        Self {
            id,
            bus,
            given: Vec::new(),
        }
    }

    /// The aggregate's id.
    pub fn id(&self) -> &A::Id {
        &self.id
    }

    /// Given: these events are the aggregate's history (stored before the command runs). Call
    /// it again to add more; without it, the aggregate has no events yet.
    #[must_use]
    pub fn given<E: Into<A::Event>>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        self.given.extend(events.into_iter().map(Into::into));
        self
    }

    /// When: the command runs through the bus. The given events are stored first, then the
    /// command is executed as [`CommandBus::execute`] does.
    pub async fn when<C: Command>(self, command: C) -> Then<A, C> {
        let store: SharedEventStore = Arc::new(MemoryEventStore::new());
        let stream = A::stream_id(&self.id).unwrap_or_else(|e| {
            panic!(
                "AggregateTest<{}>: id `{}` makes no stream id: {e}",
                A::TYPE,
                self.id
            )
        });
        let given = self.given.len();
        if !self.given.is_empty() {
            let events = self
                .given
                .iter()
                .map(|event| NewEvent::encode(&stream, event, EventMetadata::default()))
                .collect::<crate::Result<Vec<_>>>()
                .unwrap_or_else(|e| panic!("AggregateTest<{}>: a given event: {e}", A::TYPE));
            store
                .append(&stream, ExpectedVersion::NoStream, events)
                .await
                .unwrap_or_else(|e| {
                    panic!("AggregateTest<{}>: storing the given events: {e}", A::TYPE)
                });
        }
        let bus = self
            .bus
            .store(Arc::clone(&store))
            .build()
            .unwrap_or_else(|e| panic!("AggregateTest<{}>: the bus: {e}", A::TYPE));
        let result = bus.execute(command).await;
        let stored = store
            .read_all(GlobalPosition::START, 100_000)
            .await
            .unwrap_or_else(|e| panic!("AggregateTest<{}>: reading the store: {e}", A::TYPE));
        Then {
            stream,
            given,
            result,
            stored: stored.into_iter().skip(given).collect(),
            _aggregate: std::marker::PhantomData,
        }
    }
}

/// What a command did in an [`AggregateTest`]: its result and the events it stored, with the
/// expectations to check them against.
pub struct Then<A: Aggregate, C: Command> {
    stream: StreamId,
    given: usize,
    result: Result<C::Output, CommandError>,
    stored: Vec<RecordedEvent>,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate, C: Command> fmt::Debug for Then<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("stream", &self.stream)
            .field("error", &self.result.as_ref().err())
            .field("stored", &self.stored.len())
            .finish_non_exhaustive()
    }
}

/// An event as the failure messages show it: `Type {"json":"data"}`.
fn shown(event_type: &str, data: &serde_json::Value) -> String {
    format!("{event_type} {data}")
}

fn list(events: &[String]) -> String {
    if events.is_empty() {
        return "      (none)\n".to_owned();
    }
    let mut out = String::new();
    for (i, event) in events.iter().enumerate() {
        let _ = writeln!(out, "      {}. {event}", i + 1);
    }
    out
}

impl<A: Aggregate, C: Command> Then<A, C> {
    fn command() -> &'static str {
        std::any::type_name::<C>()
    }

    /// The stored events, each with its stream when it is not the aggregate's.
    fn actual(&self) -> Vec<(String, serde_json::Value, Option<&StreamId>)> {
        self.stored
            .iter()
            .map(|e| {
                let data = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
                let elsewhere = (e.stream_id != self.stream).then_some(&e.stream_id);
                (e.event_type.clone(), data, elsewhere)
            })
            .collect()
    }

    fn actual_shown(&self) -> Vec<String> {
        self.actual()
            .iter()
            .map(|(ty, data, elsewhere)| match elsewhere {
                Some(stream) => format!("{} (in stream `{stream}`)", shown(ty, data)),
                None => shown(ty, data),
            })
            .collect()
    }

    /// The command's result.
    pub fn result(&self) -> &Result<C::Output, CommandError> {
        &self.result
    }

    /// The events the command stored, decoded (those of the aggregate's stream).
    pub fn events(&self) -> Vec<A::Event> {
        self.stored
            .iter()
            .filter(|e| e.stream_id == self.stream)
            .map(|e| {
                e.decode::<A::Event>().unwrap_or_else(|err| {
                    panic!("AggregateTest<{}>: a stored event: {err}", A::TYPE)
                })
            })
            .collect()
    }

    /// Then: the command succeeded and stored exactly these events, in this order, in the
    /// aggregate's stream; returns what the command returned. Events are compared by their
    /// stored type name and JSON data, so the event types need no `PartialEq`.
    pub fn then_events<E: Into<A::Event>>(
        self,
        expected: impl IntoIterator<Item = E>,
    ) -> C::Output {
        let expected: Vec<String> = expected
            .into_iter()
            .map(|event| {
                let event: A::Event = event.into();
                let data = event
                    .to_payload()
                    .ok()
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .unwrap_or(serde_json::Value::Null);
                shown(event.event_type(), &data)
            })
            .collect();
        let actual = self.actual_shown();
        let output = match self.result {
            Ok(output) => output,
            Err(error) => panic!(
                "AggregateTest<{}>: `{}` should have stored events, but it failed: {error}\n  \
                 error: {error:?}\n  expected events:\n{}",
                A::TYPE,
                Self::command(),
                list(&expected),
            ),
        };
        assert!(
            expected == actual,
            "AggregateTest<{}>: `{}` stored other events than expected (after {} given)\n  \
             expected:\n{}  actual:\n{}",
            A::TYPE,
            Self::command(),
            self.given,
            list(&expected),
            list(&actual),
        );
        output
    }

    /// Then: the command succeeded and stored no event; returns what it returned.
    pub fn then_no_events(self) -> C::Output {
        self.then_events(std::iter::empty::<A::Event>())
    }

    /// Then: the command failed with an error that `matcher` accepts, and stored nothing;
    /// returns the error.
    ///
    /// ```no_run
    /// # use dtx::cqrs::{CommandError, testing::Then};
    /// # fn check<A: dtx::Aggregate, C: dtx::cqrs::Command>(then: Then<A, C>) {
    /// then.then_error(|e| matches!(e, CommandError::NotFound { .. }));
    /// # }
    /// ```
    pub fn then_error(self, matcher: impl FnOnce(&CommandError) -> bool) -> CommandError {
        let error = self.failed("an error");
        assert!(
            matcher(&error),
            "AggregateTest<{}>: `{}` failed, but not with the expected error: {error}\n  error: \
             {error:?}",
            A::TYPE,
            Self::command(),
        );
        error
    }

    /// Then: the handler rejected the command with its own error of type `E`
    /// ([`CommandError::Domain`]) and nothing was stored; returns that error.
    pub fn then_rejected<E: std::error::Error + Send + Sync + 'static>(self) -> E {
        let error = self.failed(&format!(
            "a rejection with `{}`",
            std::any::type_name::<E>()
        ));
        let mismatch = |error: &CommandError| -> ! {
            panic!(
                "AggregateTest<{}>: `{}` should have been rejected with `{}`, but failed with: \
                 {error}\n  error: {error:?}",
                A::TYPE,
                Self::command(),
                std::any::type_name::<E>(),
            )
        };
        if error.domain::<E>().is_none() {
            mismatch(&error);
        }
        match error {
            CommandError::Domain { source, .. } => *source
                .downcast::<E>()
                .unwrap_or_else(|_| unreachable!("checked by `domain` above")),
            other => mismatch(&other),
        }
    }

    /// Then: the command's events would have broken an invariant of the aggregate, so they
    /// were refused and nothing was stored; returns the violation's message.
    pub fn then_invariant_violated(self) -> String {
        match self.failed("an invariant violation") {
            CommandError::Dtx(Error::Invariant { violation, .. }) => violation.0,
            error => panic!(
                "AggregateTest<{}>: `{}` should have broken an invariant, but failed with: \
                 {error}\n  error: {error:?}",
                A::TYPE,
                Self::command(),
            ),
        }
    }

    /// The error of a command that had to fail and store nothing.
    fn failed(self, what: &str) -> CommandError {
        let actual = self.actual_shown();
        match self.result {
            Ok(_) => panic!(
                "AggregateTest<{}>: `{}` should have failed with {what}, but it succeeded\n  \
                 stored:\n{}",
                A::TYPE,
                Self::command(),
                list(&actual),
            ),
            Err(error) => {
                assert!(
                    actual.is_empty(),
                    "AggregateTest<{}>: `{}` failed ({error}) but stored events:\n{}",
                    A::TYPE,
                    Self::command(),
                    list(&actual),
                );
                error
            }
        }
    }
}
