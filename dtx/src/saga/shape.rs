//! What a saga's definition looks like from outside: its steps in order, which of them have a
//! compensation, and what they wait for. Operator tools draw it (`dtx saga graph`).

use super::definition::{SagaDefinition, SagaRegistration};
use super::runtime::{ErasedSaga, Runner};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use std::time::Duration;

/// One step of a [`SagaShape`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepShape {
    /// The step's name.
    pub name: &'static str,
    /// Whether it has a compensation (run, in reverse order, when a later step fails).
    pub compensation: bool,
    /// The external event it waits for after its action, if any.
    pub awaits: Option<&'static str>,
    /// How long it waits for that event before the saga compensates.
    #[serde(serialize_with = "seconds")]
    pub timeout: Option<Duration>,
    /// Its own retry limit, if it sets one.
    pub max_retries: Option<u32>,
}

/// A saga's steps and options, as its definition declares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaShape {
    /// The saga's registered name.
    pub name: &'static str,
    /// Its steps, in order.
    pub steps: Vec<StepShape>,
    /// Its retry limit for steps and compensations, if it sets one.
    pub max_retries: Option<u32>,
    /// How long one attempt of a step may take, if it says.
    #[serde(serialize_with = "seconds")]
    pub step_timeout: Option<Duration>,
    /// How long the whole saga may take, if it says.
    #[serde(serialize_with = "seconds")]
    pub deadline: Option<Duration>,
}

impl SagaShape {
    /// The shape of a type-erased definition.
    pub(crate) fn of(saga: &dyn ErasedSaga) -> Self {
        Self {
            name: saga.name(),
            steps: (0..saga.steps())
                .map(|step| StepShape {
                    name: saga.step_name(step),
                    compensation: saga.has_compensation(step),
                    awaits: saga.await_event(step).map(|(event, _)| event),
                    timeout: saga.await_event(step).map(|(_, timeout)| timeout),
                    max_retries: saga.max_retries(step),
                })
                .collect(),
            max_retries: saga.saga_max_retries(),
            step_timeout: saga.step_timeout(),
            deadline: saga.deadline(),
        }
    }
}

impl<D> SagaDefinition<D>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The definition's steps and options.
    pub fn shape(&self) -> SagaShape {
        SagaShape::of(&Runner(self.clone()))
    }
}

/// The shapes of every saga linked into this binary by `#[saga]`, by name (the sagas a worker
/// built with `SagaOrchestratorBuilder::registry` runs).
pub fn registered_shapes() -> Vec<SagaShape> {
    let mut all: Vec<SagaShape> = inventory::iter::<SagaRegistration>
        .into_iter()
        .map(|registration| SagaShape::of((registration.runner)().as_ref()))
        .collect();
    all.sort_by_key(|s| s.name);
    all
}

#[expect(
    clippy::ref_option,
    reason = "serde's `serialize_with` passes the field by reference"
)]
fn seconds<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    value.map(|d| d.as_secs_f64()).serialize(serializer)
}
