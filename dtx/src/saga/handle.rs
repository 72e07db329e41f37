//! Starting a saga built with [`SagaBuilder`](super::SagaBuilder), without a `Saga` impl: the
//! definition hands out a typed [`SagaHandle`] that knows the saga's name.

use super::{SagaDefinition, SagaError, SagaOrchestrator, SagaRecord, SagaStatus};
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;
use uuid::Uuid;

/// Starts sagas of one definition by its name, with data of its type: what a `#[saga]` type's
/// `Saga` impl gives [`SagaOrchestrator::start`], for a definition built at run time.
///
/// ```
/// use dtx::saga::{MemorySagaStore, SagaBuilder, SagaOrchestrator, SagaStatus, StepContext};
/// use serde::{Deserialize, Serialize};
/// use std::sync::Arc;
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Transfer { debited: bool }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let transfer = SagaBuilder::<Transfer>::new("Transfer")
///     .add_step("DEBIT", |t: &mut Transfer, _ctx: &StepContext| Box::pin(async move {
///         t.debited = true;
///         Ok(vec![])
///     }))
///     .build()
///     .unwrap();
/// let handle = transfer.handle();
/// let orchestrator = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
///     .saga(transfer)
///     .build()
///     .unwrap();
/// let id = handle.start(&orchestrator, Transfer::default()).await.unwrap();
/// assert_eq!(orchestrator.status(id).await.unwrap().status, SagaStatus::Running);
/// # });
/// ```
pub struct SagaHandle<D> {
    name: &'static str,
    version: u32,
    data: PhantomData<fn(D)>,
}

impl<D> Clone for SagaHandle<D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for SagaHandle<D> {}

impl<D> fmt::Debug for SagaHandle<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SagaHandle")
            .field(&self.name)
            .field(&self.version)
            .finish()
    }
}

impl<D> SagaDefinition<D> {
    /// A handle that starts sagas of this definition once it is registered with an orchestrator
    /// ([`SagaOrchestratorBuilder::saga`](super::SagaOrchestratorBuilder::saga)).
    pub fn handle(&self) -> SagaHandle<D> {
        SagaHandle {
            name: self.name,
            version: self.version,
            data: PhantomData,
        }
    }
}

impl<D: Serialize> SagaHandle<D> {
    /// The saga's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The version of the definition it starts sagas on.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A new saga's record, not stored yet: see [`SagaOrchestrator::prepare`].
    ///
    /// # Errors
    ///
    /// [`SagaError::UnknownSaga`] if `orchestrator` has no saga of this name,
    /// [`SagaError::Superseded`] or [`SagaError::UnknownVersion`] if this definition's version
    /// is not the newest it has, and [`SagaError::Encode`] if `data` does not serialise.
    pub fn prepare(
        &self,
        orchestrator: &SagaOrchestrator,
        data: &D,
        correlation_id: Option<Uuid>,
    ) -> Result<SagaRecord, SagaError> {
        orchestrator.prepare_named(self.name, self.version, data, correlation_id)
    }

    /// Starts a saga: stores it, due now, and returns its id (see [`SagaOrchestrator::start`]).
    ///
    /// # Errors
    ///
    /// As [`Self::prepare`], and the store's failure.
    pub async fn start(&self, orchestrator: &SagaOrchestrator, data: D) -> Result<Uuid, SagaError> {
        self.start_correlated(orchestrator, data, None).await
    }

    /// Starts a saga within a business operation's correlation.
    ///
    /// # Errors
    ///
    /// As [`Self::start`].
    pub async fn start_correlated(
        &self,
        orchestrator: &SagaOrchestrator,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let record = self.prepare(orchestrator, &data, correlation_id)?;
        orchestrator.store().insert(&record).await?;
        crate::telemetry::record_saga_transition(self.name, SagaStatus::Running.as_str());
        tracing::info!(saga = self.name, saga_id = %record.id, "saga started");
        Ok(record.id)
    }
}
