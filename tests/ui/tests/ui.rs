//! Compile-fail tests of `#[derive(DomainEvent)]`, `#[derive(Aggregate)]`, `#[command_handler]`,
//! `#[query_handler]`, `#[idempotent]`, `#[projection]`, `#[consumer]`, `#[saga]`,
//! `#[dtx::trace]` and `#[dtx::metric]`.
//!
//! Every `cases/<macro>/fail/<rule>.rs` must fail to compile with the `.stderr` beside it;
//! every `cases/<macro>/pass/<rule>.rs` must compile and run. After changing a message,
//! regenerate with `TRYBUILD=overwrite cargo test -p ui-tests` and read the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("cases/*/pass/*.rs");
    cases.compile_fail("cases/*/fail/*.rs");
}

// The pass cases are compiled here too, so that `cargo clippy --all-targets` lints the code the
// macros generate with the workspace's lints (clippy pedantic), as a strict user crate would.
// trybuild runs their `main`s.
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/aggregate/pass/all_options.rs"]
mod aggregate_all_options;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/aggregate/pass/no_snapshots.rs"]
mod aggregate_no_snapshots;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/breaker/pass/all_options.rs"]
mod breaker_all_options;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/command_handler/pass/all_forms.rs"]
mod command_handler_all_forms;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/consumer/pass/all_forms.rs"]
mod consumer_all_forms;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/domain_event/pass/all_options.rs"]
mod domain_event_all_options;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/domain_event/pass/personal.rs"]
mod domain_event_personal;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/domain_event/pass/upcasts.rs"]
mod domain_event_upcasts;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/idempotent/pass/all_forms.rs"]
mod idempotent_all_forms;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/metric/pass/all_forms.rs"]
mod metric_all_forms;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/projection/pass/all_options.rs"]
mod projection_all_options;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/query_handler/pass/all_forms.rs"]
mod query_handler_all_forms;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/retry/pass/function_form.rs"]
mod retry_function_form;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/saga/pass/all_options.rs"]
mod saga_all_options;
#[allow(dead_code, reason = "the case's `main` is run by trybuild, not here")]
#[path = "../cases/trace/pass/with_tracing_trace.rs"]
mod trace_with_tracing_trace;
