//! [`SagaWorker`]s: claim due sagas, run their steps, and save every transition.

use super::orchestrator::{Resolved, SagaError, SagaOrchestrator};
use super::runtime::{StepEnv, run_step};
use super::saves::Saves;
use super::store::{SagaRecord, SagaStatus};
use super::transition::{Lease, Machine, Outcome, Save, Then, Transition, park, to_chrono};
use crate::StreamId;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// How a [`SagaWorker`] claims and runs sagas.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name in leases (unique per worker; default: a fresh UUID).
    pub id: String,
    /// How long a claim lasts without renewal; a dead worker's sagas are resumed after it.
    pub lease: Duration,
    /// How many due sagas one claim takes (one round trip). The claimed sagas run concurrently,
    /// and their transitions are saved together: a save waits for no other, but the saves that
    /// queue up while one is written share the next statement and commit.
    pub batch: usize,
    /// How long an idle worker sleeps before it looks again.
    pub poll_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", Uuid::new_v4()),
            lease: Duration::from_secs(30),
            batch: 16,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// Claims due sagas (`FOR UPDATE SKIP LOCKED` and a lease on PostgreSQL) and runs them. Run
/// any number of workers, in any number of processes.
#[derive(Debug, Clone)]
pub struct SagaWorker {
    orchestrator: SagaOrchestrator,
    options: WorkerOptions,
}

impl SagaOrchestrator {
    /// A worker that runs this orchestrator's sagas.
    pub fn worker(&self, options: WorkerOptions) -> SagaWorker {
        SagaWorker {
            orchestrator: self.clone(),
            options,
        }
    }
}

impl SagaWorker {
    /// Claims one batch of due sagas (one round trip) and runs each as far as it goes now, their
    /// saves combined (see [`WorkerOptions::batch`]); returns how many it claimed.
    pub async fn run_once(&self) -> Result<usize, SagaError> {
        let inner = &self.orchestrator.inner;
        let claimed = inner
            .store
            .claim(
                &self.options.id,
                inner.clock.now(),
                self.options.lease,
                self.options.batch,
            )
            .await?;
        let count = claimed.len();
        if count == 0 {
            return Ok(0);
        }
        let saves = Saves::start(
            std::sync::Arc::clone(&inner.store),
            self.options.id.clone(),
            count,
        );
        let mut running = tokio::task::JoinSet::new();
        for record in claimed {
            let worker = self.clone();
            let saves = saves.clone();
            running.spawn(async move { worker.advance(record, &saves).await });
        }
        drop(saves);
        while let Some(done) = running.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "saga transition failed; it is retried after its lease");
                }
                Err(panic) => {
                    tracing::error!(%panic, "a saga step panicked; it is retried after its lease");
                }
            }
        }
        Ok(count)
    }

    /// Runs until `shutdown` completes: claims due sagas, sleeps `poll_interval` when idle.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SagaError> {
        tokio::pin!(shutdown);
        loop {
            // Sagas in flight always finish their current transition: shutdown is honoured
            // between claims, so a graceful stop never strands a leased saga.
            let stop = tokio::select! {
                biased;
                () = &mut shutdown => true,
                () = std::future::ready(()) => false,
            };
            if stop {
                return Ok(());
            }
            match self.run_once().await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(error) => tracing::warn!(%error, "claiming sagas failed"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }

    /// Runs until no saga is due (for tests and examples); returns how many claims it made.
    pub async fn run_until_idle(&self) -> Result<usize, SagaError> {
        let mut total = 0;
        loop {
            match self.run_once().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Runs one claimed saga as far as it can go now: each transition either runs a step or is
    /// saved, until one lets the saga go (or the lease is lost).
    async fn advance(&self, saga: SagaRecord, saves: &Saves) -> Result<(), SagaError> {
        let inner = &self.orchestrator.inner;
        let mut saga = saga;
        // Never run a saga against a definition other than the one it started on.
        let definition = match self.orchestrator.resolve(&saga)? {
            Resolved::Run(definition) => definition,
            Resolved::Park(reason) => {
                let Transition {
                    saga: mut parked,
                    then,
                } = park(saga, reason);
                if let Then::Save(save) = then {
                    self.save(&mut parked, save, inner.clock.now(), saves)
                        .await?;
                }
                return Ok(());
            }
        };
        if saga.definition_fingerprint.is_none() {
            // Stored before fingerprints were; its completed steps matched this definition's.
            saga.definition_fingerprint = Some(definition.fingerprint());
        }
        let stream = StreamId::new(format!("{}-{}", saga.name, saga.id))?;
        let env = StepEnv {
            state: &inner.state,
            events: inner.events.as_ref(),
        };
        let machine = Machine {
            saga: definition.as_ref(),
            max_retries: inner.settings.max_retries,
            backoff: inner.settings.backoff,
            // One draw is enough: a retry ends this call.
            jitter: crate::retry::random_u64(),
        };
        let mut outcome = Outcome::Due;
        loop {
            let now = inner.clock.now();
            let Transition { saga: next, then } = machine.transition(saga, outcome, now);
            saga = next;
            match then {
                Then::Run(run) => {
                    outcome =
                        Outcome::Ran(run_step(definition.as_ref(), &saga, &stream, run, env).await);
                }
                Then::Save(save) => {
                    if !self.save(&mut saga, save, now, saves).await?
                        || save.lease == Lease::Release
                    {
                        return Ok(());
                    }
                    outcome = Outcome::Due;
                }
            }
        }
    }

    /// Persists a transition (through `saves`, with the other sagas' transitions of the claim)
    /// and records it: the one place a worker writes a saga, counts its
    /// transitions and retries, and logs them. `Ok(false)` when the lease was lost (nothing is
    /// recorded then: another worker has the saga).
    async fn save(
        &self,
        saga: &mut SagaRecord,
        save: Save,
        now: DateTime<Utc>,
        saves: &Saves,
    ) -> Result<bool, SagaError> {
        saga.version += 1;
        saga.updated_at = now;
        let lease_until = (save.lease == Lease::Keep).then(|| now + to_chrono(self.options.lease));
        if !saves.save(saga, lease_until).await? {
            tracing::warn!(saga_id = %saga.id, "lease lost; another worker has this saga now");
            return Ok(false);
        }
        if let Some(step) = save.retried {
            crate::telemetry::record_saga_step_retry(&saga.name, step);
        }
        if let Some(status) = save.entered {
            crate::telemetry::record_saga_transition(&saga.name, status.as_str());
            let (name, id) = (&saga.name, saga.id);
            let reason = saga.last_error.as_deref().unwrap_or_default();
            match status {
                SagaStatus::Compensating => {
                    tracing::info!(saga = %name, saga_id = %id, %reason, "compensating");
                }
                SagaStatus::Completed => {
                    tracing::info!(saga = %name, saga_id = %id, "saga completed");
                }
                SagaStatus::Compensated => {
                    tracing::info!(saga = %name, saga_id = %id, "saga compensated");
                }
                SagaStatus::Failed => {
                    tracing::error!(saga = %name, saga_id = %id, error = %reason, "saga failed; it needs an operator");
                }
                SagaStatus::Running | SagaStatus::Waiting => {}
            }
        }
        Ok(true)
    }
}
