//! Personal data on both backends: values of `Personal<T>` fields are never stored in clear
//! (events, their outbox copies, snapshots, any table), read back while their subject's key
//! exists, and read as forgotten through every read path once `forget` deleted it — repository
//! loads with and without a snapshot, stream reads, the feed, a projection and its rebuild —
//! while the other fields and the other subjects stay readable. The relay publishes the sealed
//! form, which a consumer decodes as sealed.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::similar_names,
    clippy::unused_async,
    reason = "tests"
)]

use dtx::inbox::InboundMessage;
use dtx::outbox::{MemoryOutbox, MemoryPublisher, RelayOptions};
use dtx::personal::{MasterKey, Personal, PersonalData};
use dtx::projection::{MemoryCheckpointStore, ProjectionRunner, SharedCheckpointStore};
use dtx::{
    Aggregate, Apply, DomainEvent, EventStore, GlobalPosition, Id, MemoryEventStore, RecordedEvent,
    Repository, StreamId,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registered {
    customer_id: String,
    name: Personal<String>,
    email: Personal<String>,
    tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Renamed {
    customer_id: String,
    name: Personal<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upgraded {
    tier: String,
}

#[derive(Debug, Clone, DomainEvent)]
#[event(schema = false)]
enum CustomerEvent {
    #[event(name = "customer.registered", personal(subject = customer_id))]
    Registered(Registered),
    #[event(name = "customer.renamed", personal(subject = customer_id))]
    Renamed(Renamed),
    #[event(name = "customer.upgraded")]
    Upgraded(Upgraded),
}

/// A customer, snapshotted every 2 events: the snapshot holds the name, sealed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = CustomerEvent, snapshot_every = 2)]
struct Customer {
    id: Id<Customer>,
    name: Personal<String>,
    tier: String,
    events: u32,
}

impl Apply<Registered> for Customer {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
        self.tier.clone_from(&event.tier);
        self.events += 1;
    }
}

impl Apply<Renamed> for Customer {
    fn apply(&mut self, event: &Renamed) {
        self.name = event.name.clone();
        self.events += 1;
    }
}

impl Apply<Upgraded> for Customer {
    fn apply(&mut self, event: &Upgraded) {
        self.tier.clone_from(&event.tier);
        self.events += 1;
    }
}

/// The same customer's stream replayed from its events alone (no snapshot).
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = CustomerEvent, name = "Customer", snapshots = false)]
struct ReplayedCustomer {
    id: Id<ReplayedCustomer>,
    name: Personal<String>,
    tier: String,
}

impl Apply<Registered> for ReplayedCustomer {
    fn apply(&mut self, event: &Registered) {
        self.name = event.name.clone();
        self.tier.clone_from(&event.tier);
    }
}

impl Apply<Renamed> for ReplayedCustomer {
    fn apply(&mut self, event: &Renamed) {
        self.name = event.name.clone();
    }
}

impl Apply<Upgraded> for ReplayedCustomer {
    fn apply(&mut self, event: &Upgraded) {
        self.tier.clone_from(&event.tier);
    }
}

/// What the projection's handlers were given: (subject, name or `None` when forgotten, tier).
type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

#[derive(Clone, Default)]
struct CustomerNames(Seen);

#[dtx::projection(name = "customer_names", subscription)]
impl CustomerNames {
    async fn registered(&self, event: &Registered, _: &RecordedEvent) -> Result<(), String> {
        self.0.lock().unwrap().push((
            event.customer_id.clone(),
            event.name.get().cloned(),
            event.tier.clone(),
        ));
        Ok(())
    }
}

/// Values in clear that no stored byte may hold.
const ADA: &str = "Ada Lovelace 7f3a";
const ADA_EMAIL: &str = "ada.7f3a@example.org";
const ADA_RENAMED: &str = "Ada King 7f3a";
const GRACE: &str = "Grace Hopper 9c2e";

struct Customers {
    ada: Id<Customer>,
    grace: Id<Customer>,
}

/// Registers Ada (then renames her, then upgrades her: 3 events, a snapshot at 2) and Grace.
async fn register(store: &Arc<dyn EventStore>) -> Customers {
    let customers = Repository::<Customer>::shared(Arc::clone(store), &dtx::DtxConfig::default());
    let (ada, grace) = (Id::<Customer>::new(), Id::<Customer>::new());
    for (id, name, email) in [(ada, ADA, ADA_EMAIL), (grace, GRACE, "grace@example.org")] {
        let mut customer = customers.load(&id).await.unwrap();
        customer
            .record([Registered {
                customer_id: id.to_string(),
                name: Personal::new(name.to_owned()),
                email: Personal::new(email.to_owned()),
                tier: "silver".to_owned(),
            }])
            .unwrap();
        customers.save(&mut customer).await.unwrap();
    }
    let mut customer = customers.load(&ada).await.unwrap();
    customer
        .record([Renamed {
            customer_id: ada.to_string(),
            name: Personal::new(ADA_RENAMED.to_owned()),
        }])
        .unwrap();
    customers.save(&mut customer).await.unwrap();
    let mut customer = customers.load(&ada).await.unwrap();
    customer
        .record([Upgraded {
            tier: "gold".to_owned(),
        }])
        .unwrap();
    customers.save(&mut customer).await.unwrap();
    Customers { ada, grace }
}

/// Every decoded event of a stream, read with and without metadata (both must agree).
async fn events_of(store: &Arc<dyn EventStore>, stream: &StreamId) -> Vec<CustomerEvent> {
    let read: Vec<CustomerEvent> = store
        .read_stream(stream, 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    let data: Vec<CustomerEvent> = store
        .read_stream_data(stream, 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode(stream).unwrap())
        .collect();
    assert_eq!(format!("{read:?}"), format!("{data:?}"));
    read
}

fn names(events: &[CustomerEvent]) -> Vec<Option<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            CustomerEvent::Registered(r) => Some(r.name.get().cloned()),
            CustomerEvent::Renamed(r) => Some(r.name.get().cloned()),
            CustomerEvent::Upgraded(_) => None,
        })
        .collect()
}

fn text(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

/// The contract both backends pass. `stored` returns every text the backend stores (every
/// table, every payload, every copy), searched for values in clear.
async fn forgetting_a_person<F, Fut>(
    store: Arc<dyn EventStore>,
    checkpoints: SharedCheckpointStore,
    stored: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let Customers { ada, grace } = register(&store).await;
    let (ada_stream, grace_stream) = (
        Customer::stream_id(&ada).unwrap(),
        Customer::stream_id(&grace).unwrap(),
    );
    let assert_nothing_in_clear = async || {
        let texts = stored().await;
        assert!(!texts.is_empty());
        for value in [ADA, ADA_EMAIL, ADA_RENAMED, GRACE] {
            assert!(
                texts.iter().all(|t| !t.contains(value)),
                "`{value}` is stored in clear"
            );
        }
    };
    assert_nothing_in_clear().await;

    // Readable while the keys exist: loads (from the snapshot at 2, plus one event), stream
    // reads, the feed, a projection.
    let customers = Repository::<Customer>::shared(Arc::clone(&store), &dtx::DtxConfig::default());
    let loaded = customers.load(&ada).await.unwrap();
    assert_eq!(loaded.version(), 3);
    assert_eq!(
        loaded.state().name.get().map(String::as_str),
        Some(ADA_RENAMED)
    );
    assert_eq!(
        (loaded.state().tier.as_str(), loaded.state().events),
        ("gold", 3)
    );
    assert!(store.load_snapshot(&ada_stream).await.unwrap().is_some());
    assert_eq!(
        names(&events_of(&store, &ada_stream).await),
        [text(Some(ADA)), text(Some(ADA_RENAMED))]
    );
    let projection = CustomerNames::default();
    let runner = ProjectionRunner::new(Arc::clone(&store), Arc::clone(&checkpoints))
        .projection(projection.clone());
    // Once no transaction elsewhere in the cluster holds the four events back.
    tests::feed_showing(&*store, 4).await;
    runner.run_once().await.unwrap();
    let seen = |projection: &CustomerNames| {
        let mut seen = projection.0.lock().unwrap().clone();
        seen.sort();
        seen
    };
    let mut expected = vec![
        (ada.to_string(), text(Some(ADA)), "silver".to_owned()),
        (grace.to_string(), text(Some(GRACE)), "silver".to_owned()),
    ];
    expected.sort();
    assert_eq!(seen(&projection), expected);

    // Forget Ada: once; a second time finds no key.
    assert!(store.forget(&ada.to_string()).await.unwrap());
    assert!(!store.forget(&ada.to_string()).await.unwrap());
    assert_nothing_in_clear().await;

    // Loads: from the snapshot (its sealed name forgotten) and from the events alone.
    let loaded = customers.load(&ada).await.unwrap();
    assert_eq!(loaded.version(), 3);
    assert!(loaded.state().name.is_forgotten());
    assert_eq!(
        (loaded.state().tier.as_str(), loaded.state().events),
        ("gold", 3)
    );
    let replayed =
        Repository::<ReplayedCustomer>::shared(Arc::clone(&store), &dtx::DtxConfig::default());
    let snapshot = store.load_snapshot(&ada_stream).await.unwrap().unwrap();
    let from_snapshot: Customer = serde_json::from_str(snapshot.state.get()).unwrap();
    assert!(from_snapshot.name.is_forgotten());
    let replayed = replayed
        .load(&ada.to_string().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(replayed.version(), 3);
    assert!(replayed.state().name.is_forgotten());
    assert_eq!(replayed.state().tier, "gold");

    // Stream reads: every personal field forgotten, every other field as it was.
    let events = events_of(&store, &ada_stream).await;
    assert_eq!(names(&events), [None, None]);
    let CustomerEvent::Registered(registered) = &events[0] else {
        panic!("the first event is the registration")
    };
    assert!(registered.email.is_forgotten());
    assert_eq!(registered.email.subject(), Some(ada.to_string().as_str()));
    assert_eq!(
        (registered.customer_id.as_str(), registered.tier.as_str()),
        (ada.to_string().as_str(), "silver")
    );

    // Grace is unaffected.
    let grace_loaded = customers.load(&grace).await.unwrap();
    assert_eq!(
        grace_loaded.state().name.get().map(String::as_str),
        Some(GRACE)
    );
    assert_eq!(
        names(&events_of(&store, &grace_stream).await),
        [text(Some(GRACE))]
    );

    // The feed, read whole and filtered.
    let feed: Vec<CustomerEvent> = store
        .read_all(GlobalPosition::START, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    let mut feed_names = names(&feed);
    feed_names.sort();
    assert_eq!(feed_names, [None, None, text(Some(GRACE))]);
    let page = store
        .read_feed(GlobalPosition::START, &["customer.registered"], 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2);

    // A projection rebuilt from the start: it runs through, Ada's name forgotten.
    drop(checkpoints);
    projection.0.lock().unwrap().clear();
    runner.reset("customer_names").await.unwrap();
    assert_eq!(runner.run_once().await.unwrap(), 2);
    let mut expected = vec![
        (ada.to_string(), None, "silver".to_owned()),
        (grace.to_string(), text(Some(GRACE)), "silver".to_owned()),
    ];
    expected.sort();
    assert_eq!(seen(&projection), expected);

    // Ada comes back later: a fresh key for the new events, the old ones stay forgotten.
    let mut customer = customers.load(&ada).await.unwrap();
    customer
        .record([Renamed {
            customer_id: ada.to_string(),
            name: Personal::new("Ada Byron".to_owned()),
        }])
        .unwrap();
    customers.save(&mut customer).await.unwrap();
    assert_eq!(
        names(&events_of(&store, &ada_stream).await),
        [None, None, text(Some("Ada Byron"))]
    );
}

#[tokio::test]
async fn memory_forgetting_a_person() {
    let outbox = MemoryOutbox::new();
    let store = MemoryEventStore::new().with_outbox(outbox.clone());
    let publisher = MemoryPublisher::new();
    let probe = store.clone();
    forgetting_a_person(
        Arc::new(store),
        Arc::new(MemoryCheckpointStore::new()),
        || {
            // What the store holds, and every outbox message, published.
            let (probe, outbox, publisher) = (probe.clone(), outbox.clone(), publisher.clone());
            async move {
                outbox
                    .publish_pending(&publisher, &RelayOptions::default())
                    .await;
                let mut texts = probe.stored_json();
                texts.extend(publisher.published().iter().map(|m| m.payload.to_string()));
                texts
            }
        },
    )
    .await;
}

/// Every row of every table of the database as text (`t::text`): nothing escapes the search.
async fn all_rows(pool: &sqlx::PgPool) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for table in tables {
        let texts: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.extend(texts);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_forgetting_a_person() {
    let store = tests::pg_store().await.with_outbox(true);
    let pool = store.pool().clone();
    let checkpoints = Arc::new(dtx_postgres::PgCheckpointStore::new(pool.clone()));
    forgetting_a_person(Arc::new(store.clone()), checkpoints, || {
        let pool = pool.clone();
        async move { all_rows(&pool).await }
    })
    .await;
    // The raw tables: what the search above read, asked of PostgreSQL itself.
    let in_clear: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM event_store WHERE position($1 IN data::text) > 0) \
              + (SELECT count(*) FROM event_snapshots WHERE state::text LIKE '%' || $1 || '%')",
    )
    .bind(ADA)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_clear, 0);
    let sealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_store WHERE outbox AND data::text LIKE '%\"sealed\"%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(sealed >= 3, "the outbox rows hold the sealed form");
}

/// A master key wraps the subjects' keys: the stored key is not the data key, and a store with
/// another master key cannot read them (an error, not garbage).
#[tokio::test]
async fn pg_keys_wrapped_by_a_master_key() {
    let store = tests::pg_store()
        .await
        .with_key_wrap(MasterKey::new(&[7; 32]));
    let pool = store.pool().clone();
    let shared: Arc<dyn EventStore> = Arc::new(store);
    let Customers { ada, .. } = register(&shared).await;
    let customers = Repository::<Customer>::shared(Arc::clone(&shared), &dtx::DtxConfig::default());
    let loaded = customers.load(&ada).await.unwrap();
    assert_eq!(
        loaded.state().name.get().map(String::as_str),
        Some(ADA_RENAMED)
    );
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key FROM subject_keys WHERE subject = $1")
        .bind(ada.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 12 + 32 + 16, "nonce, wrapped key, tag");

    let other = dtx_postgres::PgEventStore::new(pool).with_key_wrap(MasterKey::new(&[8; 32]));
    let error = other
        .read_stream(&Customer::stream_id(&ada).unwrap(), 1, 10)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("master key"), "{error}");
}

/// The relay publishes the sealed form (never the value in clear); a consumer decodes it as
/// sealed, and a service that shares the key store opens it, until the subject is forgotten.
#[tokio::test]
async fn memory_relay_publishes_the_sealed_form() {
    let outbox = MemoryOutbox::new();
    let store = MemoryEventStore::new().with_outbox(outbox.clone());
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let Customers { grace, .. } = register(&shared).await;
    let publisher = MemoryPublisher::new();
    assert_eq!(
        outbox
            .publish_pending(&publisher, &RelayOptions::default())
            .await,
        4
    );
    let published = publisher.published();
    let message = published
        .iter()
        .find(|m| m.payload.contains(&grace.to_string()))
        .unwrap();
    assert!(
        !message.payload.contains(GRACE) && message.payload.contains("\"sealed\""),
        "{}",
        message.payload
    );

    let inbound = |payload: &str| {
        InboundMessage::new(
            message.message_id,
            message.message_type.clone(),
            payload.as_bytes().to_vec(),
        )
    };
    let decoded: Registered = dtx::inbox::decode(&inbound(&message.payload)).unwrap();
    assert!(decoded.name.is_sealed());
    assert_eq!(decoded.tier, "silver");

    let personal: &PersonalData = store.personal_data();
    let opened = personal.open_json(&message.payload).await.unwrap();
    let decoded: Registered = dtx::inbox::decode(&inbound(&opened)).unwrap();
    assert_eq!(decoded.name.get().map(String::as_str), Some(GRACE));

    assert!(store.forget(&grace.to_string()).await.unwrap());
    let opened = personal.open_json(&message.payload).await.unwrap();
    let decoded: Registered = dtx::inbox::decode(&inbound(&opened)).unwrap();
    assert!(decoded.name.is_forgotten() && decoded.email.is_forgotten());
    assert_eq!(decoded.customer_id, grace.to_string());
}
