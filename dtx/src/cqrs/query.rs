//! The query bus, with per-handler result caches (moka).

use super::BusError;
use super::context::StateMap;
use super::registry::{self, HandlerSet, Location, QueryRegistration};
use crate::error::BoxError;
use async_trait::async_trait;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// A query type and what running it returns.
///
/// `#[query_handler]` implements it for every query it handles (the `Ok` type its function
/// returns), so [`QueryBus::execute`] returns the handler's output type, checked at compile
/// time. For a handler registered by hand, implement it yourself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a query: no `#[query_handler]` handles it",
    label = "no handler declares what running `{Self}` returns",
    note = "write a `#[query_handler]` for `{Self}`, or for a handler registered by hand `impl dtx::cqrs::Query for {Self} {{ type Output = ..; }}`"
)]
pub trait Query: Send + 'static {
    /// What the query's handler returns on success.
    type Output: Send + 'static;
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No handler is registered for the query type.
    #[error("no handler for query `{query}`")]
    NoHandler {
        /// The query type.
        query: &'static str,
    },
    /// The handler failed; see [`QueryError::source_as`].
    #[error("query `{query}` failed: {source}")]
    Failed {
        /// The query type.
        query: &'static str,
        /// The handler's error.
        source: BoxError,
    },
    /// The handler needs shared state the bus was not given.
    #[error("the bus has no state of type `{state}`")]
    MissingState {
        /// The state type.
        state: &'static str,
    },
}

impl QueryError {
    /// The handler's own error, if it is of type `E`.
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Failed { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

/// How long and how many results of one handler are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long a result stays fresh.
    pub ttl: Duration,
    /// How many results are kept (least recently used go first).
    pub capacity: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            capacity: 10_000,
        }
    }
}

/// Options of one query execution: `QueryOptions { cache: true, ..QueryOptions::default() }`,
/// as in the seed API's `execute(query, { cache: true })`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryOptions {
    /// Use (and fill) the handler's cache, if it has a cache policy. `false` always runs the
    /// handler and leaves the cache alone.
    pub cache: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self { cache: true }
    }
}

impl QueryOptions {
    /// Options that skip the cache.
    pub fn uncached() -> Self {
        Self { cache: false }
    }
}

/// What a query handler can see besides its query: shared state.
#[derive(Debug, Clone)]
pub struct QueryContext {
    pub(crate) state: StateMap,
}

impl QueryContext {
    /// Shared state of type `T`, if the bus was given one.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.state.get()
    }

    /// Extracts `State<T>` for a generated handler.
    #[doc(hidden)]
    pub fn __extract<T: Clone + Send + Sync + 'static>(
        &self,
    ) -> Result<super::State<T>, QueryError> {
        self.state::<T>()
            .map(super::State)
            .ok_or(QueryError::MissingState {
                state: std::any::type_name::<T>(),
            })
    }
}

/// A type-erased query handler; built by the macros and the builder.
#[doc(hidden)]
#[async_trait]
pub trait ErasedQueryHandler: Send + Sync + 'static {
    async fn handle(
        &self,
        query: Box<dyn Any + Send>,
        ctx: &QueryContext,
        options: QueryOptions,
    ) -> Result<Box<dyn Any + Send>, QueryError>;

    fn invalidate(&self, query: &(dyn Any + Send + Sync));

    fn invalidate_all(&self);
}

/// A boxed [`ErasedQueryHandler`].
#[doc(hidden)]
pub type BoxedQueryHandler = Box<dyn ErasedQueryHandler>;

pub(crate) type QueryFn<Q, O> =
    Box<dyn Fn(Q, QueryContext) -> super::handler::BoxFuture<Result<O, QueryError>> + Send + Sync>;

/// A query handler from a function, with an optional cache.
pub(crate) struct FnQueryHandler<Q, O> {
    pub(crate) run: QueryFn<Q, O>,
    pub(crate) cache: Option<moka::sync::Cache<Q, O>>,
}

#[async_trait]
impl<Q, O> ErasedQueryHandler for FnQueryHandler<Q, O>
where
    Q: Hash + Eq + Clone + Send + Sync + 'static,
    O: Clone + Send + Sync + 'static,
{
    async fn handle(
        &self,
        query: Box<dyn Any + Send>,
        ctx: &QueryContext,
        options: QueryOptions,
    ) -> Result<Box<dyn Any + Send>, QueryError> {
        let Ok(query) = query.downcast::<Q>() else {
            unreachable!("the bus dispatches by the query's TypeId")
        };
        let cache = self.cache.as_ref().filter(|_| options.cache);
        if let Some(hit) = cache.and_then(|c| c.get(&*query)) {
            return Ok(Box::new(hit));
        }
        let key = cache.map(|_| (*query).clone());
        let output = (self.run)(*query, ctx.clone()).await?;
        if let (Some(cache), Some(key)) = (cache, key) {
            cache.insert(key, output.clone());
        }
        Ok(Box::new(output))
    }

    fn invalidate(&self, query: &(dyn Any + Send + Sync)) {
        if let (Some(cache), Some(query)) = (&self.cache, query.downcast_ref::<Q>()) {
            cache.invalidate(query);
        }
    }

    fn invalidate_all(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

/// A query handler without a cache (its query and output need no `Hash`, `Eq` or `Clone`).
pub(crate) struct UncachedQueryHandler<Q, O> {
    pub(crate) run: QueryFn<Q, O>,
}

#[async_trait]
impl<Q: Send + 'static, O: Send + 'static> ErasedQueryHandler for UncachedQueryHandler<Q, O> {
    async fn handle(
        &self,
        query: Box<dyn Any + Send>,
        ctx: &QueryContext,
        _options: QueryOptions,
    ) -> Result<Box<dyn Any + Send>, QueryError> {
        let Ok(query) = query.downcast::<Q>() else {
            unreachable!("the bus dispatches by the query's TypeId")
        };
        Ok(Box::new((self.run)(*query, ctx.clone()).await?))
    }

    fn invalidate(&self, _query: &(dyn Any + Send + Sync)) {}

    fn invalidate_all(&self) {}
}

struct Inner {
    handlers: HashMap<TypeId, registry::Entry<BoxedQueryHandler>>,
    ctx: QueryContext,
}

/// Dispatches queries to their handlers, through their caches.
///
/// ```
/// use dtx::cqrs::{CachePolicy, QueryBus, QueryOptions};
///
/// #[derive(Debug, Clone, PartialEq, Eq, Hash)]
/// struct Square(u64);
/// impl dtx::cqrs::Query for Square {
///     type Output = u64;
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = QueryBus::builder()
///     .cached_handler(CachePolicy::default(), |q: Square, _| async move { Ok::<_, std::io::Error>(q.0 * q.0) })
///     .build()?;
/// let n: u64 = bus.execute(Square(12)).await?;          // runs the handler
/// let again: u64 = bus.execute(Square(12)).await?;      // from the cache
/// let fresh: u64 = bus.execute_with(Square(12), QueryOptions::uncached()).await?;
/// assert_eq!((n, again, fresh), (144, 144, 144));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct QueryBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for QueryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut handlers: Vec<&str> = self.inner.handlers.values().map(|e| e.message).collect();
        handlers.sort_unstable();
        f.debug_struct("QueryBus")
            .field("handlers", &handlers)
            .finish_non_exhaustive()
    }
}

impl QueryBus {
    /// A builder: state and handlers.
    pub fn builder() -> QueryBusBuilder {
        QueryBusBuilder::default()
    }

    /// A bus with every linked `#[query_handler]`.
    pub fn from_registry() -> Result<Self, BusError> {
        Self::builder().registry().build()
    }

    /// Runs a query, through the handler's cache when it has one.
    pub async fn execute<Q: Query>(&self, query: Q) -> Result<Q::Output, QueryError> {
        self.execute_with(query, QueryOptions::default()).await
    }

    /// Runs a query with options.
    pub async fn execute_with<Q: Query>(
        &self,
        query: Q,
        options: QueryOptions,
    ) -> Result<Q::Output, QueryError> {
        let Some(entry) = self.inner.handlers.get(&TypeId::of::<Q>()) else {
            return Err(QueryError::NoHandler {
                query: std::any::type_name::<Q>(),
            });
        };
        let output = entry
            .handler
            .handle(Box::new(query), &self.inner.ctx, options)
            .await?;
        // Registration ties a handler to `Q::Output` (the macro implements `Query` beside the
        // handler; the builder requires `Q: Query<Output = O>`).
        Ok(*output.downcast::<Q::Output>().unwrap_or_else(|_| {
            unreachable!("the handler of `{}` returns `Q::Output`", entry.message)
        }))
    }

    /// Drops the cached result of this query value.
    pub fn invalidate<Q: Send + Sync + 'static>(&self, query: &Q) {
        if let Some(entry) = self.inner.handlers.get(&TypeId::of::<Q>()) {
            entry.handler.invalidate(query);
        }
    }

    /// Drops every cached result of the handler for `Q`.
    pub fn invalidate_all<Q: 'static>(&self) {
        if let Some(entry) = self.inner.handlers.get(&TypeId::of::<Q>()) {
            entry.handler.invalidate_all();
        }
    }
}

/// Builds a [`QueryBus`]; see [`QueryBus::builder`].
#[derive(Default)]
pub struct QueryBusBuilder {
    handlers: HandlerSet<BoxedQueryHandler>,
}

impl fmt::Debug for QueryBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBusBuilder")
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl QueryBusBuilder {
    /// Shared state handlers extract as `State<T>`.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.handlers.state.insert(state);
        self
    }

    /// Adds every handler linked into this binary by `#[query_handler]`.
    #[must_use]
    pub fn registry(mut self) -> Self {
        self.handlers.registry::<QueryRegistration>();
        self
    }

    /// Registers an uncached async function handler by hand.
    #[must_use]
    #[track_caller]
    pub fn handler<Q, O, E, F, Fut>(self, handler: F) -> Self
    where
        Q: Query<Output = O>,
        O: Send + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(Q, QueryContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<O, E>> + Send + 'static,
    {
        let location = registry::manual_location::<F>();
        let run = super::handler::query_run::<Q, O, E, F, Fut>(handler);
        self.push::<Q>(location, Box::new(UncachedQueryHandler { run }))
    }

    /// Registers a cached async function handler by hand.
    #[must_use]
    #[track_caller]
    pub fn cached_handler<Q, O, E, F, Fut>(self, policy: CachePolicy, handler: F) -> Self
    where
        Q: Query<Output = O> + Hash + Eq + Clone + Sync,
        O: Clone + Send + Sync + 'static,
        E: Into<BoxError> + 'static,
        F: Fn(Q, QueryContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<O, E>> + Send + 'static,
    {
        let location = registry::manual_location::<F>();
        let run = super::handler::query_run::<Q, O, E, F, Fut>(handler);
        self.push::<Q>(location, super::handler::cached(policy, run))
    }

    fn push<Q: 'static>(mut self, location: Location, handler: BoxedQueryHandler) -> Self {
        self.handlers.push::<Q>(location, handler);
        self
    }

    /// Fails [`QueryBusBuilder::build`] unless a handler for `Q` is registered.
    #[must_use]
    pub fn require<Q: 'static>(mut self) -> Self {
        self.handlers.require::<Q>();
        self
    }

    /// Checks the handlers and builds the bus.
    pub fn build(self) -> Result<QueryBus, BusError> {
        let (handlers, state) = self.handlers.build()?;
        Ok(QueryBus {
            inner: Arc::new(Inner {
                handlers,
                ctx: QueryContext { state },
            }),
        })
    }
}
