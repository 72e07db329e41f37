//! The read side: projections and subscriptions that follow the gap-free global feed.
//!
//! A **projection** builds a read model from events. Declare one with
//! [`#[projection]`](macro@crate::projection) on an `impl` block, one method per event payload type
//! it handles, and run it with a [`ProjectionRunner`]: the runner reads the feed from the
//! projection's checkpoint (only the event types it handles, filtered by the store), calls the
//! handlers, and advances the checkpoint **in the same unit of work as the handlers' writes**.
//! On PostgreSQL that is one transaction: each event's effect on a read model in the same
//! database happens exactly once, with no gap tracking, because the feed never yields an
//! event behind a position it has already yielded.
//!
//! A **subscription** (`#[projection(subscription)]`) has effects that leave the database (an
//! HTTP call, a cache): its handlers get no unit of work, run at least once, and receive the
//! event id ([`RecordedEvent::event_id`]) to use as an idempotency key.
//!
//! Failures stop only the projection that failed, visibly: a handler error is retried with
//! backoff, then the checkpoint's status becomes [`ProjectionStatus::Failed`] with the event's
//! position and the error, until an operator [`skips`](CheckpointStore::skip) it (recorded) or
//! a fixed build resumes it ([`CheckpointStore::resume`]).

mod checkpoint;
mod memory;
mod runner;

pub use checkpoint::{
    Advance, Checkpoint, CheckpointKey, CheckpointStore, Failure, Lease, ProjectionStatus,
    SharedCheckpointStore, SkipRecord,
};
pub use memory::MemoryCheckpointStore;
pub use runner::{ProjectionRunner, RunnerConfig, RunnerHandle, partition_of};

use crate::cqrs::QueryBus;
use crate::error::{BoxError, Error, Result};
use crate::event::DecodeError;
use crate::store::RecordedEvent;
use crate::uow::{BoxFuture, UnitOfWork};
use serde_json::value::RawValue;
use std::fmt;

/// A payload type stored under one event type name: each struct a variant of a
/// `#[derive(DomainEvent)]` enum wraps. Projections name the payload types they handle.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event payload",
    label = "expected a struct that a variant of a `#[derive(dtx::DomainEvent)]` enum wraps",
    note = "a projection or a consumer handles the payload structs of a domain event enum: `#[derive(DomainEvent)] enum OrderEvent {{ Placed(OrderPlaced) }}` makes `OrderPlaced` one"
)]
pub trait Event: Sized + Send + Sync + 'static {
    /// The name it is stored under.
    const EVENT_TYPE: &'static str;
    /// The schema version this build writes and reads (older stored versions are upcast).
    const SCHEMA_VERSION: u32;
    /// Every name it decodes from: [`Event::EVENT_TYPE`] first, then the names it was stored
    /// under before a rename (`#[event(alias = "..")]`). Projections and consumers receive
    /// events stored under any of them.
    const NAMES: &'static [&'static str] = &[Self::EVENT_TYPE];

    /// Decodes a payload stored under one of its [`NAMES`](Event::NAMES) at `schema_version`,
    /// upcasting an older version.
    fn decode(schema_version: u32, data: &str) -> std::result::Result<Self, DecodeError>;

    /// Encodes the payload at [`Event::SCHEMA_VERSION`]: how a handler that takes the
    /// [`RecordedEvent`] or the inbound message of an upcast event sees it in its current form.
    /// `None` (the default of a hand-written impl): the handler sees the event as stored.
    fn encode(&self) -> Option<std::result::Result<Box<RawValue>, serde_json::Error>> {
        None
    }

    /// Decodes `event`'s payload; the error names its stream and version.
    fn from_recorded(event: &RecordedEvent) -> Result<Self> {
        Self::decode(event.schema_version, &event.data).map_err(|source| Error::Decode {
            stream: event.stream_id.clone(),
            version: event.version,
            source,
        })
    }
}

/// Whether a projection's effects stay in the database (exactly once) or leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionKind {
    /// A read model: the handlers write through the unit of work the checkpoint commits in.
    ReadModel,
    /// A subscription: no unit of work; at least once, keyed by the event id.
    Subscription,
}

/// What a handler's failure is, as the runner sees it.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The stored event could not be decoded or validated: retrying cannot help, the
    /// projection stops at once with the error.
    #[error(transparent)]
    Decode(Error),
    /// The handler returned an error (retried with backoff, then the projection stops).
    #[error("{0}")]
    Failed(BoxError),
}

impl HandlerError {
    /// A handler's own error.
    pub fn failed(error: impl Into<BoxError>) -> Self {
        Self::Failed(error.into())
    }
}

/// What a handler asks to happen after its unit of work commits: query cache entries its
/// writes made stale. Take `&mut Invalidations` as a handler parameter.
#[derive(Default)]
pub struct Invalidations {
    pending: Vec<Invalidation>,
}

/// One invalidation asked of a [`QueryBus`].
type Invalidation = Box<dyn FnOnce(&QueryBus) + Send>;

impl fmt::Debug for Invalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidations")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Invalidations {
    /// Drops the cached result of `query` once the unit of work has committed.
    pub fn query<Q: Send + Sync + 'static>(&mut self, query: Q) {
        self.pending
            .push(Box::new(move |bus: &QueryBus| bus.invalidate(&query)));
    }

    /// Drops every cached result of queries of type `Q` once the unit of work has committed.
    pub fn all<Q: 'static>(&mut self) {
        self.pending
            .push(Box::new(|bus: &QueryBus| bus.invalidate_all::<Q>()));
    }

    /// Whether nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Applies what was asked to `bus`.
    pub(crate) fn apply(self, bus: &QueryBus) {
        for invalidate in self.pending {
            invalidate(bus);
        }
    }
}

/// A projection or subscription; implemented by [`#[projection]`](macro@crate::projection).
pub trait Projection: Send + Sync + 'static {
    /// Its name: the key of its checkpoint, unique among the projections of a service.
    const NAME: &'static str;
    /// Its version: bumping it rebuilds the read model into a new checkpoint, from the start.
    const VERSION: u32;
    /// Read model or subscription.
    const KIND: ProjectionKind;

    /// The event types it handles: the store sends it nothing else.
    fn event_types() -> &'static [&'static str];

    /// Applies one event. `uow` is `Some` for a read model (its writes commit with the
    /// checkpoint), `None` for a subscription. An event of a type it does not handle is
    /// ignored.
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        uow: Option<&'a mut dyn UnitOfWork>,
        invalidations: &'a mut Invalidations,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>>;

    /// Clears the read model, in the unit of work that resets its checkpoint to the start (a
    /// reset, or the first run of a new version). The default does nothing.
    fn clear<'a>(
        &'a self,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, std::result::Result<(), HandlerError>> {
        let _ = uow;
        Box::pin(async { Ok(()) })
    }
}

/// A projection registered at link time by [`#[projection]`](macro@crate::projection).
#[derive(Debug)]
pub struct ProjectionRegistration {
    /// Its name.
    pub name: &'static str,
    /// Its version.
    pub version: u32,
    /// Read model or subscription.
    pub kind: ProjectionKind,
    /// The Rust type it is declared on.
    pub type_name: fn() -> &'static str,
    /// The event types it handles.
    pub event_types: fn() -> &'static [&'static str],
    /// Where it is declared.
    pub file: &'static str,
    /// The line it is declared on.
    pub line: u32,
}

inventory::collect!(ProjectionRegistration);

impl ProjectionRegistration {
    /// `Type (file:line)`.
    pub fn location(&self) -> String {
        format!("{} ({}:{})", (self.type_name)(), self.file, self.line)
    }
}

/// Every projection registered in this binary, by name, or [`Error::Invalid`] naming both
/// declarations of a name registered twice.
///
/// [`ProjectionRunner::start`] calls it, so a duplicate name stops a service at start-up.
pub fn registered() -> Result<Vec<&'static ProjectionRegistration>> {
    let mut all: Vec<&'static ProjectionRegistration> = inventory::iter::<ProjectionRegistration>
        .into_iter()
        .collect();
    all.sort_by_key(|r| (r.name, r.file, r.line));
    for pair in all.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::DuplicateProjection {
                name: pair[0].name,
                first: pair[0].location(),
                second: pair[1].location(),
            });
        }
    }
    Ok(all)
}
