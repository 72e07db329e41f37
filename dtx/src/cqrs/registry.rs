//! Link-time registrations submitted by `#[command_handler]` and `#[query_handler]`.

use super::BusError;
use super::context::StateMap;
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;

/// Where a handler is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Source file.
    pub file: &'static str,
    /// Line.
    pub line: u32,
    /// The handler's path (`crate::module::function` or `Type::method`).
    pub handler: &'static str,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.handler, self.file, self.line)
    }
}

/// A command handler registered at link time. Submitted by `#[command_handler]`.
#[derive(Debug)]
pub struct CommandRegistration {
    /// The command type.
    pub command: fn() -> TypeId,
    /// The command type's name.
    pub command_name: fn() -> &'static str,
    /// Where the handler is declared.
    pub location: Location,
    /// The state types the handler extracts, checked at bus construction.
    pub states: fn() -> Vec<(TypeId, &'static str)>,
    /// Builds the handler.
    pub handler: fn() -> super::command::BoxedCommandHandler,
}

/// A query handler registered at link time. Submitted by `#[query_handler]`.
#[derive(Debug)]
pub struct QueryRegistration {
    /// The query type.
    pub query: fn() -> TypeId,
    /// The query type's name.
    pub query_name: fn() -> &'static str,
    /// Where the handler is declared.
    pub location: Location,
    /// The state types the handler extracts, checked at bus construction.
    pub states: fn() -> Vec<(TypeId, &'static str)>,
    /// Builds the handler.
    pub handler: fn() -> super::query::BoxedQueryHandler,
}

inventory::collect!(CommandRegistration);
inventory::collect!(QueryRegistration);

/// A link-time registration of either bus.
pub(crate) trait Registration: inventory::Collect {
    /// The bus's boxed handler type.
    type Handler;
    /// The message type's name and the handler's location: the sort key.
    fn key(&self) -> (&'static str, Location);
    /// The registration, ready for [`HandlerSet::push`].
    fn pending(&self) -> Pending<Self::Handler>;
}

impl Registration for CommandRegistration {
    type Handler = super::command::BoxedCommandHandler;
    fn key(&self) -> (&'static str, Location) {
        ((self.command_name)(), self.location)
    }
    fn pending(&self) -> Pending<Self::Handler> {
        let name = (self.command_name)();
        (
            (self.command)(),
            name,
            self.location,
            (self.states)(),
            (self.handler)(),
        )
    }
}

impl Registration for QueryRegistration {
    type Handler = super::query::BoxedQueryHandler;
    fn key(&self) -> (&'static str, Location) {
        ((self.query_name)(), self.location)
    }
    fn pending(&self) -> Pending<Self::Handler> {
        let name = (self.query_name)();
        (
            (self.query)(),
            name,
            self.location,
            (self.states)(),
            (self.handler)(),
        )
    }
}

/// The core both bus builders share: shared state, handler registrations, required messages,
/// and the rules checked when the bus is built.
pub(crate) struct HandlerSet<H> {
    pub(crate) state: StateMap,
    registrations: Vec<Pending<H>>,
    required: Vec<(TypeId, &'static str)>,
}

impl<H> Default for HandlerSet<H> {
    fn default() -> Self {
        Self {
            state: StateMap::default(),
            registrations: Vec::new(),
            required: Vec::new(),
        }
    }
}

impl<H> HandlerSet<H> {
    /// How many handlers were registered.
    pub(crate) fn len(&self) -> usize {
        self.registrations.len()
    }

    /// Adds every linked registration of `R`, sorted (inventory's order differs between
    /// builds).
    pub(crate) fn registry<R: Registration<Handler = H>>(&mut self) {
        let mut all: Vec<&'static R> = inventory::iter::<R>.into_iter().collect();
        all.sort_by_key(|r| r.key());
        self.registrations
            .extend(all.into_iter().map(Registration::pending));
    }

    /// Adds a handler of message type `M` registered by hand at `location`.
    pub(crate) fn push<M: 'static>(&mut self, location: Location, handler: H) {
        self.registrations.push((
            TypeId::of::<M>(),
            std::any::type_name::<M>(),
            location,
            Vec::new(),
            handler,
        ));
    }

    /// Requires a handler of message type `M`.
    pub(crate) fn require<M: 'static>(&mut self) {
        self.required
            .push((TypeId::of::<M>(), std::any::type_name::<M>()));
    }

    /// Checks the rules ([`check`]) and returns the handlers by message type, with the state.
    pub(crate) fn build(self) -> Result<(HashMap<TypeId, Entry<H>>, StateMap), BusError> {
        let handlers = check(self.registrations, &self.state, &self.required)?;
        Ok((handlers, self.state))
    }
}

/// Where a handler registered by hand is: the caller of the builder method, and the handler's
/// type.
#[track_caller]
pub(crate) fn manual_location<F>() -> Location {
    let caller = std::panic::Location::caller();
    Location {
        file: caller.file(),
        line: caller.line(),
        handler: std::any::type_name::<F>(),
    }
}

/// A handler registration waiting for `build()`: message type, name, location, state types,
/// handler.
pub(crate) type Pending<H> = (
    TypeId,
    &'static str,
    Location,
    Vec<(TypeId, &'static str)>,
    H,
);

/// A handler a bus accepted.
pub(crate) struct Entry<H> {
    /// The message type's name.
    pub(crate) message: &'static str,
    /// Where the handler is declared.
    pub(crate) location: Location,
    /// The handler.
    pub(crate) handler: H,
}

/// The rules of both buses: one handler per message type, the state each handler extracts
/// given, every required message handled.
fn check<H>(
    registrations: Vec<Pending<H>>,
    state: &StateMap,
    required: &[(TypeId, &'static str)],
) -> Result<HashMap<TypeId, Entry<H>>, BusError> {
    let mut handlers: HashMap<TypeId, Entry<H>> = HashMap::new();
    for (id, message, location, states, handler) in registrations {
        if let Some(first) = handlers.get(&id) {
            return Err(BusError::DuplicateHandler {
                message,
                first: first.location,
                second: location,
            });
        }
        if let Some((_, missing)) = states.iter().find(|(id, _)| !state.contains(*id)) {
            return Err(BusError::MissingState {
                handler: location,
                state: missing,
            });
        }
        handlers.insert(
            id,
            Entry {
                message,
                location,
                handler,
            },
        );
    }
    if let Some((_, message)) = required.iter().find(|(id, _)| !handlers.contains_key(id)) {
        return Err(BusError::MissingHandler { message });
    }
    Ok(handlers)
}
