//! The `dtx` operator commands linked into a service's own binary: the sagas and the projection
//! of the examples are registered, so `saga graph` draws them and `projection rebuild` runs the
//! order summaries again.
//!
//! ```sh
//! cargo run --example ops -- saga graph OrderFulfillment
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run --example ops -- status
//! ```

use dtx::projection::ProjectionRunner;
use examples::order_summaries::OrderSummaries;

fn main() -> std::process::ExitCode {
    // Links the examples' `#[saga]`s (the fulfilment saga) into this binary.
    let _ = examples::fulfillment::Fulfillment::default;
    dtx_cli::Operator::new()
        .projections(|db| {
            ProjectionRunner::new(db.events(), db.checkpoints())
                .projection(OrderSummaries::Postgres(db.pool().clone()))
        })
        .run()
}
