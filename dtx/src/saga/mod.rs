//! Sagas: a business operation across services that either completes, or undoes what it did.
//!
//! A saga is a data struct plus ordered steps, each wired to its compensation. Declare it with
//! `#[saga]` (or build it with [`SagaBuilder`]); start it with [`SagaOrchestrator::start`] (a
//! built one through its [`SagaHandle`]); any [`SagaWorker`] in any process runs it. Every
//! transition is persisted before the next step runs, workers hold a lease on the sagas they
//! run, and a saga whose worker died is resumed by another once the lease expires. Steps run at
//! least once, so each gets a stable idempotency key ([`StepContext::idempotency_key`]) to pass
//! to the services it calls.
//!
//! A step that keeps failing (after `max_retries`, with exponential backoff and jitter), a
//! passed deadline, or an awaited event that does not come in time triggers compensation of
//! the completed steps in reverse order. A compensation that keeps failing leaves the saga
//! [`SagaStatus::Failed`], visible in [`SagaOrchestrator::list`] and retryable with
//! [`SagaOrchestrator::retry`] — never dropped. An operator may also cancel a running or waiting
//! saga ([`SagaOrchestrator::cancel`]): it compensates the same way, and its record keeps the
//! decision.

pub mod cancel;
mod definition;
mod feed;
mod handle;
mod memory;
mod orchestrator;
pub(crate) mod runtime;
mod saves;
mod shape;
mod start;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transition;
mod worker;

pub use cancel::{Cancel, Cancellation, Cancelled};
pub use definition::{
    BoxFuture, Saga, SagaBuilder, SagaDefinition, SagaRegistration, StepContext, StepError,
    StepEvents, StepFn, StepResult,
};
pub use handle::SagaHandle;
pub use memory::MemorySagaStore;
pub use orchestrator::{SagaError, SagaOrchestrator, SagaOrchestratorBuilder};
pub use shape::{SagaShape, StepShape, registered_shapes};
pub use store::{
    Clock, CompletedStep, Correlated, Delivery, ManualClock, SagaEvent, SagaRecord, SagaSave,
    SagaStatus, SagaStore, SystemClock,
};
pub use worker::{SagaWorker, WorkerOptions};
