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

/// Every linked registration of a kind, sorted (inventory's order differs between builds).
pub(crate) fn sorted<T: inventory::Collect>(
    key: impl Fn(&T) -> (&'static str, Location),
) -> Vec<&'static T> {
    let mut all: Vec<&'static T> = inventory::iter::<T>.into_iter().collect();
    all.sort_by_key(|r| key(r));
    all
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
pub(crate) fn check<H>(
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
