//! The command bus: dispatch by command type, the aggregate command path with optimistic
//! retries, and the errors a caller can act on.

use super::context::{CommandContext, CommandMetadata, StateMap};
use super::registry::{self, CommandRegistration, HandlerSet, Location};
use crate::error::BoxError;
use crate::uow::UnitOfWork;
use crate::{Aggregate, DtxConfig, Error, MemoryEventStore, SharedEventStore, StreamId};
use async_trait::async_trait;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Why a command was not executed (or its outcome cannot be given to the caller).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No handler is registered for the command type.
    #[error("no handler for command `{command}`")]
    NoHandler {
        /// The command type.
        command: &'static str,
    },
    /// The command broke its validation rules; nothing was stored.
    #[error("command `{command}` is invalid: {errors}")]
    Invalid {
        /// The command type.
        command: &'static str,
        /// Every broken rule.
        errors: super::ValidationErrors,
    },
    /// The handler rejected the command with its own error; nothing was stored.
    #[error("command `{command}` rejected: {source}")]
    Domain {
        /// The command type.
        command: &'static str,
        /// The handler's error; see [`CommandError::domain`].
        source: BoxError,
    },
    /// The aggregate the command targets does not exist.
    #[error("{aggregate} `{id}` does not exist")]
    NotFound {
        /// The aggregate type.
        aggregate: &'static str,
        /// Its id.
        id: String,
    },
    /// A creating command targets an aggregate that exists already.
    #[error("{aggregate} `{id}` exists already")]
    AlreadyExists {
        /// The aggregate type.
        aggregate: &'static str,
        /// Its id.
        id: String,
    },
    /// Every attempt lost the race for the aggregate's next version.
    #[error("command `{command}` still conflicted after {attempts} attempts: {source}")]
    Conflict {
        /// The command type.
        command: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        source: Error,
    },
    /// The event store or an aggregate rule failed (invariant, decode, storage, outcome unknown).
    #[error(transparent)]
    Dtx(#[from] Error),
    /// The handler needs shared state the bus was not given.
    #[error("the bus has no state of type `{state}`")]
    MissingState {
        /// The state type.
        state: &'static str,
    },
}

impl CommandError {
    /// The handler's own error, if it is of type `E`.
    pub fn domain<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Domain { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

/// A command type and what executing it returns.
///
/// `#[command_handler]` implements it for every command it handles (the output of an
/// aggregate handler is [`Committed`], that of a function handler the `Ok` type it returns),
/// so [`CommandBus::execute`] returns the handler's output type, checked at compile time. For a
/// handler registered by hand with [`CommandBusBuilder::handler`], implement it yourself:
///
/// ```
/// struct Greet(String);
/// impl dtx::cqrs::Command for Greet {
///     type Output = String;
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command: no `#[command_handler]` handles it",
    label = "no handler declares what executing `{Self}` returns",
    note = "write a `#[command_handler]` for `{Self}`, or for a handler registered by hand `impl dtx::cqrs::Command for {Self} {{ type Output = ..; }}`"
)]
pub trait Command: Send + 'static {
    /// What the command's handler returns on success.
    type Output: Send + 'static;
}

/// What an aggregate command stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The stream's version after the command.
    pub version: u64,
    /// How many events the command appended (0 when it decided nothing should change).
    pub events: usize,
    /// How many attempts it took (1 without a conflict).
    pub attempts: u32,
}

/// A problem with the set of handlers, found when the bus is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Two handlers for one message type.
    #[error("two handlers for `{message}`: {first} and {second}; remove one")]
    DuplicateHandler {
        /// The command or query type.
        message: &'static str,
        /// The first handler.
        first: Location,
        /// The second handler.
        second: Location,
    },
    /// A required handler is not registered (not written, or its crate is not linked).
    #[error(
        "no handler for `{message}`; is the crate that declares it linked into this binary (`use my_handlers as _;`)?"
    )]
    MissingHandler {
        /// The command or query type.
        message: &'static str,
    },
    /// A handler extracts state the bus was not given.
    #[error(
        "{handler} takes `State<{state}>`, but the bus has no such state; add `.state(..)` to the builder"
    )]
    MissingState {
        /// The handler.
        handler: Location,
        /// The state type.
        state: &'static str,
    },
}

/// Retries of an aggregate command that lost a version race: exponential backoff with full
/// jitter, bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// The first backoff.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 30,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`: a [`crate::Backoff`] with full jitter, a random
    /// duration up to `min(max_delay, base_delay * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::Backoff::new(self.base_delay, self.max_delay, crate::Jitter::Full).delay(attempt)
    }
}

/// What a handler runs with besides its command.
#[doc(hidden)]
pub struct Env {
    pub(crate) store: SharedEventStore,
    pub(crate) config: DtxConfig,
    pub(crate) retry: RetryPolicy,
    /// The last state and version this bus committed for each aggregate stream: a command's
    /// first attempt decides from it without reading the store. A stale entry (another writer
    /// moved the stream) shows up as a version conflict, and the retry reloads from the store.
    pub(crate) states: Option<moka::sync::Cache<StreamId, Arc<dyn Any + Send + Sync>>>,
}

/// A type-erased command handler; built by the macros and the builder.
#[doc(hidden)]
#[async_trait]
pub trait ErasedCommandHandler: Send + Sync + 'static {
    async fn handle(
        &self,
        command: Box<dyn Any + Send>,
        ctx: CommandContext,
        env: &Env,
        uow: Option<&mut dyn UnitOfWork>,
    ) -> Result<Box<dyn Any + Send>, CommandError>;
}

/// A boxed [`ErasedCommandHandler`].
#[doc(hidden)]
pub type BoxedCommandHandler = Box<dyn ErasedCommandHandler>;

struct Inner {
    handlers: HashMap<TypeId, registry::Entry<BoxedCommandHandler>>,
    state: StateMap,
    env: Env,
}

/// Dispatches commands to their handlers.
///
/// Cheap to clone; clones share handlers, store and state.
///
/// ```
/// use dtx::cqrs::{CommandBus, CommandContext};
///
/// #[derive(Debug)]
/// struct Greet(String);
/// impl dtx::cqrs::Command for Greet {
///     type Output = String;
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = CommandBus::builder()
///     .handler(|cmd: Greet, _ctx: CommandContext| async move {
///         Ok::<_, std::io::Error>(format!("hello {}", cmd.0))
///     })
///     .build()?;
/// let greeting: String = bus.execute(Greet("dtx".into())).await?;
/// assert_eq!(greeting, "hello dtx");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct CommandBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&str> = self.inner.handlers.values().map(|e| e.message).collect();
        handlers.sort_unstable();
        f.debug_struct("CommandBus")
            .field("handlers", &handlers)
            .finish_non_exhaustive()
    }
}

impl CommandBus {
    /// A builder: store, configuration, state, handlers.
    pub fn builder() -> CommandBusBuilder {
        CommandBusBuilder::default()
    }

    /// A bus with every linked `#[command_handler]`, on the in-memory store.
    pub fn from_registry() -> Result<Self, BusError> {
        Self::builder().registry().build()
    }

    /// Whether a handler for `C` is registered.
    pub fn handles<C: 'static>(&self) -> bool {
        self.inner.handlers.contains_key(&TypeId::of::<C>())
    }

    /// Executes a command with fresh metadata (a new command id and correlation); returns what
    /// its handler returns ([`Command::Output`]).
    pub async fn execute<C: Command>(&self, command: C) -> Result<C::Output, CommandError> {
        self.dispatch(command, CommandMetadata::new(), None).await
    }

    /// Executes a command with the caller's metadata (correlation, causation, traceparent).
    pub async fn execute_with<C: Command>(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> Result<C::Output, CommandError> {
        self.dispatch(command, metadata, None).await
    }

    /// Executes a command as part of a unit of work: an aggregate command's events (and
    /// snapshot) commit with the unit of work's other writes, or not at all.
    ///
    /// It makes one attempt: a version conflict is [`CommandError::Conflict`] (or
    /// [`CommandError::AlreadyExists`] for a creating command) and the unit of work must be
    /// rolled back and run again, because a failed write may have aborted its transaction.
    /// The aggregate is loaded as the unit of work sees it, with what it saved before.
    /// A function handler runs as with [`CommandBus::execute`]: what it writes through its own
    /// state does not join the unit of work.
    pub async fn execute_in<C: Command>(
        &self,
        uow: &mut dyn UnitOfWork,
        command: C,
    ) -> Result<C::Output, CommandError> {
        self.dispatch(command, CommandMetadata::new(), Some(uow))
            .await
    }

    /// [`CommandBus::execute_in`] with the caller's metadata.
    pub async fn execute_in_with<C: Command>(
        &self,
        uow: &mut dyn UnitOfWork,
        command: C,
        metadata: CommandMetadata,
    ) -> Result<C::Output, CommandError> {
        self.dispatch(command, metadata, Some(uow)).await
    }

    async fn dispatch<C: Command>(
        &self,
        command: C,
        metadata: CommandMetadata,
        uow: Option<&mut dyn UnitOfWork>,
    ) -> Result<C::Output, CommandError> {
        let name = std::any::type_name::<C>();
        let Some(entry) = self.inner.handlers.get(&TypeId::of::<C>()) else {
            return Err(CommandError::NoHandler { command: name });
        };
        let span = tracing::info_span!(
            "dtx.command",
            command = entry.message,
            command_id = %metadata.command_id,
            correlation_id = %metadata.correlation_id,
            outcome = tracing::field::Empty,
        );
        crate::telemetry::set_parent(&span, metadata.traceparent.as_deref());
        let ctx = CommandContext {
            metadata,
            state: self.inner.state.clone(),
            bus: Some(self.clone()),
        };
        let started = std::time::Instant::now();
        let result = entry
            .handler
            .handle(Box::new(command), ctx, &self.inner.env, uow)
            .instrument(span.clone())
            .await;
        let outcome = outcome(&result);
        span.record("outcome", outcome);
        crate::telemetry::record_command(
            entry.message,
            started.elapsed(),
            (outcome != "ok").then_some(outcome),
        );
        let output = result?;
        // Registration ties a handler to `C::Output` (the macros implement `Command` beside
        // the handler; the builder requires `C: Command<Output = O>`).
        Ok(*output
            .downcast::<C::Output>()
            .unwrap_or_else(|_| unreachable!("the handler of `{name}` returns `C::Output`")))
    }
}

fn outcome<T>(result: &Result<T, CommandError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::Invalid { .. }) => "invalid",
        Err(CommandError::Domain { .. }) => "rejected",
        Err(CommandError::Conflict { .. }) => "conflict",
        Err(CommandError::NotFound { .. } | CommandError::AlreadyExists { .. }) => "not_applicable",
        Err(_) => "error",
    }
}

/// Builds a [`CommandBus`]; see [`CommandBus::builder`].
pub struct CommandBusBuilder {
    store: Option<SharedEventStore>,
    config: DtxConfig,
    retry: RetryPolicy,
    state_cache: u64,
    handlers: HandlerSet<BoxedCommandHandler>,
}

impl fmt::Debug for CommandBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBusBuilder")
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl Default for CommandBusBuilder {
    fn default() -> Self {
        Self {
            store: None,
            config: DtxConfig::default(),
            retry: RetryPolicy::default(),
            state_cache: 10_000,
            handlers: HandlerSet::default(),
        }
    }
}

impl CommandBusBuilder {
    /// How many aggregates' latest states the bus keeps (default 10 000; 0 turns it off).
    ///
    /// With it, a command decides from the state this bus last committed and appends expecting
    /// that version: one round trip instead of a read and a write. When another writer moved
    /// the stream in between, the append is a version conflict and the retry reloads from the
    /// store, so the cache never changes what is decided, only how fast.
    #[must_use]
    pub fn cache_states(mut self, aggregates: u64) -> Self {
        self.state_cache = aggregates;
        self
    }

    /// The event store aggregate commands load from and append to (default: a fresh
    /// [`MemoryEventStore`]).
    #[must_use]
    pub fn store(mut self, store: SharedEventStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The configuration (snapshot frequency).
    #[must_use]
    pub fn config(mut self, config: DtxConfig) -> Self {
        self.config = config;
        self
    }

    /// How aggregate commands retry after a version conflict.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Shared state handlers extract as `State<T>`.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.handlers.state.insert(state);
        self
    }

    /// Adds every handler linked into this binary by `#[command_handler]`.
    #[must_use]
    pub fn registry(mut self) -> Self {
        self.handlers.registry::<CommandRegistration>();
        self
    }

    /// Registers an async function handler by hand: it takes the command and the context and
    /// returns `Result<Output, E>`.
    #[must_use]
    #[track_caller]
    pub fn handler<C, O, E, F, Fut>(mut self, handler: F) -> Self
    where
        C: Command<Output = O>,
        O: Send + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(C, CommandContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<O, E>> + Send + 'static,
    {
        let location = registry::manual_location::<F>();
        let handler = super::handler::command_fn(move |cmd: C, ctx: CommandContext| {
            let fut = handler(cmd, ctx);
            async move {
                fut.await.map_err(|e| CommandError::Domain {
                    command: std::any::type_name::<C>(),
                    source: e.into(),
                })
            }
        });
        self.handlers.push::<C>(location, handler);
        self
    }

    /// Registers an aggregate command handler by hand: `target` names the aggregate the command
    /// is for, `decide` turns the current state and the command into events (or a domain error).
    /// (Hand-registered handlers do not run [`super::Validate`]; call it in `decide`.)
    #[must_use]
    #[track_caller]
    pub fn aggregate_handler<A, C, T, E>(
        mut self,
        target: fn(&C) -> A::Id,
        decide: fn(&A, &C) -> Result<T, E>,
    ) -> Self
    where
        A: Aggregate,
        C: Command<Output = Committed> + Sync,
        T: super::IntoEvents<A::Event> + 'static,
        E: Into<BoxError> + 'static,
    {
        let caller = std::panic::Location::caller();
        let location = Location {
            file: caller.file(),
            line: caller.line(),
            handler: std::any::type_name::<A>(),
        };
        let handler = super::handler::aggregate_update::<A, C, _>(
            target,
            |_| Ok(()),
            move |state, cmd, _ctx| super::handler::decided::<A, C, _>(decide(state, cmd)),
        );
        self.handlers.push::<C>(location, handler);
        self
    }

    /// Fails [`CommandBusBuilder::build`] unless a handler for `C` is registered.
    #[must_use]
    pub fn require<C: 'static>(mut self) -> Self {
        self.handlers.require::<C>();
        self
    }

    /// Checks the handlers (no duplicates, required ones present, their state available) and
    /// builds the bus.
    pub fn build(self) -> Result<CommandBus, BusError> {
        let (handlers, state) = self.handlers.build()?;
        Ok(CommandBus {
            inner: Arc::new(Inner {
                handlers,
                state,
                env: Env {
                    store: self
                        .store
                        .unwrap_or_else(|| Arc::new(MemoryEventStore::new())),
                    config: self.config,
                    retry: self.retry,
                    states: (self.state_cache > 0).then(|| {
                        moka::sync::Cache::builder()
                            .max_capacity(self.state_cache)
                            .build()
                    }),
                },
            }),
        })
    }
}
