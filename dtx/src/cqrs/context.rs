//! What a handler receives besides its command: metadata and shared state.

use super::command::CommandError;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Identity and causality of one command.
///
/// Every event a command produces carries its `correlation_id` and, as causation id, the
/// command's `command_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMetadata {
    /// This command's id (UUID v7).
    pub command_id: Uuid,
    /// The business operation this command belongs to; minted from the command id when the
    /// caller has none.
    pub correlation_id: Uuid,
    /// What caused this command (an event or another command), if anything.
    pub causation_id: Option<Uuid>,
    /// The W3C `traceparent` of the caller.
    pub traceparent: Option<String>,
}

impl Default for CommandMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandMetadata {
    /// A new command id that also starts a new correlation; the `traceparent` is the current
    /// span's (with feature `otel`, see [`crate::telemetry`]).
    pub fn new() -> Self {
        let command_id = Uuid::now_v7();
        Self {
            command_id,
            correlation_id: command_id,
            causation_id: None,
            traceparent: crate::telemetry::current_traceparent(),
        }
    }

    /// A new command id within an existing correlation.
    pub fn correlated(correlation_id: Uuid) -> Self {
        Self {
            correlation_id,
            ..Self::new()
        }
    }

    /// Sets what caused this command.
    #[must_use]
    pub fn caused_by(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Sets the W3C `traceparent`.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The metadata of a follow-up command caused by this one.
    #[must_use]
    pub fn follow_up(&self) -> Self {
        Self {
            causation_id: Some(self.command_id),
            traceparent: crate::telemetry::current_traceparent()
                .or_else(|| self.traceparent.clone()),
            ..Self::correlated(self.correlation_id)
        }
    }

    /// The metadata stored with the events this command produces: the `traceparent` is the
    /// current span's (the handling span, with feature `otel`), else the command's.
    pub fn event_metadata(&self) -> crate::EventMetadata {
        crate::EventMetadata {
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.command_id),
            traceparent: crate::telemetry::current_traceparent()
                .or_else(|| self.traceparent.clone()),
        }
    }
}

/// Shared application state, extracted by type like axum's `State`.
///
/// Register it with [`super::CommandBusBuilder::state`] (or the query bus builder); a handler
/// takes it as an argument `State(db): State<Db>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct State<T>(pub T);

/// Type-keyed shared state.
#[derive(Clone, Default)]
pub(crate) struct StateMap(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.0).insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.0.contains_key(&id)
    }

    pub(crate) fn get<T: Clone + 'static>(&self) -> Option<T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }
}

impl std::fmt::Debug for StateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMap")
            .field("entries", &self.0.len())
            .finish()
    }
}

/// What a command handler can see of its dispatch: the metadata, shared state, and the bus to
/// send follow-up commands with.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub(crate) metadata: CommandMetadata,
    pub(crate) state: StateMap,
    pub(crate) bus: Option<super::CommandBus>,
}

impl CommandContext {
    /// The command's metadata.
    pub fn metadata(&self) -> &CommandMetadata {
        &self.metadata
    }

    /// Shared state of type `T`, if the bus was given one.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.state.get()
    }

    /// Executes a follow-up command, caused by this one and in the same correlation.
    pub async fn execute<C: super::Command>(&self, command: C) -> Result<C::Output, CommandError> {
        match &self.bus {
            Some(bus) => bus.execute_with(command, self.metadata.follow_up()).await,
            None => Err(CommandError::NoHandler {
                command: std::any::type_name::<C>(),
            }),
        }
    }

    /// Extracts `State<T>` for a generated handler; the bus checked at construction that it
    /// exists.
    #[doc(hidden)]
    pub fn __extract<T: Clone + Send + Sync + 'static>(&self) -> Result<State<T>, CommandError> {
        self.state::<T>()
            .map(State)
            .ok_or(CommandError::MissingState {
                state: std::any::type_name::<T>(),
            })
    }
}
