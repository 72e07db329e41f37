//! Running one step of a saga: the [`ErasedSaga`] workers run by name, and [`run_step`], which
//! runs a step's action or compensation with its timeout and records the events it returns.

use super::definition::{Saga, SagaDefinition, StepContext, StepError, StepFn};
use super::store::SagaRecord;
use crate::cqrs::context::StateMap;
use crate::{EventStore, ExpectedVersion, NewEvent, SharedEventStore, StreamId};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// A saga definition with its data type erased: what workers run by name.
#[doc(hidden)]
#[async_trait]
pub trait ErasedSaga: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn fingerprint(&self) -> String;
    fn steps(&self) -> usize;
    fn step_name(&self, step: usize) -> &'static str;
    /// The index of the step named `name`.
    fn position(&self, name: &str) -> Option<usize>;
    fn await_event(&self, step: usize) -> Option<(&'static str, Duration)>;
    fn has_compensation(&self, step: usize) -> bool;
    fn max_retries(&self, step: usize) -> Option<u32>;
    fn saga_max_retries(&self) -> Option<u32>;
    fn step_timeout(&self) -> Option<Duration>;
    fn deadline(&self) -> Option<Duration>;
    async fn run(
        &self,
        step: usize,
        compensation: bool,
        data: &serde_json::Value,
        ctx: &StepContext,
    ) -> Result<(serde_json::Value, Vec<NewEvent>), StepError>;
}

/// The runner of one typed definition.
pub(crate) struct Runner<D>(pub(crate) SagaDefinition<D>);

#[async_trait]
impl<D> ErasedSaga for Runner<D>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.0.name
    }
    fn version(&self) -> u32 {
        self.0.version
    }
    fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
    fn steps(&self) -> usize {
        self.0.steps.len()
    }
    fn step_name(&self, step: usize) -> &'static str {
        self.0.steps[step].name
    }
    fn position(&self, name: &str) -> Option<usize> {
        self.0.steps.iter().position(|s| s.name == name)
    }
    fn await_event(&self, step: usize) -> Option<(&'static str, Duration)> {
        self.0.steps[step].await_event
    }
    fn has_compensation(&self, step: usize) -> bool {
        self.0.steps[step].compensation.is_some()
    }
    fn max_retries(&self, step: usize) -> Option<u32> {
        self.0.steps[step].max_retries
    }
    fn saga_max_retries(&self) -> Option<u32> {
        self.0.max_retries
    }
    fn step_timeout(&self) -> Option<Duration> {
        self.0.step_timeout
    }
    fn deadline(&self) -> Option<Duration> {
        self.0.deadline
    }

    async fn run(
        &self,
        step: usize,
        compensation: bool,
        data: &serde_json::Value,
        ctx: &StepContext,
    ) -> Result<(serde_json::Value, Vec<NewEvent>), StepError> {
        let def = &self.0.steps[step];
        let f: &StepFn<D> = if compensation {
            match &def.compensation {
                Some(c) => c,
                None => return Ok((data.clone(), Vec::new())),
            }
        } else {
            &def.action
        };
        let mut value: D = serde_json::from_value(data.clone()).map_err(|e| {
            StepError::permanent(format!(
                "the data of saga `{}` does not decode: {e}",
                self.0.name
            ))
        })?;
        let events = f(&mut value, ctx).await?;
        let data = serde_json::to_value(&value).map_err(|e| {
            StepError::permanent(format!(
                "the data of saga `{}` does not encode: {e}",
                self.0.name
            ))
        })?;
        Ok((data, events))
    }
}

/// A step's action or compensation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// The step's index in the definition.
    pub(crate) step: usize,
    /// Its compensation rather than its action.
    pub(crate) compensation: bool,
    /// Which attempt this is (1 for the first).
    pub(crate) attempt: u32,
}

/// What a step sees of the orchestrator: its shared state, and the event store its events go to.
#[derive(Clone, Copy)]
pub(crate) struct StepEnv<'a> {
    pub(crate) state: &'a StateMap,
    pub(crate) events: Option<&'a SharedEventStore>,
}

/// Runs a step's action or compensation with its timeout, and records its events in the saga's
/// stream with ids derived from the saga, step and phase (so a re-run stores them once).
pub(crate) async fn run_step(
    saga: &dyn ErasedSaga,
    record: &SagaRecord,
    stream: &StreamId,
    run: Run,
    env: StepEnv<'_>,
) -> Result<(serde_json::Value, Vec<Uuid>), StepError> {
    let Run {
        step,
        compensation,
        attempt,
    } = run;
    let phase = if compensation {
        "compensation"
    } else {
        "action"
    };
    let ctx = StepContext {
        saga_id: record.id,
        saga_name: saga.name(),
        step: saga.step_name(step),
        phase,
        attempt,
        received: Arc::new(record.received.clone()),
        correlation_id: record.correlation_id,
        stream: stream.clone(),
        state: env.state.clone(),
    };
    let span = tracing::info_span!(
        "dtx.saga.step",
        saga = saga.name(),
        saga_id = %record.id,
        step = saga.step_name(step),
        phase,
        attempt,
        outcome = tracing::field::Empty,
    );
    crate::telemetry::set_parent(
        &span,
        record
            .received
            .get(crate::telemetry::SAGA_TRACEPARENT)
            .and_then(serde_json::Value::as_str),
    );
    let run = saga.run(step, compensation, &record.data, &ctx);
    let result = match saga.step_timeout() {
        Some(timeout) => match tokio::time::timeout(timeout, run)
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_) => Err(StepError::transient(format!("timed out after {timeout:?}"))),
        },
        None => run.instrument(span.clone()).await,
    };
    span.record("outcome", if result.is_ok() { "ok" } else { "error" });
    let (data, mut events) = result?;
    if events.is_empty() {
        return Ok((data, Vec::new()));
    }
    let Some(store) = env.events else {
        return Err(StepError::permanent(
            "this step returns events, but the orchestrator has no event store (`.events(..)`)",
        ));
    };
    let traceparent = span.in_scope(crate::telemetry::current_traceparent);
    for (n, event) in events.iter_mut().enumerate() {
        event.event_id = Uuid::new_v5(&record.id, format!("{}/{phase}/{n}", ctx.step).as_bytes());
        if event.metadata.traceparent.is_none() {
            event.metadata.traceparent.clone_from(&traceparent);
        }
        event.metadata.correlation_id = record.correlation_id;
        event.metadata.causation_id = Some(record.id);
    }
    let ids = events.iter().map(|e| e.event_id).collect();
    append_step_events(store.as_ref(), stream, events).await?;
    Ok((data, ids))
}

async fn append_step_events(
    store: &dyn EventStore,
    stream: &StreamId,
    events: Vec<NewEvent>,
) -> Result<(), StepError> {
    store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .map(|_| ())
        .map_err(StepError::transient)
}

/// Registers a `#[saga]` type's definition: used by generated code.
pub(crate) fn runner<S: Saga>() -> Arc<dyn ErasedSaga> {
    Arc::new(Runner(S::definition()))
}
