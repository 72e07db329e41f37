//! Starting a saga inside a unit of work.

use super::{Saga, SagaError, SagaOrchestrator};
use crate::uow::UnitOfWork;
use uuid::Uuid;

impl SagaOrchestrator {
    /// Starts a saga as part of a unit of work: it is stored, due now, if and only if the unit
    /// of work commits (a worker picks it up after that). Returns its id.
    pub async fn start_in<S: Saga>(
        &self,
        uow: &mut dyn UnitOfWork,
        data: S,
    ) -> Result<Uuid, SagaError> {
        self.start_correlated_in(uow, data, None).await
    }

    /// [`SagaOrchestrator::start_in`] within a business operation's correlation.
    pub async fn start_correlated_in<S: Saga>(
        &self,
        uow: &mut dyn UnitOfWork,
        data: S,
        correlation_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let record = self.prepare(&data, correlation_id)?;
        self.store().insert_in(uow, &record).await?;
        tracing::debug!(saga = S::NAME, saga_id = %record.id, "saga start written in a unit of work");
        Ok(record.id)
    }
}
