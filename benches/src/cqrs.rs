//! The command and query bus rows: `command_1_event`, `bus_dispatch` and `query_cached`.
//!
//! The handlers are declared here with `#[command_handler]` and `#[query_handler]`; this module
//! is part of the bench binary, so `.registry()` finds them.

use crate::{BoxError, Deposited, Options, deposit, pair, pair_batched, payload, report, to_i64};
use dtx::cqrs::{CommandBus, Committed, QueryBus, State};
use dtx::{
    Aggregate, Apply, DomainEvent, DtxConfig, Id, Repository, SharedEventStore, command_handler,
    query_handler,
};
use dtx_postgres::PgEventStore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Calls per measured sample of the sub-microsecond rows; they report the time of one call.
const BATCH: u32 = 1000;

/// A wallet was opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WalletOpened {
    owner: String,
}

#[derive(Debug, Clone, DomainEvent)]
enum WalletEvent {
    Opened(WalletOpened),
    // `AccountEvent` wraps `Deposited` too and provides its `Event` impl.
    #[event(payload_impl = false)]
    Deposited(Deposited),
}

/// The aggregate of `command_1_event`. Snapshotted every 20 events, like a busy aggregate in
/// production: a load reads the snapshot and at most 19 events, however long the stream is.
#[derive(Debug, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(event = WalletEvent, name = "Wallet", snapshot_every = 20)]
struct Wallet {
    id: Id<Wallet>,
    owner: String,
    open: bool,
    balance: u64,
    deposits: u64,
}

impl Apply<WalletOpened> for Wallet {
    fn apply(&mut self, event: &WalletOpened) {
        self.owner.clone_from(&event.owner);
        self.open = true;
    }
}

impl Apply<Deposited> for Wallet {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
        self.deposits += 1;
    }
}

/// Why a wallet command (or the bench's trivial handlers) refused.
#[derive(Debug)]
enum WalletError {
    NoOwner,
    Closed,
    ZeroAmount,
    Overflow,
}

impl std::fmt::Display for WalletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoOwner => "a wallet needs an owner",
            Self::Closed => "the wallet is not open",
            Self::ZeroAmount => "a deposit must be positive",
            Self::Overflow => "the number overflows",
        })
    }
}

impl std::error::Error for WalletError {}

#[derive(Debug, Clone)]
struct OpenWallet {
    wallet_id: Id<Wallet>,
    owner: String,
}

#[derive(Debug, Clone)]
struct Deposit {
    wallet_id: Id<Wallet>,
    amount: u64,
    memo: String,
}

#[command_handler]
impl Wallet {
    fn open(cmd: OpenWallet) -> Result<WalletOpened, WalletError> {
        if cmd.owner.is_empty() {
            return Err(WalletError::NoOwner);
        }
        Ok(WalletOpened { owner: cmd.owner })
    }

    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, WalletError> {
        if !self.open {
            return Err(WalletError::Closed);
        }
        if cmd.amount == 0 {
            return Err(WalletError::ZeroAmount);
        }
        Ok(Deposited {
            amount: cmd.amount,
            memo: cmd.memo.clone(),
        })
    }
}

/// The trivial command of `bus_dispatch`.
#[derive(Debug)]
struct Ping(u64);

/// The handler `bus_dispatch` dispatches to, and its baseline calls directly.
#[command_handler]
#[expect(
    clippy::unused_async,
    reason = "a free command handler is an `async fn`; this one is trivial on purpose, to measure the bus alone"
)]
async fn ping(cmd: Ping) -> Result<u64, WalletError> {
    cmd.0.checked_add(1).ok_or(WalletError::Overflow)
}

/// The cached query of `query_cached`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GetWallet {
    wallet_id: Id<Wallet>,
}

/// The read model `GetWallet` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WalletSummary {
    owner: String,
    balance: u64,
    version: u64,
}

const QUERY_TTL: Duration = Duration::from_secs(30);
const QUERY_CAPACITY: u64 = 1000;

/// How often `wallet_summary` ran (rather than being answered from its cache).
static SUMMARY_LOADS: AtomicUsize = AtomicUsize::new(0);

/// Loads the wallet from the event store; cached like `QUERY_TTL` and `QUERY_CAPACITY` (which
/// the `moka_get` baseline's cache is built with).
#[query_handler(cache(ttl_secs = 30, capacity = 1000))]
async fn wallet_summary(
    query: GetWallet,
    State(store): State<SharedEventStore>,
) -> Result<WalletSummary, dtx::Error> {
    SUMMARY_LOADS.fetch_add(1, Ordering::Relaxed);
    let wallets = Repository::<Wallet>::shared(store, &DtxConfig::default());
    let wallet = wallets.load(&query.wallet_id).await?;
    Ok(WalletSummary {
        owner: wallet.state().owner.clone(),
        balance: wallet.state().balance,
        version: wallet.version(),
    })
}

/// `command_1_event`, `bus_dispatch` and `query_cached`.
pub(crate) async fn cqrs_rows(
    options: &Options,
    pool: &PgPool,
    store: &PgEventStore,
) -> Result<(), BoxError> {
    let shared: SharedEventStore = Arc::new(store.clone());
    if options.wants("command_1_event") {
        command_row(options, pool, &shared).await?;
    }
    if options.wants("bus_dispatch") {
        dispatch_row(options).await?;
    }
    if options.wants("query_cached") {
        query_row(options, &shared).await?;
    }
    Ok(())
}

/// A full aggregate command on PostgreSQL (load, decide, append with the expected version)
/// against the single-row INSERT of `append_1`.
async fn command_row(
    options: &Options,
    pool: &PgPool,
    shared: &SharedEventStore,
) -> Result<(), BoxError> {
    let bus = CommandBus::builder()
        .store(Arc::clone(shared))
        .registry()
        .build()?;
    // One wallet that exists and has a few events; every iteration deposits into it, so its
    // stream grows by one event per iteration as a real aggregate's does, while its snapshots
    // (every 20 events) keep each load at one snapshot plus at most 19 events.
    let wallet_id = Id::<Wallet>::new();
    let _: Committed = bus
        .execute(OpenWallet {
            wallet_id,
            owner: "bench".to_owned(),
        })
        .await?;
    for k in 1..=4 {
        let d = deposit(k);
        let _: Committed = bus
            .execute(Deposit {
                wallet_id,
                amount: d.amount,
                memo: d.memo,
            })
            .await?;
    }
    let row = pair(
        options.iterations,
        async |i| {
            let d = deposit(i + 1);
            let committed: Committed = bus
                .execute(Deposit {
                    wallet_id,
                    amount: d.amount,
                    memo: d.memo,
                })
                .await
                .expect("deposit");
            assert_eq!(committed.events, 1);
        },
        async |i| {
            sqlx::query(
                "INSERT INTO baseline_events (stream_id, version, data) VALUES ($1, $2, $3::jsonb)",
            )
            .bind("baseline-command-1")
            .bind(to_i64(i) + 1)
            .bind(payload(i + 1))
            .execute(pool)
            .await
            .expect("insert");
        },
    )
    .await;
    report(options, "command_1_event", "insert_1_row", &row);
    Ok(())
}

/// The in-memory command bus dispatching to a trivial handler, against calling it directly.
async fn dispatch_row(options: &Options) -> Result<(), BoxError> {
    let bus = CommandBus::from_registry()?;
    let row = pair_batched(
        options.iterations,
        BATCH,
        async |i| {
            let out: u64 = bus.execute(Ping(black_box(i))).await.expect("ping");
            black_box(out);
        },
        async |i| {
            let out = ping(Ping(black_box(i))).await.expect("ping");
            black_box(out);
        },
    )
    .await;
    report(options, "bus_dispatch", "direct_call", &row);
    Ok(())
}

/// A query answered from its handler's cache, against a bare moka cache of the same types.
async fn query_row(options: &Options, shared: &SharedEventStore) -> Result<(), BoxError> {
    // The registry holds every `#[query_handler]` linked into the bench, the examples' too (the
    // two-services rows link that crate): its read-model handler extracts `OrderSummaries`, so
    // the bus is given one (empty, never queried here) or it would refuse to build.
    let bus = QueryBus::builder()
        .state(Arc::clone(shared))
        .state(examples::order_summaries::OrderSummaries::in_memory())
        .registry()
        .build()?;
    let baseline = moka::sync::Cache::<GetWallet, WalletSummary>::builder()
        .max_capacity(QUERY_CAPACITY)
        .time_to_live(QUERY_TTL)
        .build();
    // A few wallets, each stored, then read once through the bus: from here on both sides
    // only ever hit their cache.
    let mut keys = Vec::new();
    let commands = CommandBus::builder()
        .store(Arc::clone(shared))
        .registry()
        .build()?;
    for k in 0..16 {
        let wallet_id = Id::<Wallet>::new();
        let _: Committed = commands
            .execute(OpenWallet {
                wallet_id,
                owner: format!("owner {k}"),
            })
            .await?;
        let key = GetWallet { wallet_id };
        let summary: WalletSummary = bus.execute(key.clone()).await?;
        baseline.insert(key.clone(), summary);
        keys.push(key);
    }
    let key = |i: u64| keys[usize::try_from(i).unwrap_or_default() % keys.len()].clone();
    let row = pair_batched(
        options.iterations,
        BATCH,
        async |i| {
            let summary: WalletSummary = bus.execute(key(i)).await.expect("query");
            black_box(summary);
        },
        async |i| {
            let summary = baseline.get(&key(i)).expect("cached");
            black_box(summary);
        },
    )
    .await;
    assert_eq!(
        SUMMARY_LOADS.load(Ordering::Relaxed),
        keys.len(),
        "every measured query was answered from the cache"
    );
    report(options, "query_cached", "moka_get", &row);
    Ok(())
}
