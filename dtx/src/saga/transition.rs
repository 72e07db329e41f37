//! The saga worker's state machine: given a saga's state and what just happened to it, what the
//! saga becomes and what the worker does next.
//!
//! [`Machine::transition`] is pure: no I/O, no clock (the time is an argument) and no randomness
//! of its own (the jitter of retry pauses is drawn by the caller). The worker
//! ([`super::SagaWorker`]) loops over it: it runs the step a transition asks for, or saves the
//! new state in one place that also records the transition's metrics and logs.
//!
//! | status       | what happened             | becomes      | the worker                   |
//! |--------------|---------------------------|--------------|------------------------------|
//! | Running      | due, deadline passed      | Compensating | goes on                      |
//! | Running      | due, no step left         | Completed    | lets it go                   |
//! | Running      | due                       | unchanged    | runs the step                |
//! | Running      | step ok, more follow      | Running      | goes on                      |
//! | Running      | step ok, awaits an event  | Waiting      | lets it go until the timeout |
//! | Running      | last step ok              | Completed    | lets it go                   |
//! | Running      | step failed, retries left | Running      | lets it go until the backoff |
//! | Running      | step failed for good      | Compensating | goes on                      |
//! | Waiting      | due: no event in time     | Compensating | goes on                      |
//! | Compensating | due, a step to undo       | unchanged    | runs its compensation        |
//! | Compensating | due, step has none        | step undone  | goes on                      |
//! | Compensating | due, nothing to undo      | Compensated  | lets it go                   |
//! | Compensating | compensation ok           | step undone  | goes on                      |
//! | Compensating | failed, retries left      | Compensating | lets it go until the backoff |
//! | Compensating | failed for good           | Failed       | lets it go                   |
//! | Compensating | due, step name unknown    | Failed       | lets it go                   |
//!
//! Compensation finds the step to undo by its name among the completed steps, never by
//! position. Which definition a saga runs under (the version and fingerprint it started on) is
//! settled before the machine sees it (`SagaOrchestrator::resolve`).
//!
//! A waiting saga is due again when its event is delivered (then it runs its next step), and a
//! failed one when an operator retries it (then it compensates again).

use super::definition::StepError;
use super::runtime::{ErasedSaga, Run};
use super::store::{CompletedStep, SagaRecord, SagaStatus};
use crate::Backoff;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// What happened to a saga since its worker last looked at it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing ran: the saga was just claimed, or its last transition was saved.
    Due,
    /// The step's action or compensation that the last [`Then::Run`] asked for returned: the
    /// saga's new data and the ids of the events it recorded, or why it failed.
    Ran(Result<(serde_json::Value, Vec<Uuid>), StepError>),
}

/// Whether a saved saga stays with its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// The worker keeps its lease and goes on with the saga.
    Keep,
    /// The worker lets the saga go: it is over, waiting for an event, or due again later.
    Release,
}

/// A new state to persist, and what to record about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Save {
    /// Whether the worker goes on with the saga.
    pub(crate) lease: Lease,
    /// The status the saga entered, when it changed.
    pub(crate) entered: Option<SagaStatus>,
    /// The step whose action or compensation failed and is retried later.
    pub(crate) retried: Option<&'static str>,
}

/// What the worker does after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Run a step's action or compensation (the saga is unchanged until it returns).
    Run(Run),
    /// Persist the new state.
    Save(Save),
}

/// A saga's new state, and what the worker does with it.
#[derive(Debug)]
pub(crate) struct Transition {
    /// The saga's new state.
    pub(crate) saga: SagaRecord,
    /// What happens next.
    pub(crate) then: Then,
}

/// The rules one saga runs by: its definition and the orchestrator's defaults.
pub(crate) struct Machine<'a> {
    /// The saga's definition.
    pub(crate) saga: &'a dyn ErasedSaga,
    /// Retries of a step or compensation when neither it nor its saga sets them.
    pub(crate) max_retries: u32,
    /// The pauses between retries.
    pub(crate) backoff: Backoff,
    /// The random draw that places a retry's pause in the backoff's jitter range
    /// ([`Backoff::delay_with`]).
    pub(crate) jitter: u64,
}

impl Machine<'_> {
    /// What `saga` becomes after `outcome`, at `now`.
    pub(crate) fn transition(
        &self,
        saga: SagaRecord,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Transition {
        match (saga.status, outcome) {
            (_, Outcome::Due) => self.due(saga, now),
            (SagaStatus::Running, Outcome::Ran(result)) => self.step_ran(saga, result, now),
            (SagaStatus::Compensating, Outcome::Ran(result)) => {
                self.compensation_ran(saga, result, now)
            }
            // Nothing runs in any other status: let the saga go as it is.
            (_, Outcome::Ran(_)) => release(saga),
        }
    }

    /// A saga the worker holds and nothing ran for yet.
    fn due(&self, mut saga: SagaRecord, now: DateTime<Utc>) -> Transition {
        match saga.status {
            SagaStatus::Running => {
                if saga.deadline.is_some_and(|d| d <= now) {
                    return compensate(saga, "the saga's deadline passed".to_owned());
                }
                let step = saga.step as usize;
                if step >= self.saga.steps() {
                    saga.last_error = None;
                    return enter(saga, SagaStatus::Completed);
                }
                run(saga, step, false)
            }
            SagaStatus::Waiting => {
                // Claimed only once the wait is over: the event did not come in time.
                let awaited = saga.awaiting.clone().unwrap_or_default();
                compensate(saga, format!("no `{awaited}` event arrived in time"))
            }
            SagaStatus::Compensating => {
                let (done, step) = match self.to_compensate(&saga) {
                    None => return enter(saga, SagaStatus::Compensated),
                    Some(Err(reason)) => return park(saga, reason),
                    Some(Ok(found)) => found,
                };
                if self.saga.has_compensation(step) {
                    return run(saga, step, true);
                }
                saga.completed[done].compensated = true;
                keep(saga)
            }
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => release(saga),
        }
    }

    /// The current step's action returned.
    fn step_ran(
        &self,
        mut saga: SagaRecord,
        result: Result<(serde_json::Value, Vec<Uuid>), StepError>,
        now: DateTime<Utc>,
    ) -> Transition {
        let step = saga.step as usize;
        let name = self.saga.step_name(step);
        let attempt = saga.attempts + 1;
        match result {
            Ok((data, events)) => {
                saga.data = data;
                saga.completed.push(CompletedStep {
                    step: name.to_owned(),
                    completed_at: now,
                    events,
                    compensated: false,
                });
                saga.step += 1;
                saga.attempts = 0;
                saga.last_error = None;
                if let Some((event, timeout)) = self.saga.await_event(step) {
                    saga.awaiting = Some(event.to_owned());
                    saga.next_run_at = now + to_chrono(timeout);
                    return enter(saga, SagaStatus::Waiting);
                }
                if saga.step as usize >= self.saga.steps() {
                    // The last step: completing is part of the same transition.
                    return enter(saga, SagaStatus::Completed);
                }
                keep(saga)
            }
            Err(error) if self.retries(&error, step, attempt) => {
                saga.last_error = Some(format!("step `{name}` attempt {attempt}: {error}"));
                self.retry_later(saga, name, attempt, now)
            }
            Err(error) => {
                let plural = if attempt == 1 { "" } else { "s" };
                compensate(
                    saga,
                    format!("step `{name}` failed after {attempt} attempt{plural}: {error}"),
                )
            }
        }
    }

    /// The compensation of the latest step not yet undone returned.
    fn compensation_ran(
        &self,
        mut saga: SagaRecord,
        result: Result<(serde_json::Value, Vec<Uuid>), StepError>,
        now: DateTime<Utc>,
    ) -> Transition {
        let Some(Ok((done, step))) = self.to_compensate(&saga) else {
            return release(saga);
        };
        let name = self.saga.step_name(step);
        let attempt = saga.attempts + 1;
        match result {
            Ok((data, events)) => {
                saga.data = data;
                let undone = &mut saga.completed[done];
                undone.compensated = true;
                undone.events.extend(events);
                saga.attempts = 0;
                keep(saga)
            }
            Err(error) => {
                saga.last_error = Some(format!(
                    "compensation of `{name}` attempt {attempt}: {error}"
                ));
                if self.retries(&error, step, attempt) {
                    self.retry_later(saga, name, attempt, now)
                } else {
                    saga.attempts = attempt;
                    enter(saga, SagaStatus::Failed)
                }
            }
        }
    }

    /// Whether a failed attempt is retried: the failure is transient and retries are left (the
    /// step's own limit, else its saga's, else the orchestrator's).
    fn retries(&self, error: &StepError, step: usize, attempt: u32) -> bool {
        let max = self
            .saga
            .max_retries(step)
            .or(self.saga.saga_max_retries())
            .unwrap_or(self.max_retries);
        error.retryable && attempt <= max
    }

    /// The saga is due again after the backoff of `attempt`; the worker lets it go.
    fn retry_later(
        &self,
        mut saga: SagaRecord,
        step: &'static str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Transition {
        saga.attempts = attempt;
        saga.next_run_at = now + to_chrono(self.backoff.delay_with(attempt, self.jitter));
        Transition {
            saga,
            then: Then::Save(Save {
                lease: Lease::Release,
                entered: None,
                retried: Some(step),
            }),
        }
    }
}

impl Machine<'_> {
    /// The latest completed step not yet compensated: its index among the completed steps, and
    /// the index of the step of that name in the definition (found by name, never by
    /// position), or why it cannot be undone under this definition.
    fn to_compensate(&self, saga: &SagaRecord) -> Option<Result<(usize, usize), String>> {
        let done = saga.completed.iter().rposition(|c| !c.compensated)?;
        let name = &saga.completed[done].step;
        Some(self.saga.position(name).map(|step| (done, step)).ok_or_else(|| {
            format!(
                "saga `{}` {}: its completed step `{name}` is not a step of version {} of its \
                 definition, so it cannot be compensated",
                saga.name,
                saga.id,
                self.saga.version()
            )
        }))
    }
}

fn run(saga: SagaRecord, step: usize, compensation: bool) -> Transition {
    let attempt = saga.attempts + 1;
    Transition {
        saga,
        then: Then::Run(Run {
            step,
            compensation,
            attempt,
        }),
    }
}

/// The saga cannot go on under its definition: parked as failed, with the reason, for an
/// operator.
pub(crate) fn park(mut saga: SagaRecord, reason: String) -> Transition {
    saga.attempts = 0;
    saga.awaiting = None;
    saga.last_error = Some(reason);
    enter(saga, SagaStatus::Failed)
}

/// Compensation starts: the worker goes on with it.
fn compensate(mut saga: SagaRecord, reason: String) -> Transition {
    saga.status = SagaStatus::Compensating;
    saga.attempts = 0;
    saga.awaiting = None;
    saga.last_error = Some(reason);
    Transition {
        saga,
        then: Then::Save(Save {
            lease: Lease::Keep,
            entered: Some(SagaStatus::Compensating),
            retried: None,
        }),
    }
}

/// The saga enters a status in which no worker holds it: over, or waiting for an event.
fn enter(mut saga: SagaRecord, status: SagaStatus) -> Transition {
    saga.status = status;
    Transition {
        saga,
        then: Then::Save(Save {
            lease: Lease::Release,
            entered: Some(status),
            retried: None,
        }),
    }
}

/// Progress within a status: saved, and the worker goes on.
fn keep(saga: SagaRecord) -> Transition {
    Transition {
        saga,
        then: Then::Save(Save {
            lease: Lease::Keep,
            entered: None,
            retried: None,
        }),
    }
}

/// Nothing changes; the worker lets the saga go.
fn release(saga: SagaRecord) -> Transition {
    Transition {
        saga,
        then: Then::Save(Save {
            lease: Lease::Release,
            entered: None,
            retried: None,
        }),
    }
}

/// A `std` duration as a `chrono` one (saturating).
pub(crate) fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests;
