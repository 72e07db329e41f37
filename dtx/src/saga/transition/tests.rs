//! The state machine on its own: one case per status and outcome, no store, no clock, no steps.

#![allow(clippy::unwrap_used, reason = "test code")]

use super::*;
use crate::Jitter;
use crate::saga::runtime::Runner;
use crate::saga::{BoxFuture, SagaBuilder, StepContext, StepResult};
use chrono::TimeZone;
use serde_json::json;

const MS: Duration = Duration::from_millis(1);

/// `reserve` (compensated by `release`), `notify` (no compensation; awaits `Paid` for 60 s) and
/// `ship` (retried once, whatever the saga says).
fn definition() -> Runner<serde_json::Value> {
    Runner(
        SagaBuilder::new("Order")
            .add_step("reserve", noop)
            .add_compensation("reserve", noop)
            .add_step("notify", noop)
            .await_event("Paid", Duration::from_secs(60))
            .add_step("ship", noop)
            .step_retries(1)
            .max_retries(2)
            .deadline(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
}

fn noop<'a>(_: &'a mut serde_json::Value, _: &'a StepContext) -> BoxFuture<'a, StepResult> {
    Box::pin(async { Ok(Vec::new()) })
}

fn machine(saga: &dyn ErasedSaga) -> Machine<'_> {
    Machine {
        saga,
        max_retries: 5,
        backoff: Backoff::new(100 * MS, 10_000 * MS, Jitter::Equal),
        jitter: 0,
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn started() -> SagaRecord {
    let start = now() - chrono::Duration::seconds(10);
    SagaRecord::new(
        "Order",
        json!({"n": 0}),
        start,
        Some(start + chrono::Duration::hours(1)),
        None,
    )
}

/// A saga whose first `done` steps completed.
fn after(done: usize) -> SagaRecord {
    let mut saga = started();
    for name in ["reserve", "notify", "ship"].into_iter().take(done) {
        saga.completed.push(CompletedStep {
            step: name.to_owned(),
            completed_at: now(),
            events: Vec::new(),
            compensated: false,
        });
    }
    saga.step = u32::try_from(done).unwrap();
    saga
}

fn compensating(done: usize) -> SagaRecord {
    let mut saga = after(done);
    saga.status = SagaStatus::Compensating;
    saga.last_error = Some("step `ship` failed".to_owned());
    saga
}

fn ok(n: u32) -> Outcome {
    Outcome::Ran(Ok((json!({ "n": n }), Vec::new())))
}

fn failed() -> Outcome {
    Outcome::Ran(Err(StepError::transient("down")))
}

fn saved(lease: Lease, entered: Option<SagaStatus>) -> Then {
    Then::Save(Save {
        lease,
        entered,
        retried: None,
    })
}

#[test]
fn a_due_running_saga_runs_its_next_step() {
    let def = definition();
    let mut saga = after(1);
    saga.attempts = 2;
    let t = machine(&def).transition(saga.clone(), Outcome::Due, now());
    assert_eq!(
        t.then,
        Then::Run(Run {
            step: 1,
            compensation: false,
            attempt: 3
        })
    );
    assert_eq!(t.saga, saga, "nothing changes before the step returns");
}

#[test]
fn a_step_that_succeeds_moves_on_and_the_worker_keeps_the_saga() {
    let def = definition();
    let mut saga = started();
    saga.attempts = 1;
    saga.last_error = Some("earlier attempt".to_owned());
    let id = Uuid::now_v7();
    let t = machine(&def).transition(saga, Outcome::Ran(Ok((json!({"n": 1}), vec![id]))), now());
    assert_eq!(t.then, saved(Lease::Keep, None));
    let s = t.saga;
    assert_eq!((s.status, s.step, s.attempts), (SagaStatus::Running, 1, 0));
    assert_eq!(s.data, json!({"n": 1}));
    assert_eq!(s.last_error, None);
    assert_eq!(
        s.completed,
        [CompletedStep {
            step: "reserve".to_owned(),
            completed_at: now(),
            events: vec![id],
            compensated: false,
        }]
    );
}

#[test]
fn a_step_that_awaits_an_event_waits_until_its_timeout() {
    let def = definition();
    let t = machine(&def).transition(after(1), ok(2), now());
    assert_eq!(
        t.then,
        saved(Lease::Release, Some(SagaStatus::Waiting)),
        "a waiting saga is let go"
    );
    let s = t.saga;
    assert_eq!((s.status, s.step), (SagaStatus::Waiting, 2));
    assert_eq!(s.awaiting.as_deref(), Some("Paid"));
    assert_eq!(s.next_run_at, now() + chrono::Duration::seconds(60));
}

#[test]
fn the_last_step_completes_the_saga_in_the_same_transition() {
    let def = definition();
    let t = machine(&def).transition(after(2), ok(3), now());
    assert_eq!(t.then, saved(Lease::Release, Some(SagaStatus::Completed)));
    assert_eq!((t.saga.status, t.saga.step), (SagaStatus::Completed, 3));
    assert_eq!(t.saga.completed.len(), 3);
}

#[test]
fn a_saga_with_no_step_left_completes() {
    let def = definition();
    let mut saga = after(3);
    saga.last_error = Some("stale".to_owned());
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Release, Some(SagaStatus::Completed)));
    assert_eq!(t.saga.last_error, None);
}

#[test]
fn a_failed_step_with_retries_left_is_due_again_after_the_backoff() {
    let def = definition();
    let mut saga = started();
    saga.attempts = 1;
    let mut m = machine(&def);
    let t = m.transition(saga.clone(), failed(), now());
    assert_eq!(
        t.then,
        Then::Save(Save {
            lease: Lease::Release,
            entered: None,
            retried: Some("reserve"),
        })
    );
    let s = t.saga;
    assert_eq!((s.status, s.step, s.attempts), (SagaStatus::Running, 0, 2));
    assert_eq!(
        s.last_error.as_deref(),
        Some("step `reserve` attempt 2: down")
    );
    // Attempt 2's ceiling is 200 ms; equal jitter with the lowest draw waits half of it.
    assert_eq!(s.next_run_at, now() + chrono::Duration::milliseconds(100));
    m.jitter = u64::MAX;
    let later = m.transition(saga, failed(), now()).saga.next_run_at;
    assert!(
        later > now() + chrono::Duration::milliseconds(199),
        "{later}"
    );
    assert!(
        later < now() + chrono::Duration::milliseconds(200),
        "{later}"
    );
}

#[test]
fn a_step_out_of_retries_starts_compensation_and_the_worker_goes_on() {
    let def = definition();
    let mut saga = after(1);
    saga.attempts = 2; // the saga allows 2 retries: this was the third attempt
    let t = machine(&def).transition(saga, failed(), now());
    assert_eq!(t.then, saved(Lease::Keep, Some(SagaStatus::Compensating)));
    let s = t.saga;
    assert_eq!((s.status, s.attempts), (SagaStatus::Compensating, 0));
    assert_eq!(
        s.last_error.as_deref(),
        Some("step `notify` failed after 3 attempts: down")
    );
}

#[test]
fn a_steps_own_retry_limit_wins_over_the_sagas() {
    let def = definition();
    let mut saga = after(2);
    saga.attempts = 1; // `ship` allows 1 retry
    let t = machine(&def).transition(saga, failed(), now());
    assert_eq!(t.saga.status, SagaStatus::Compensating);
    assert_eq!(
        t.saga.last_error.as_deref(),
        Some("step `ship` failed after 2 attempts: down")
    );
}

#[test]
fn a_permanent_failure_compensates_at_once() {
    let def = definition();
    let outcome = Outcome::Ran(Err(StepError::permanent("card refused")));
    let t = machine(&def).transition(after(1), outcome, now());
    assert_eq!(t.then, saved(Lease::Keep, Some(SagaStatus::Compensating)));
    assert_eq!(
        t.saga.last_error.as_deref(),
        Some("step `notify` failed after 1 attempt: card refused")
    );
}

#[test]
fn a_passed_deadline_starts_compensation() {
    let def = definition();
    let mut saga = after(1);
    saga.deadline = Some(now());
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Keep, Some(SagaStatus::Compensating)));
    assert_eq!(
        t.saga.last_error.as_deref(),
        Some("the saga's deadline passed")
    );
}

#[test]
fn a_waiting_saga_that_comes_due_timed_out_and_compensates() {
    let def = definition();
    let mut saga = after(2);
    saga.status = SagaStatus::Waiting;
    saga.awaiting = Some("Paid".to_owned());
    saga.attempts = 3;
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Keep, Some(SagaStatus::Compensating)));
    let s = t.saga;
    assert_eq!(
        (s.status, s.attempts, s.awaiting),
        (SagaStatus::Compensating, 0, None)
    );
    assert_eq!(
        s.last_error.as_deref(),
        Some("no `Paid` event arrived in time")
    );
}

#[test]
fn compensation_undoes_the_latest_step_first_and_skips_steps_without_one() {
    let def = definition();
    // `notify` has no compensation: it is marked undone without running anything.
    let t = machine(&def).transition(compensating(2), Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Keep, None));
    let flags: Vec<bool> = t.saga.completed.iter().map(|c| c.compensated).collect();
    assert_eq!(flags, [false, true]);
    // Then `reserve`'s compensation runs.
    let t = machine(&def).transition(t.saga, Outcome::Due, now());
    assert_eq!(
        t.then,
        Then::Run(Run {
            step: 0,
            compensation: true,
            attempt: 1
        })
    );
}

#[test]
fn compensation_finds_the_step_to_undo_by_name_not_by_position() {
    let def = definition();
    // Completed in an order that is not the definition's: `reserve` (index 0) last.
    let mut saga = compensating(2);
    saga.completed.swap(0, 1);
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(
        t.then,
        Then::Run(Run {
            step: 0,
            compensation: true,
            attempt: 1
        }),
        "`reserve`'s compensation, found by name"
    );
    let t = machine(&def).transition(t.saga, ok(7), now());
    let flags: Vec<(&str, bool)> = t
        .saga
        .completed
        .iter()
        .map(|c| (c.step.as_str(), c.compensated))
        .collect();
    assert_eq!(flags, [("notify", false), ("reserve", true)]);
}

#[test]
fn a_completed_step_the_definition_does_not_have_parks_the_saga() {
    let def = definition();
    let mut saga = compensating(1);
    saga.completed[0].step = "reserve_v0".to_owned();
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Release, Some(SagaStatus::Failed)));
    let error = t.saga.last_error.unwrap_or_default();
    assert!(
        error.contains("completed step `reserve_v0` is not a step of version 1"),
        "{error}"
    );
}

#[test]
fn a_compensation_that_succeeds_marks_its_step_undone() {
    let def = definition();
    let mut saga = compensating(1);
    saga.attempts = 1;
    let id = Uuid::now_v7();
    let t = machine(&def).transition(saga, Outcome::Ran(Ok((json!({"n": -1}), vec![id]))), now());
    assert_eq!(t.then, saved(Lease::Keep, None));
    let s = t.saga;
    assert_eq!((s.status, s.attempts), (SagaStatus::Compensating, 0));
    assert!(s.completed[0].compensated);
    assert_eq!(s.completed[0].events, [id]);
    assert_eq!(s.data, json!({"n": -1}));
}

#[test]
fn a_failing_compensation_is_retried_then_fails_the_saga() {
    let def = definition();
    let mut saga = compensating(1);
    saga.attempts = 1;
    let t = machine(&def).transition(saga, failed(), now());
    assert_eq!(
        t.then,
        Then::Save(Save {
            lease: Lease::Release,
            entered: None,
            retried: Some("reserve"),
        })
    );
    assert_eq!(
        (t.saga.status, t.saga.attempts),
        (SagaStatus::Compensating, 2)
    );
    assert_eq!(
        t.saga.next_run_at,
        now() + chrono::Duration::milliseconds(100)
    );

    let t = machine(&def).transition(t.saga, failed(), now());
    assert_eq!(t.then, saved(Lease::Release, Some(SagaStatus::Failed)));
    let s = t.saga;
    assert_eq!((s.status, s.attempts), (SagaStatus::Failed, 3));
    assert!(!s.completed[0].compensated);
    assert_eq!(
        s.last_error.as_deref(),
        Some("compensation of `reserve` attempt 3: down")
    );
}

#[test]
fn a_saga_with_nothing_left_to_undo_is_compensated() {
    let def = definition();
    let mut saga = compensating(1);
    saga.completed[0].compensated = true;
    let t = machine(&def).transition(saga, Outcome::Due, now());
    assert_eq!(t.then, saved(Lease::Release, Some(SagaStatus::Compensated)));
    assert_eq!(t.saga.status, SagaStatus::Compensated);
}

#[test]
fn a_finished_saga_is_let_go_unchanged() {
    let def = definition();
    for status in [
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ] {
        let mut saga = after(1);
        saga.status = status;
        for outcome in [Outcome::Due, ok(9)] {
            let t = machine(&def).transition(saga.clone(), outcome, now());
            assert_eq!(t.then, saved(Lease::Release, None));
            assert_eq!(t.saga, saga);
        }
    }
}
