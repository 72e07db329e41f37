//! TEMPORARY: where the time of a command goes.
use crate::cqrs::{Deposit, Wallet, OpenWallet, WalletEvent};
use crate::{deposit, payload, to_i64, Stats};
use dtx::cqrs::{CommandBus, Committed};
use dtx::{Aggregate, EventMetadata, EventStore, ExpectedVersion, Id, NewEvent, Repository, SharedEventStore, DtxConfig};
use dtx_postgres::PgEventStore;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) async fn pieces(pool: &PgPool, store: &PgEventStore, n: usize) {
    let shared: SharedEventStore = Arc::new(store.clone());
    let bus = CommandBus::builder().store(Arc::clone(&shared)).registry().build().unwrap();
    let repo = Repository::<Wallet>::shared(Arc::clone(&shared), &DtxConfig::default());
    let a = Id::<Wallet>::new();
    let b = Id::<Wallet>::new();
    for id in [a, b] {
        let _: Committed = bus.execute(OpenWallet { wallet_id: id, owner: "x".into() }).await.unwrap();
    }
    let sa = Wallet::stream_id(&a).unwrap();
    let append_stream = dtx::StreamId::new("Pieces-append").unwrap();
    let names = ["select_1", "load_snapshot", "read_stream_data", "repo_load", "store_append_1", "bus_command", "repo_load_record_save", "baseline_insert"];
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for i in 0..(n as u64 + 20) {
        let mut k = 0;
        macro_rules! time { ($e:expr) => {{ let s = Instant::now(); $e; let d = s.elapsed(); if i >= 20 { t[k].push(d); } k += 1; }} }
        time!(sqlx::query("SELECT 1").execute(pool).await.unwrap());
        time!(store.load_snapshot(&sa).await.unwrap());
        time!(store.read_stream_data(&sa, 1, 4096).await.unwrap());
        time!(repo.load(&a).await.unwrap());
        time!({
            let e = NewEvent::encode(&append_stream, &WalletEvent::Deposited(deposit(i + 1)), EventMetadata::default()).unwrap();
            store.append(&append_stream, ExpectedVersion::Exact(i), vec![e]).await.unwrap()
        });
        time!({
            let d = deposit(i + 1);
            let _: Committed = bus.execute(Deposit { wallet_id: a, amount: d.amount, memo: d.memo }).await.unwrap();
        });
        time!({
            let mut root = repo.load(&b).await.unwrap();
            root.record([deposit(i + 1)]).unwrap();
            repo.save(&mut root).await.unwrap();
        });
        time!(sqlx::query("INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)")
            .bind("pieces").bind(to_i64(i) + 1).bind(payload(i + 1)).execute(pool).await.unwrap());
        let _ = k;
    }
    for (name, samples) in names.iter().zip(t) {
        let s = Stats::of(samples, 1);
        println!("{name:<24} p50 {:>9.1}  p99 {:>9.1}", s.p50_us, s.p99_us);
    }
}
