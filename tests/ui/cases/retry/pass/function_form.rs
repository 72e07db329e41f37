//! `#[dtx::retry]` with every option, and `Backoff::retry` on a closure.

use dtx::{Backoff, Jitter};
use std::time::Duration;

const FAST: Backoff = Backoff::new(
    Duration::from_millis(1),
    Duration::from_millis(2),
    Jitter::Full,
);

fn transient(error: &String) -> bool {
    error != "declined"
}

fn retry_after(_: &String) -> Option<Duration> {
    None
}

#[dtx::retry(attempts = 3, backoff = FAST, when = transient, retry_after = retry_after, crate = ::dtx)]
async fn fetch(sku: &str) -> Result<String, String> {
    if sku.is_empty() {
        return Err("declined".to_owned());
    }
    Ok(sku.to_uppercase())
}

fn main() {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            assert_eq!(fetch("a").await.as_deref(), Ok("A"));
            assert_eq!(fetch("").await, Err("declined".to_owned()));
            let answer = FAST.retry(2).when(transient).run(|| fetch("b")).await;
            assert_eq!(answer.as_deref(), Ok("B"));
        });
}
