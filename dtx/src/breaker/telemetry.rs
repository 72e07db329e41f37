//! State changes and rejections as `tracing` events and OpenTelemetry metrics.

use super::BreakerState;
use super::state::Transition;

pub(super) fn transition(name: &str, Transition { from, to }: Transition) {
    if to == BreakerState::Open {
        tracing::warn!(
            target: "dtx::breaker",
            breaker = name,
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker opened",
        );
    } else {
        tracing::info!(
            target: "dtx::breaker",
            breaker = name,
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker {}",
            if to == BreakerState::Closed { "closed" } else { "half-open" },
        );
    }
    state(name, to);
    #[cfg(feature = "otel")]
    instruments::get().transitions.add(
        1,
        &[
            opentelemetry::KeyValue::new("breaker", name.to_owned()),
            opentelemetry::KeyValue::new("from", from.as_str()),
            opentelemetry::KeyValue::new("to", to.as_str()),
        ],
    );
}

pub(super) fn state(name: &str, state: BreakerState) {
    #[cfg(feature = "otel")]
    instruments::get().state.record(
        state.level(),
        &[opentelemetry::KeyValue::new("breaker", name.to_owned())],
    );
    #[cfg(not(feature = "otel"))]
    let _ = (name, state.level());
}

pub(super) fn rejected(name: &str) {
    tracing::debug!(target: "dtx::breaker", breaker = name, "call rejected by an open circuit breaker");
    #[cfg(feature = "otel")]
    instruments::get().rejected.add(
        1,
        &[opentelemetry::KeyValue::new("breaker", name.to_owned())],
    );
}

#[cfg(feature = "otel")]
mod instruments {
    use opentelemetry::metrics::{Counter, Gauge};
    use std::sync::OnceLock;

    pub(super) struct Instruments {
        pub(super) state: Gauge<u64>,
        pub(super) transitions: Counter<u64>,
        pub(super) rejected: Counter<u64>,
    }

    pub(super) fn get() -> &'static Instruments {
        static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
        INSTRUMENTS.get_or_init(|| {
            let meter = opentelemetry::global::meter("dtx");
            Instruments {
                state: meter
                    .u64_gauge("dtx.breaker.state")
                    .with_description("Circuit breaker state: 0 closed, 1 half-open, 2 open")
                    .build(),
                transitions: meter
                    .u64_counter("dtx.breaker.transitions")
                    .with_description("Circuit breaker state changes")
                    .build(),
                rejected: meter
                    .u64_counter("dtx.breaker.rejected")
                    .with_description("Calls refused by an open circuit breaker")
                    .build(),
            }
        })
    }
}
