//! The runtime's metric instruments; see the table in the module docs.

use std::time::Duration;

#[cfg(feature = "otel")]
mod instruments {
    use opentelemetry::metrics::{Counter, Histogram};
    use std::sync::OnceLock;

    /// Every instrument, created once from the global meter.
    pub(super) struct Instruments {
        pub(super) commands_executed: Counter<u64>,
        pub(super) commands_failed: Counter<u64>,
        pub(super) command_duration: Histogram<f64>,
        pub(super) append_duration: Histogram<f64>,
        pub(super) append_batch_size: Histogram<u64>,
        pub(super) append_conflicts: Counter<u64>,
        pub(super) saga_transitions: Counter<u64>,
        pub(super) saga_step_retries: Counter<u64>,
        pub(super) outbox_lag: Histogram<f64>,
        pub(super) outbox_dead_letters: Counter<u64>,
        pub(super) idempotency_replays: Counter<u64>,
        pub(super) idempotency_conflicts: Counter<u64>,
        pub(super) function_duration: Histogram<f64>,
        pub(super) function_errors: Counter<u64>,
        pub(super) projection_events: Counter<u64>,
        pub(super) projection_lag: Histogram<f64>,
        pub(super) projection_lag_events: Histogram<u64>,
        pub(super) projection_failures: Counter<u64>,
        pub(super) inbox_messages: Counter<u64>,
        pub(super) inbox_duration: Histogram<f64>,
        pub(super) inbox_dead_letters: Counter<u64>,
    }

    pub(super) fn get() -> &'static Instruments {
        static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
        INSTRUMENTS.get_or_init(|| {
            let meter = opentelemetry::global::meter("dtx");
            let counter = |name: &'static str, description: &'static str| {
                meter
                    .u64_counter(name)
                    .with_description(description)
                    .build()
            };
            let seconds = |name: &'static str, description: &'static str| {
                meter
                    .f64_histogram(name)
                    .with_unit("s")
                    .with_description(description)
                    .build()
            };
            Instruments {
                commands_executed: counter("dtx.commands.executed", "Commands handled"),
                commands_failed: counter("dtx.commands.failed", "Commands that returned an error"),
                command_duration: seconds("dtx.command.duration", "Command handling time"),
                append_duration: seconds("dtx.append.duration", "Event append latency"),
                append_batch_size: meter
                    .u64_histogram("dtx.append.batch_size")
                    .with_unit("{event}")
                    .with_description("Events per append")
                    .build(),
                append_conflicts: counter(
                    "dtx.append.conflicts",
                    "Appends refused by a version conflict",
                ),
                saga_transitions: counter("dtx.saga.transitions", "Sagas entering a status"),
                saga_step_retries: counter(
                    "dtx.saga.step.retries",
                    "Saga steps scheduled again after a failure",
                ),
                outbox_lag: seconds(
                    "dtx.outbox.lag",
                    "Time from writing an outbox message to its broker's acknowledgement",
                ),
                outbox_dead_letters: counter(
                    "dtx.outbox.dead_letters",
                    "Outbox messages dead-lettered after their retries",
                ),
                idempotency_replays: counter(
                    "dtx.idempotency.replays",
                    "Idempotent calls answered from a stored result",
                ),
                idempotency_conflicts: counter(
                    "dtx.idempotency.conflicts",
                    "Idempotent calls refused",
                ),
                function_duration: seconds(
                    "dtx.function.duration",
                    "Duration of #[dtx::trace] functions",
                ),
                function_errors: counter(
                    "dtx.function.errors",
                    "Err returns of #[dtx::trace] functions",
                ),
                projection_events: counter(
                    "dtx.projection.events",
                    "Events applied by projections",
                ),
                projection_lag: seconds(
                    "dtx.projection.lag",
                    "Time from an event's commit to its projection's batch commit",
                ),
                projection_lag_events: meter
                    .u64_histogram("dtx.projection.lag_events")
                    .with_unit("{event}")
                    .with_description("Events of the feed a projection still had to read")
                    .build(),
                projection_failures: counter(
                    "dtx.projection.failures",
                    "Projections stopped at an event they could not apply",
                ),
                inbox_messages: counter(
                    "dtx.inbox.messages",
                    "Deliveries handled by consumers, by outcome",
                ),
                inbox_duration: seconds(
                    "dtx.inbox.duration",
                    "Time to handle one delivery and commit it with its inbox record",
                ),
                inbox_dead_letters: counter(
                    "dtx.inbox.dead_letters",
                    "Messages consumers gave up on",
                ),
            }
        })
    }
}

#[cfg(feature = "otel")]
use opentelemetry::KeyValue;

/// A command handler ran for `command` (its type name) in `duration`; `failure` is the outcome
/// of an error (`invalid`, `rejected`, `conflict`, `not_applicable`, `error`), `None` on success.
#[inline]
pub fn record_command(command: &'static str, duration: Duration, failure: Option<&'static str>) {
    #[cfg(feature = "otel")]
    {
        let i = instruments::get();
        let attributes = [KeyValue::new("command", command)];
        i.commands_executed.add(1, &attributes);
        i.command_duration
            .record(duration.as_secs_f64(), &attributes);
        if let Some(outcome) = failure {
            i.commands_failed.add(
                1,
                &[
                    KeyValue::new("command", command),
                    KeyValue::new("outcome", outcome),
                ],
            );
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (command, duration, failure);
}

/// `events` events of an `aggregate` type were appended in `duration`.
#[inline]
pub fn record_append(aggregate: &'static str, events: usize, duration: Duration) {
    #[cfg(feature = "otel")]
    {
        let i = instruments::get();
        let attributes = [KeyValue::new("aggregate", aggregate)];
        i.append_duration
            .record(duration.as_secs_f64(), &attributes);
        i.append_batch_size
            .record(u64::try_from(events).unwrap_or(u64::MAX), &attributes);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (aggregate, events, duration);
}

/// An append to an `aggregate` stream met another writer's version.
#[inline]
pub fn record_append_conflict(aggregate: &'static str) {
    #[cfg(feature = "otel")]
    instruments::get()
        .append_conflicts
        .add(1, &[KeyValue::new("aggregate", aggregate)]);
    #[cfg(not(feature = "otel"))]
    let _ = aggregate;
}

/// A saga named `saga` entered `status` (`running` when it starts).
#[inline]
pub fn record_saga_transition(saga: &str, status: &'static str) {
    #[cfg(feature = "otel")]
    instruments::get().saga_transitions.add(
        1,
        &[
            KeyValue::new("saga", saga.to_owned()),
            KeyValue::new("status", status),
        ],
    );
    #[cfg(not(feature = "otel"))]
    let _ = (saga, status);
}

/// A failed step (or compensation) `step` of saga `saga` was scheduled again.
#[inline]
pub fn record_saga_step_retry(saga: &str, step: &'static str) {
    #[cfg(feature = "otel")]
    instruments::get().saga_step_retries.add(
        1,
        &[
            KeyValue::new("saga", saga.to_owned()),
            KeyValue::new("step", step),
        ],
    );
    #[cfg(not(feature = "otel"))]
    let _ = (saga, step);
}

/// An outbox message of `stream` reached its broker `lag` after it was written.
#[inline]
pub fn record_outbox_published(lag: Duration) {
    #[cfg(feature = "otel")]
    instruments::get().outbox_lag.record(lag.as_secs_f64(), &[]);
    #[cfg(not(feature = "otel"))]
    let _ = lag;
}

/// An outbox message was dead-lettered.
#[inline]
pub fn record_outbox_dead_letter() {
    #[cfg(feature = "otel")]
    instruments::get().outbox_dead_letters.add(1, &[]);
}

/// An idempotent call returned a stored result.
#[inline]
pub fn record_idempotency_replay() {
    #[cfg(feature = "otel")]
    instruments::get().idempotency_replays.add(1, &[]);
}

/// An idempotent call was refused: `reason` is `key_reused` or `in_flight`.
#[inline]
pub fn record_idempotency_conflict(reason: &'static str) {
    #[cfg(feature = "otel")]
    instruments::get()
        .idempotency_conflicts
        .add(1, &[KeyValue::new("reason", reason)]);
    #[cfg(not(feature = "otel"))]
    let _ = reason;
}

/// A `#[dtx::trace]` function named `function` returned after `duration`, with an `Err` if
/// `error`.
#[inline]
pub fn record_function(function: &'static str, duration: Duration, error: bool) {
    #[cfg(feature = "otel")]
    {
        let i = instruments::get();
        let attributes = [KeyValue::new("code.function.name", function)];
        i.function_duration
            .record(duration.as_secs_f64(), &attributes);
        if error {
            i.function_errors.add(1, &attributes);
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (function, duration, error);
}

/// Projection `name` committed a batch of `events` events, the oldest recorded `lag` before
/// the commit, with `behind` events of the feed still after the batch when it was read.
#[inline]
pub fn record_projection_batch(name: &str, events: usize, lag: Duration, behind: usize) {
    #[cfg(feature = "otel")]
    {
        let i = instruments::get();
        let attributes = [KeyValue::new("projection", name.to_owned())];
        i.projection_events
            .add(u64::try_from(events).unwrap_or(u64::MAX), &attributes);
        i.projection_lag.record(lag.as_secs_f64(), &attributes);
        i.projection_lag_events
            .record(u64::try_from(behind).unwrap_or(u64::MAX), &attributes);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (name, events, lag, behind);
}

/// Projection `name` stopped at an event it could not apply.
#[inline]
pub fn record_projection_failure(name: &str) {
    #[cfg(feature = "otel")]
    instruments::get()
        .projection_failures
        .add(1, &[KeyValue::new("projection", name.to_owned())]);
    #[cfg(not(feature = "otel"))]
    let _ = name;
}

/// Consumer `consumer` handled a delivery with `outcome` (`applied`, `ignored`, `duplicate`,
/// `failed`, `poison`) in `duration`.
#[inline]
pub fn record_inbox_message(consumer: &str, outcome: &'static str, duration: Duration) {
    #[cfg(feature = "otel")]
    {
        let i = instruments::get();
        i.inbox_messages.add(
            1,
            &[
                KeyValue::new("consumer", consumer.to_owned()),
                KeyValue::new("outcome", outcome),
            ],
        );
        i.inbox_duration.record(
            duration.as_secs_f64(),
            &[KeyValue::new("consumer", consumer.to_owned())],
        );
    }
    #[cfg(not(feature = "otel"))]
    let _ = (consumer, outcome, duration);
}

/// Consumer `consumer` dead-lettered a message.
#[inline]
pub fn record_inbox_dead_letter(consumer: &str) {
    #[cfg(feature = "otel")]
    instruments::get()
        .inbox_dead_letters
        .add(1, &[KeyValue::new("consumer", consumer.to_owned())]);
    #[cfg(not(feature = "otel"))]
    let _ = consumer;
}
