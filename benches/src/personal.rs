//! `append_1_personal`: appending one event with a personal field (sealed with its subject's
//! key, the key cached after the first append) against the same event with that field in
//! clear, both through the event store.

use crate::{BoxError, Options, pair, report};
use dtx::personal::Personal;
use dtx::{DomainEvent, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::PgEventStore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registered {
    customer_id: String,
    name: Personal<String>,
    memo: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum CustomerEvent {
    #[event(personal(subject = customer_id))]
    Registered(Registered),
}

/// The same event with the name in clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlainRegistered {
    customer_id: String,
    name: String,
    memo: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum PlainCustomerEvent {
    Registered(PlainRegistered),
}

fn memo(n: u64) -> String {
    format!("registration number {n} for the benchmark customer, ref {n:08}")
}

/// `append_1_personal`.
pub(crate) async fn personal_rows(options: &Options, store: &PgEventStore) -> Result<(), BoxError> {
    if !options.wants("append_1_personal") {
        return Ok(());
    }
    let personal = StreamId::new("Bench-personal-1")?;
    let plain = StreamId::new("Bench-plain-1")?;
    let row = pair(
        options.iterations,
        async |i| {
            let event = CustomerEvent::Registered(Registered {
                customer_id: "customer-1".to_owned(),
                name: Personal::new(format!("Ada Lovelace {i}")),
                memo: memo(i),
            });
            let event =
                NewEvent::encode(&personal, &event, EventMetadata::default()).expect("encodes");
            store
                .append(&personal, ExpectedVersion::Exact(i), vec![event])
                .await
                .expect("append");
        },
        async |i| {
            let event = PlainCustomerEvent::Registered(PlainRegistered {
                customer_id: "customer-1".to_owned(),
                name: format!("Ada Lovelace {i}"),
                memo: memo(i),
            });
            let event =
                NewEvent::encode(&plain, &event, EventMetadata::default()).expect("encodes");
            store
                .append(&plain, ExpectedVersion::Exact(i), vec![event])
                .await
                .expect("append");
        },
    )
    .await;
    report(options, "append_1_personal", "append_1_plain", &row);
    Ok(())
}
