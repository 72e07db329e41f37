//! What a saga is: its data type, steps and compensations, and options.

use crate::error::BoxError;
use crate::{DomainEvent, NewEvent, StreamId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A boxed step future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a step or compensation returns: the events it records in the saga's stream.
pub type StepResult = Result<Vec<NewEvent>, StepError>;

/// A step or compensation: changes the saga's data and may return events.
pub type StepFn<D> =
    Arc<dyn for<'a> Fn(&'a mut D, &'a StepContext) -> BoxFuture<'a, StepResult> + Send + Sync>;

/// Why a step or compensation failed.
#[derive(Debug)]
pub struct StepError {
    /// What went wrong.
    pub source: BoxError,
    /// `false` skips the remaining retries (the failure is permanent).
    pub retryable: bool,
}

impl StepError {
    /// A failure worth retrying (the default for any error).
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix: compensation starts at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl<E: Into<BoxError>> From<E> for StepError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

/// What a step may return: nothing, or events to record in the saga's stream.
#[diagnostic::on_unimplemented(
    message = "a saga step returns `Result<(), E>` or `Result<Events, E>`, not `Result<{Self}, E>`",
    label = "`{Self}` is neither `()` nor events, so the step's result cannot be recorded",
    note = "return `()`, one event of a `#[derive(DomainEvent)]` enum, or a `Vec` of them"
)]
pub trait StepEvents {
    /// Encodes the events for the saga's stream.
    fn encode(self, stream: &StreamId) -> crate::Result<Vec<NewEvent>>;
}

impl StepEvents for () {
    fn encode(self, _: &StreamId) -> crate::Result<Vec<NewEvent>> {
        Ok(Vec::new())
    }
}

// Not recommended: for a type that is neither `()` nor events, rustc then reports the step's
// return type with the message above instead of "`DomainEvent` is not implemented", followed by
// every event enum in scope (with the `testing` feature, dtx's own test events).
#[diagnostic::do_not_recommend]
impl<E: DomainEvent> StepEvents for E {
    fn encode(self, stream: &StreamId) -> crate::Result<Vec<NewEvent>> {
        Ok(vec![NewEvent::encode(
            stream,
            &self,
            crate::EventMetadata::default(),
        )?])
    }
}

#[diagnostic::do_not_recommend]
impl<E: DomainEvent> StepEvents for Vec<E> {
    fn encode(self, stream: &StreamId) -> crate::Result<Vec<NewEvent>> {
        self.iter()
            .map(|e| NewEvent::encode(stream, e, crate::EventMetadata::default()))
            .collect()
    }
}

/// What a running step can see: the saga's identity, its idempotency key, received events.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub(crate) saga_id: Uuid,
    pub(crate) saga_name: &'static str,
    pub(crate) step: &'static str,
    pub(crate) phase: &'static str,
    pub(crate) attempt: u32,
    pub(crate) received: Arc<HashMap<String, serde_json::Value>>,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) stream: StreamId,
    pub(crate) state: crate::cqrs::context::StateMap,
}

impl StepContext {
    /// The saga's id.
    pub fn saga_id(&self) -> Uuid {
        self.saga_id
    }

    /// The saga's name.
    pub fn saga_name(&self) -> &'static str {
        self.saga_name
    }

    /// The step's name.
    pub fn step(&self) -> &'static str {
        self.step
    }

    /// `"action"` or `"compensation"`.
    pub fn phase(&self) -> &'static str {
        self.phase
    }

    /// Which attempt this is (1 = the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The correlation id of the operation that started the saga.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id
    }

    /// A key that is the same for every attempt of this step and phase, on any worker:
    /// `{saga id}/{step}/{phase}`. Pass it to the services a step calls so that a retried step
    /// has its effect once.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.saga_id, self.step, self.phase)
    }

    /// The payload of an external event this saga received through
    /// [`super::SagaOrchestrator::handle_event`], decoded.
    pub fn event<T: DeserializeOwned>(
        &self,
        event_type: &str,
    ) -> Option<Result<T, serde_json::Error>> {
        self.received
            .get(event_type)
            .map(|v| serde_json::from_value(v.clone()))
    }

    /// The saga's own event stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Shared state given to the orchestrator with `SagaOrchestratorBuilder::state` (the
    /// clients of the services the steps call), by type.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.state.get()
    }
}

/// One step: its action, its compensation, and what it waits for.
pub(crate) struct StepDef<D> {
    pub(crate) name: &'static str,
    pub(crate) action: StepFn<D>,
    pub(crate) compensation: Option<StepFn<D>>,
    pub(crate) await_event: Option<(&'static str, Duration)>,
    pub(crate) max_retries: Option<u32>,
}

impl<D> Clone for StepDef<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            action: Arc::clone(&self.action),
            compensation: self.compensation.clone(),
            await_event: self.await_event,
            max_retries: self.max_retries,
        }
    }
}

/// A saga: its name, version, ordered steps and options. Built by `#[saga]` or
/// [`SagaBuilder`].
///
/// Several versions of one name may be registered with an orchestrator: a saga runs, to its
/// end, under the version it started on (see [`SagaDefinition::fingerprint`]).
pub struct SagaDefinition<D> {
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) steps: Vec<StepDef<D>>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) step_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
}

impl<D> Clone for SagaDefinition<D> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            version: self.version,
            steps: self.steps.clone(),
            max_retries: self.max_retries,
            step_timeout: self.step_timeout,
            deadline: self.deadline,
        }
    }
}

impl<D> fmt::Debug for SagaDefinition<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "steps",
                &self.steps.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<D> SagaDefinition<D> {
    /// The saga's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The definition's version (1 unless `#[saga(version = ..)]` or
    /// [`SagaBuilder::version`] says otherwise).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The steps' names, in order.
    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }

    /// What identifies the shape of this definition: the names and order of its steps, and which
    /// of them have a compensation, hashed (16 hexadecimal digits of a SHA-256 of a canonical
    /// text, the same on every build, compiler and platform). Stored with every saga when it
    /// starts; a worker runs a saga only under a definition with the same version and
    /// fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            self.steps
                .iter()
                .map(|s| (s.name, s.compensation.is_some())),
        )
    }

    /// Replaces a step's action (for tests: inject failures, count calls).
    pub fn wrap_step(&mut self, step: &str, wrap: impl FnOnce(StepFn<D>) -> StepFn<D>) -> bool {
        match self.steps.iter_mut().find(|s| s.name == step) {
            Some(s) => {
                s.action = wrap(Arc::clone(&s.action));
                true
            }
            None => false,
        }
    }

    /// Replaces a step's compensation (for tests).
    pub fn wrap_compensation(
        &mut self,
        step: &str,
        wrap: impl FnOnce(StepFn<D>) -> StepFn<D>,
    ) -> bool {
        match self.steps.iter_mut().find(|s| s.name == step) {
            Some(StepDef {
                compensation: Some(c),
                ..
            }) => {
                *c = wrap(Arc::clone(c));
                true
            }
            _ => false,
        }
    }
}

/// A saga's data type with its definition. Implemented by `#[saga]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a saga",
    note = "put `#[dtx::saga]` on an `impl {Self} {{ .. }}` block with `#[step]` methods"
)]
pub trait Saga: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga's registered name.
    const NAME: &'static str;
    /// The version of its definition (`#[saga(version = ..)]`, default 1).
    const VERSION: u32 = 1;
    /// Its definition.
    fn definition() -> SagaDefinition<Self>;
}

/// Builds a [`SagaDefinition`] at run time: the seed's fluent API, and what `#[saga]` expands to.
///
/// ```
/// use dtx::saga::{SagaBuilder, StepContext};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Transfer { debited: bool, credited: bool }
///
/// let saga = SagaBuilder::<Transfer>::new("Transfer")
///     .add_step("DEBIT", |t: &mut Transfer, _ctx: &StepContext| Box::pin(async move {
///         t.debited = true;
///         Ok(vec![])
///     }))
///     .add_compensation("DEBIT", |t: &mut Transfer, _ctx: &StepContext| Box::pin(async move {
///         t.debited = false;
///         Ok(vec![])
///     }))
///     .add_step("CREDIT", |t: &mut Transfer, _ctx: &StepContext| Box::pin(async move {
///         t.credited = true;
///         Ok(vec![])
///     }))
///     .max_retries(3)
///     .build()
///     .unwrap();
/// assert_eq!(saga.step_names(), ["DEBIT", "CREDIT"]);
/// ```
pub struct SagaBuilder<D> {
    definition: SagaDefinition<D>,
    errors: Vec<String>,
}

impl<D> fmt::Debug for SagaBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

impl<D: Send + 'static> SagaBuilder<D> {
    /// A saga named `name` (the name workers resume it by).
    pub fn new(name: &'static str) -> Self {
        Self {
            definition: SagaDefinition {
                name,
                version: 1,
                steps: Vec::new(),
                max_retries: None,
                step_timeout: None,
                deadline: None,
            },
            errors: Vec::new(),
        }
    }

    /// Appends a step.
    #[must_use]
    pub fn add_step<F>(mut self, name: &'static str, action: F) -> Self
    where
        F: for<'a> Fn(&'a mut D, &'a StepContext) -> BoxFuture<'a, StepResult>
            + Send
            + Sync
            + 'static,
    {
        if self.definition.steps.iter().any(|s| s.name == name) {
            self.errors.push(format!("two steps are named `{name}`"));
        }
        self.definition.steps.push(StepDef {
            name,
            action: Arc::new(action),
            compensation: None,
            await_event: None,
            max_retries: None,
        });
        self
    }

    /// Wires a compensation to an earlier step.
    #[must_use]
    pub fn add_compensation<F>(mut self, step: &'static str, compensation: F) -> Self
    where
        F: for<'a> Fn(&'a mut D, &'a StepContext) -> BoxFuture<'a, StepResult>
            + Send
            + Sync
            + 'static,
    {
        match self.definition.steps.iter_mut().find(|s| s.name == step) {
            Some(s) if s.compensation.is_some() => {
                self.errors
                    .push(format!("step `{step}` has two compensations"));
            }
            Some(s) => {
                s.compensation = Some(Arc::new(compensation));
            }
            None => self.errors.push(format!(
                "compensation for `{step}`, which is not a step (add the step first)"
            )),
        }
        self
    }

    /// Makes the last added step wait, after its action, for an external event of this type
    /// (delivered by `handle_event`); if none arrives within `timeout`, the saga compensates.
    #[must_use]
    pub fn await_event(mut self, event_type: &'static str, timeout: Duration) -> Self {
        match self.definition.steps.last_mut() {
            Some(s) => s.await_event = Some((event_type, timeout)),
            None => self
                .errors
                .push("await_event needs a step before it".to_owned()),
        }
        self
    }

    /// The definition's version (default 1). Register a new version, under the same name, when
    /// steps are added, removed, renamed or reordered, or gain or lose a compensation: sagas
    /// started on the old version finish on it while it stays registered (see the README,
    /// "Running in production").
    #[must_use]
    pub fn version(mut self, version: u32) -> Self {
        if version == 0 {
            self.errors
                .push("versions start at 1, the default".to_owned());
        }
        self.definition.version = version;
        self
    }

    /// Retries of the last added step (overrides [`SagaBuilder::max_retries`] for it).
    #[must_use]
    pub fn step_retries(mut self, retries: u32) -> Self {
        match self.definition.steps.last_mut() {
            Some(s) => s.max_retries = Some(retries),
            None => self
                .errors
                .push("step_retries needs a step before it".to_owned()),
        }
        self
    }

    /// Retries of a failing step or compensation before giving up (default `SAGA_MAX_RETRIES`).
    #[must_use]
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.definition.max_retries = Some(retries);
        self
    }

    /// How long one attempt of a step may take.
    #[must_use]
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.definition.step_timeout = Some(timeout);
        self
    }

    /// How long the whole saga may take before it compensates (default `SAGA_TIMEOUT_MINUTES`).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.definition.deadline = Some(deadline);
        self
    }

    /// The definition `#[saga]` built; the macro checked it at compile time.
    #[doc(hidden)]
    pub fn __checked(self) -> SagaDefinition<D> {
        self.definition
    }

    /// The definition, or every mistake found.
    pub fn build(self) -> Result<SagaDefinition<D>, String> {
        let mut errors = self.errors;
        if self.definition.steps.is_empty() {
            errors.push("a saga needs at least one step".to_owned());
        }
        if errors.is_empty() {
            Ok(self.definition)
        } else {
            Err(format!(
                "saga `{}`: {}",
                self.definition.name,
                errors.join("; ")
            ))
        }
    }
}

/// The fingerprint of steps given as `(name, has a compensation)`, in order: see
/// [`SagaDefinition::fingerprint`]. The canonical text is `dtx-saga-steps/1` then, per step,
/// `\n`, its name's length in bytes, `:`, its name, and `+` (compensated) or `-`.
pub(crate) fn fingerprint<'a>(steps: impl IntoIterator<Item = (&'a str, bool)>) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let mut text = String::from("dtx-saga-steps/1");
    for (name, compensated) in steps {
        let mark = if compensated { '+' } else { '-' };
        let _ = write!(text, "\n{}:{name}{mark}", name.len());
    }
    let digest = Sha256::digest(text.as_bytes());
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// A saga type registered at link time by `#[saga]`, so any worker can resume it by name.
#[derive(Debug)]
pub struct SagaRegistration {
    /// The saga's name.
    pub name: &'static str,
    /// Its definition's version.
    pub version: u32,
    /// Builds its type-erased runner.
    pub runner: fn() -> Arc<dyn super::runtime::ErasedSaga>,
}

inventory::collect!(SagaRegistration);

#[cfg(test)]
mod tests {
    use super::fingerprint;

    /// The fingerprint is a function of the steps' names, order and compensations alone, and
    /// the same on every build: sagas stored by one build are recognised by the next.
    #[test]
    fn fingerprints_are_stable_and_see_order_names_and_compensations() {
        let steps = [("reserve", true), ("charge", true), ("ship", false)];
        // SHA-256 of "dtx-saga-steps/1\n7:reserve+\n6:charge+\n4:ship-", first 8 bytes.
        assert_eq!(fingerprint(steps), "e13076a6fba6eaa4");
        let reordered = [("charge", true), ("reserve", true), ("ship", false)];
        let uncompensated = [("reserve", true), ("charge", false), ("ship", false)];
        let renamed = [("reserve", true), ("charge", true), ("send", false)];
        // Names that would collide if they were only concatenated.
        let (a, b) = ([("ab", false), ("c", false)], [("a", false), ("bc", false)]);
        for other in [reordered, uncompensated, renamed] {
            assert_ne!(fingerprint(steps), fingerprint(other));
        }
        assert_ne!(fingerprint(a), fingerprint(b));
    }
}
