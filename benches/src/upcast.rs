//! `load_1000_upcast`: loading an aggregate of 1000 events stored at schema version 1, each
//! upcast through two JSON steps to version 3, against loading the same events stored at
//! version 3; `load_1000_upcast_typed`: the same through typed old versions (`From`).

use crate::{BoxError, Options, pair, report};
use dtx::{Aggregate, Apply, DomainEvent, EventStore, ExpectedVersion, NewEvent, Repository};
use dtx_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Version 3: the amount in cents with its currency.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credited {
    cents: u64,
    currency: String,
    memo: String,
}

/// Version 1 stored `amount`; version 2 renamed it `cents`.
fn v1_to_v2(mut v1: Value) -> Value {
    if let Some(fields) = v1.as_object_mut()
        && let Some(amount) = fields.remove("amount")
    {
        fields.insert("cents".to_owned(), amount);
    }
    v1
}

/// Version 3 added the currency: every older credit was in euros.
fn v2_to_v3(mut v2: Value) -> Value {
    if let Some(fields) = v2.as_object_mut() {
        fields.insert("currency".to_owned(), json!("EUR"));
    }
    v2
}

#[derive(Debug, Clone, DomainEvent)]
enum LedgerEvent {
    #[event(version = 3, upcast(from = 1, with = v1_to_v2), upcast(from = 2, with = v2_to_v3))]
    Credited(Credited),
}

/// The same event through typed old versions.
#[derive(Debug, Clone, Deserialize)]
struct CreditedV1 {
    amount: u64,
    memo: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CreditedV2 {
    cents: u64,
    memo: String,
}

impl From<CreditedV1> for CreditedV2 {
    fn from(v1: CreditedV1) -> Self {
        Self {
            cents: v1.amount,
            memo: v1.memo,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TypedCredited {
    cents: u64,
    currency: String,
    memo: String,
}

impl From<CreditedV2> for TypedCredited {
    fn from(v2: CreditedV2) -> Self {
        Self {
            cents: v2.cents,
            currency: "EUR".to_owned(),
            memo: v2.memo,
        }
    }
}

#[derive(Debug, Clone, DomainEvent)]
enum TypedLedgerEvent {
    #[event(
        name = "TypedCredited",
        version = 3,
        upcast(from = 1, type = CreditedV1),
        upcast(from = 2, type = CreditedV2)
    )]
    Credited(TypedCredited),
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = LedgerEvent, snapshots = false)]
struct Ledger {
    id: dtx::Id<Ledger>,
    cents: u64,
}

impl Apply<Credited> for Ledger {
    fn apply(&mut self, event: &Credited) {
        self.cents += event.cents;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = TypedLedgerEvent, snapshots = false)]
struct TypedLedger {
    id: dtx::Id<TypedLedger>,
    cents: u64,
}

impl Apply<TypedCredited> for TypedLedger {
    fn apply(&mut self, event: &TypedCredited) {
        self.cents += event.cents;
    }
}

fn memo(n: u64) -> String {
    format!("monthly deposit number {n} for the benchmark account, ref {n:08}")
}

/// Appends 1000 events to `stream` as an old deploy would have: `(type, version, payload)`.
async fn store_1000(
    store: &PgEventStore,
    stream: &dtx::StreamId,
    event_type: &str,
    version: u32,
    payload: impl Fn(u64) -> Value,
) -> Result<(), BoxError> {
    for k in 0..10 {
        let events = (0..100)
            .map(|j| {
                let mut event = NewEvent::from_json(event_type, &payload(k * 100 + j))?;
                event.schema_version = version;
                Ok(event)
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        store.append(stream, ExpectedVersion::Any, events).await?;
    }
    Ok(())
}

/// `load_1000_upcast` and `load_1000_upcast_typed`.
pub(crate) async fn upcast_rows(options: &Options, store: &PgEventStore) -> Result<(), BoxError> {
    let n = options.iterations / 4;
    let v1 = |i: u64| json!({ "amount": i, "memo": memo(i) });
    let v3 = |i: u64| json!({ "cents": i, "currency": "EUR", "memo": memo(i) });

    if options.wants("load_1000_upcast") {
        let ledgers = Repository::<Ledger>::new(store.clone());
        let (old, current) = (dtx::Id::<Ledger>::new(), dtx::Id::<Ledger>::new());
        store_1000(store, &Ledger::stream_id(&old)?, "Credited", 1, v1).await?;
        store_1000(store, &Ledger::stream_id(&current)?, "Credited", 3, v3).await?;
        let expected = (0..1000).sum::<u64>();
        let load = |id| {
            let ledgers = &ledgers;
            async move {
                let loaded = ledgers.load(&id).await.expect("load");
                assert_eq!((loaded.version(), loaded.state().cents), (1000, expected));
            }
        };
        if options
            .filter
            .as_deref()
            .is_none_or(|f| "load_1000_upcast".contains(f))
        {
            let row = pair(n, async |_| load(old).await, async |_| load(current).await).await;
            report(options, "load_1000_upcast", "load_1000_at_version_3", &row);
        }
    }

    if options.wants("load_1000_upcast_typed") {
        let ledgers = Repository::<TypedLedger>::new(store.clone());
        let (old, current) = (dtx::Id::<TypedLedger>::new(), dtx::Id::<TypedLedger>::new());
        let stream = TypedLedger::stream_id(&old)?;
        store_1000(store, &stream, "TypedCredited", 1, v1).await?;
        let stream = TypedLedger::stream_id(&current)?;
        store_1000(store, &stream, "TypedCredited", 3, v3).await?;
        let expected = (0..1000).sum::<u64>();
        let load = |id| {
            let ledgers = &ledgers;
            async move {
                let loaded = ledgers.load(&id).await.expect("load");
                assert_eq!((loaded.version(), loaded.state().cents), (1000, expected));
            }
        };
        let row = pair(n, async |_| load(old).await, async |_| load(current).await).await;
        report(
            options,
            "load_1000_upcast_typed",
            "load_1000_at_version_3",
            &row,
        );
    }
    Ok(())
}
