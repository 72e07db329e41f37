//! Every form of `#[query_handler]`, executed through a bus built from the registry: cached
//! (`cache(ttl_secs = ..)`, `cache(ttl_ms = .., capacity = ..)`) and uncached handlers, taking
//! the query by value and by reference, with the `State<T>` and `&QueryContext` extras.
#![deny(warnings)]

use dtx::cqrs::{QueryBus, QueryContext, QueryError, QueryOptions, State};
use dtx::query_handler;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::RwLock;

/// Shared state given to the bus: prices, and how often the price handler ran.
#[derive(Debug, Clone, Default)]
struct Catalog {
    prices: Arc<RwLock<BTreeMap<&'static str, u64>>>,
    lookups: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct UnknownSku(String);

impl std::fmt::Display for UnknownSku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no price for `{}`", self.0)
    }
}

impl std::error::Error for UnknownSku {}

/// Cached: `Hash + Eq + Clone`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Price {
    sku: &'static str,
}

/// Cached, taken by reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Quote {
    sku: &'static str,
    quantity: u64,
}

/// Uncached: no `Hash`, `Eq` or `Clone` needed.
#[derive(Debug)]
struct ListSkus;

#[query_handler(cache(ttl_secs = 60))]
async fn price(query: Price, State(catalog): State<Catalog>) -> Result<u64, UnknownSku> {
    catalog.lookups.fetch_add(1, Ordering::SeqCst);
    let prices = catalog.prices.read().await;
    prices
        .get(query.sku)
        .copied()
        .ok_or_else(|| UnknownSku(query.sku.to_owned()))
}

#[query_handler(cache(ttl_ms = 60_000, capacity = 100))]
async fn quote(query: &Quote, ctx: &QueryContext) -> Result<String, UnknownSku> {
    let unknown = || UnknownSku(query.sku.to_owned());
    let catalog = ctx.state::<Catalog>().ok_or_else(unknown)?;
    let unit = *catalog
        .prices
        .read()
        .await
        .get(query.sku)
        .ok_or_else(unknown)?;
    Ok(format!(
        "{} x {} = {}",
        query.quantity,
        query.sku,
        query.quantity * unit
    ))
}

#[query_handler]
async fn list_skus(
    _query: ListSkus,
    State(catalog): State<Catalog>,
    ctx: &QueryContext,
) -> Result<Vec<&'static str>, UnknownSku> {
    assert!(ctx.state::<Catalog>().is_some());
    Ok(catalog.prices.read().await.keys().copied().collect())
}

async fn run(bus: &QueryBus, catalog: &Catalog) -> Result<(), QueryError> {
    let first: u64 = bus.execute(Price { sku: "pen" }).await?;
    let cached: u64 = bus.execute(Price { sku: "pen" }).await?;
    assert_eq!((first, cached), (150, 150));
    assert_eq!(
        catalog.lookups.load(Ordering::SeqCst),
        1,
        "the second price came from the cache"
    );

    let fresh: u64 = bus
        .execute_with(Price { sku: "pen" }, QueryOptions::uncached())
        .await?;
    assert_eq!(fresh, 150);
    bus.invalidate(&Price { sku: "pen" });
    let _: u64 = bus.execute(Price { sku: "pen" }).await?;
    assert_eq!(
        catalog.lookups.load(Ordering::SeqCst),
        3,
        "skipping and invalidating the cache runs the handler"
    );

    let unknown = bus.execute(Price { sku: "ink" }).await;
    assert!(
        unknown
            .expect_err("no price")
            .source_as::<UnknownSku>()
            .is_some()
    );

    let quote: String = bus
        .execute(Quote {
            sku: "pad",
            quantity: 3,
        })
        .await?;
    assert_eq!(quote, "3 x pad = 1200");

    let skus: Vec<&'static str> = bus.execute(ListSkus).await?;
    assert_eq!(skus, ["pad", "pen"]);
    Ok(())
}

fn main() {
    let catalog = Catalog::default();
    catalog
        .prices
        .try_write()
        .expect("nothing reads yet")
        .extend([("pen", 150), ("pad", 400)]);
    let bus = QueryBus::builder()
        .state(catalog.clone())
        .registry()
        .build()
        .expect("every handler's state is given");
    tokio::runtime::Runtime::new()
        .expect("a runtime starts")
        .block_on(run(&bus, &catalog))
        .expect("the queries succeed");
}
