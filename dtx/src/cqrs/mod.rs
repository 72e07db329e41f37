//! Command and query buses with link-time handler registration.
//!
//! Handlers are declared with `#[command_handler]` and `#[query_handler]`, which register them
//! with [`inventory`](https://docs.rs/inventory) when the program is linked;
//! [`CommandBus::from_registry`] and [`QueryBus::from_registry`] collect every linked handler.
//! [`CommandBus::builder`] and [`QueryBus::builder`] register handlers by hand.
//!
//! # The link rule
//!
//! A crate's handlers exist only if the final binary links that crate. A library that declares
//! handlers but is never referenced from the binary (no `use`, no function called) is not
//! linked, and its handlers are silently absent. Reference such crates (`use my_handlers as _;`
//! in `main.rs` or in an integration test), and call [`CommandBusBuilder::require`] for the
//! commands the application cannot run without, so a missing handler fails at start-up.

pub(crate) mod aggregate;
pub(crate) mod command;
pub(crate) mod context;
pub(crate) mod handler;
pub(crate) mod query;
mod registry;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;

pub use aggregate::IntoEvents;
pub use command::{
    BusError, Command, CommandBus, CommandBusBuilder, CommandError, Committed, RetryPolicy,
};
pub use context::{CommandContext, CommandMetadata, State};
pub use query::{
    CachePolicy, Query, QueryBus, QueryBusBuilder, QueryContext, QueryError, QueryOptions,
};
pub use registry::{CommandRegistration, Location, QueryRegistration};
pub use validate::{RuleViolation, Validate, ValidationErrors, Validator};
