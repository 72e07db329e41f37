//! The breaker and retry rows: a call through a closed `#[dtx::circuit_breaker]`, and a call
//! under `#[dtx::retry]` that succeeds at once, each against the same function called directly.

use crate::{Options, pair_batched, report};
use std::hint::black_box;

/// Calls per sample: one call is tens of nanoseconds.
const BATCH: u32 = 1000;

#[derive(Debug)]
struct Down;

impl From<dtx::breaker::BreakerOpen> for Down {
    fn from(_: dtx::breaker::BreakerOpen) -> Self {
        Down
    }
}

/// The baseline: an async no-op returning a `Result`.
#[inline(never)]
#[expect(
    clippy::unused_async,
    reason = "the twin of the async fns under the breaker and the retry"
)]
async fn plain(n: u64) -> Result<u64, Down> {
    Ok(black_box(n))
}

/// The same no-op behind a breaker that stays closed.
#[inline(never)]
#[dtx::circuit_breaker(name = "bench.closed")]
async fn guarded(n: u64) -> Result<u64, Down> {
    Ok(black_box(n))
}

/// The same no-op under a retry that is never needed.
#[inline(never)]
#[dtx::retry(attempts = 3)]
async fn retried(n: u64) -> Result<u64, Down> {
    Ok(black_box(n))
}

/// `breaker_closed_overhead` and `retry_no_failure_overhead`.
pub(crate) async fn resilience_rows(options: &Options) {
    if options.wants("breaker_closed_overhead") {
        let row = pair_batched(
            options.iterations,
            BATCH,
            async |i| {
                black_box(guarded(black_box(i)).await.ok());
            },
            async |i| {
                black_box(plain(black_box(i)).await.ok());
            },
        )
        .await;
        report(options, "breaker_closed_overhead", "direct_call", &row);
    }
    if options.wants("retry_no_failure_overhead") {
        let row = pair_batched(
            options.iterations,
            BATCH,
            async |i| {
                black_box(retried(black_box(i)).await.ok());
            },
            async |i| {
                black_box(plain(black_box(i)).await.ok());
            },
        )
        .await;
        report(options, "retry_no_failure_overhead", "direct_call", &row);
    }
}
