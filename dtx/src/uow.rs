//! The unit of work: one transaction that every component joins.
//!
//! Events ([`crate::Repository::save_in`], [`crate::cqrs::CommandBus::execute_in`]), saga
//! starts ([`crate::saga::SagaOrchestrator::start_in`]), idempotency records
//! ([`crate::idempotency::IdempotencyStore::claim_in`] /
//! [`complete_in`](crate::idempotency::IdempotencyStore::complete_in)) and outbox messages
//! ([`crate::outbox::Outbox::enqueue_in`]) written through one unit of work commit together or
//! not at all. Code that takes `&mut dyn UnitOfWork` is written once for both backends:
//!
//! - [`MemoryUnitOfWork`] (the embedded default): writes are staged and applied at
//!   [`commit`](MemoryUnitOfWork::commit) under the locks of every store involved, so no reader
//!   ever sees a part of them; dropping it (or [`rollback`](MemoryUnitOfWork::rollback)) discards
//!   them.
//! - `dtx_postgres::PgUnitOfWork`: a PostgreSQL transaction; the user's own SQL runs on its
//!   connection (`uow.connection()`).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use dtx::outbox::{MemoryOutbox, NewOutboxMessage, Outbox};
//! use dtx::uow::{MemoryUnitOfWork, UnitOfWork};
//!
//! async fn announce(outbox: &dyn Outbox, uow: &mut dyn UnitOfWork) -> dtx::Result<()> {
//!     let message = NewOutboxMessage::new("shop", "Opened", &"today").expect("serialisable");
//!     outbox.enqueue_in(uow, vec![message]).await
//! }
//!
//! let outbox = MemoryOutbox::new();
//! let mut uow = MemoryUnitOfWork::new();
//! announce(&outbox, &mut uow).await?;
//! assert_eq!(outbox.counts().pending, 0, "nothing is visible before the commit");
//! uow.commit().await?;
//! assert_eq!(outbox.counts().pending, 1);
//! # Ok::<(), dtx::Error>(())
//! # }).unwrap();
//! ```

use crate::error::{Error, Result};
use std::any::Any;
use std::fmt;
use std::future::Future;

/// A transaction that dtx's components join; see the [module docs](self).
///
/// Implemented by [`MemoryUnitOfWork`] and `dtx_postgres::PgUnitOfWork`. Components take it as
/// `&mut dyn UnitOfWork` and find their backend's transaction in it; a store given the unit of
/// work of another backend fails with [`Error::UnitOfWork`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a dtx unit of work",
    label = "expected a `dtx::uow::UnitOfWork`",
    note = "begin one with `dtx::uow::MemoryUnitOfWork::new()` or `dtx_postgres::PgUnitOfWork::begin(&pool)`"
)]
pub trait UnitOfWork: Send + 'static {
    /// The backend's name, for errors (`"memory"`, `"postgres"`).
    fn backend(&self) -> &'static str;

    /// The backend's transaction, for the stores of that backend.
    #[doc(hidden)]
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Commits every write made through this unit of work, or none of them. When the backend
    /// cannot know which (the connection was lost once `COMMIT` may have been sent), the error
    /// is [`Error::CommitOutcomeUnknown`]; when the transaction had already failed (a statement
    /// in it failed and the database aborted it), [`Error::RolledBack`].
    fn commit(self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized;

    /// Discards every write made through this unit of work.
    fn rollback(self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized;

    /// [`commit`](Self::commit) for a boxed unit of work (`Box<dyn UnitOfWork>`).
    fn commit_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// [`rollback`](Self::rollback) for a boxed unit of work (`Box<dyn UnitOfWork>`).
    fn rollback_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// A boxed future, as [`UnitOfWork::commit_boxed`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl dyn UnitOfWork {
    /// The backend transaction of type `T` inside this unit of work, or [`Error::UnitOfWork`]
    /// naming both backends. Used by the stores of each backend.
    pub fn downcast<T: UnitOfWork>(&mut self, expected: &'static str) -> Result<&mut T> {
        let actual = self.backend();
        self.as_any_mut()
            .downcast_mut::<T>()
            .ok_or(Error::UnitOfWork { expected, actual })
    }
}

/// What a store that cannot join units of work answers: [`Error::UnitOfWork`] naming the
/// store's type and the unit of work's backend (the default of every `*_in` method).
pub(crate) fn refused<S: ?Sized>(uow: &dyn UnitOfWork) -> Error {
    Error::UnitOfWork {
        expected: std::any::type_name::<S>(),
        actual: uow.backend(),
    }
}

/// One store's staged writes in a [`MemoryUnitOfWork`].
pub(crate) trait Participant: Any + Send {
    /// Where this store stands in the lock order of a commit: its kind, then its address.
    fn order(&self) -> (u8, usize);

    /// Itself, to find it again by type.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Locks the store, checks that the staged writes still apply, and returns what applies
    /// them (still holding the lock). Nothing is changed yet.
    fn prepare(&mut self) -> Result<Box<dyn Prepared + '_>>;

    /// The unit of work is discarded: undo what was taken ahead of the commit.
    fn abandon(&mut self) {}
}

/// Staged writes that were checked and can no longer fail.
pub(crate) trait Prepared {
    /// Applies them.
    fn apply(&mut self);
}

/// Lock-order ranks of the in-memory stores (a commit locks them in this order).
pub(crate) mod rank {
    pub(crate) const EVENTS: u8 = 0;
    pub(crate) const OUTBOX: u8 = 1;
    pub(crate) const SAGAS: u8 = 2;
    pub(crate) const IDEMPOTENCY: u8 = 3;
    pub(crate) const CHECKPOINTS: u8 = 4;
    pub(crate) const INBOX: u8 = 5;
}

/// The in-memory unit of work: writes are staged and become visible all at once on
/// [`commit`](Self::commit); dropping it discards them.
///
/// Reads through the unit of work (a repository's [`load_in`](crate::Repository::load_in))
/// see its own staged events. A commit locks every store involved (in a fixed order), checks
/// that each staged write still applies — a stream moved by another writer since it was read
/// is [`Error::Conflict`] — and only then applies them all.
#[derive(Default)]
pub struct MemoryUnitOfWork {
    parts: Vec<Box<dyn Participant>>,
    on_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for MemoryUnitOfWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUnitOfWork")
            .field("stores", &self.parts.len())
            .field("on_commit", &self.on_commit.len())
            .finish()
    }
}

impl MemoryUnitOfWork {
    /// An empty unit of work.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `write` when the unit of work commits, after dtx's stores applied their writes and
    /// before the commit returns; never if it is rolled back or dropped. This is how an
    /// in-memory read model joins a unit of work (a projection's writes apply exactly when its
    /// checkpoint moves).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dtx::{MemoryUnitOfWork, UnitOfWork};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let totals = Arc::new(Mutex::new(0));
    /// let mut uow = MemoryUnitOfWork::new();
    /// let shared = Arc::clone(&totals);
    /// uow.on_commit(move || *shared.lock().unwrap() += 5);
    /// assert_eq!(*totals.lock().unwrap(), 0);
    /// uow.commit().await?;
    /// assert_eq!(*totals.lock().unwrap(), 5);
    /// # Ok::<(), dtx::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn on_commit(&mut self, write: impl FnOnce() + Send + 'static) {
        self.on_commit.push(Box::new(write));
    }

    /// The in-memory unit of work inside `uow` ([`Error::UnitOfWork`] when it is another
    /// backend's): how code written for `&mut dyn UnitOfWork` reaches
    /// [`on_commit`](Self::on_commit).
    pub fn downcast(uow: &mut dyn UnitOfWork) -> Result<&mut Self> {
        Self::of(uow)
    }

    /// The staged writes of the store at `order`, created by `make` on first use.
    pub(crate) fn part<P: Participant>(
        &mut self,
        order: (u8, usize),
        make: impl FnOnce() -> P,
    ) -> &mut P {
        let index = self
            .parts
            .iter()
            .position(|p| p.order() == order)
            .unwrap_or_else(|| {
                self.parts.push(Box::new(make()));
                self.parts.len() - 1
            });
        self.parts[index]
            .as_any_mut()
            .downcast_mut::<P>()
            .unwrap_or_else(|| unreachable!("one participant type per store address"))
    }

    /// The staged writes of the store at `order`, if it has any.
    pub(crate) fn existing<P: Participant>(&mut self, order: (u8, usize)) -> Option<&mut P> {
        self.parts
            .iter_mut()
            .find(|p| p.order() == order)
            .and_then(|p| p.as_any_mut().downcast_mut::<P>())
    }

    fn commit_now(&mut self) -> Result<()> {
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.order());
        let result = apply_all(&mut parts, std::mem::take(&mut self.on_commit));
        if result.is_err() {
            // Every lock `prepare` took is released by now; undo what was taken ahead.
            for part in &mut parts {
                part.abandon();
            }
        }
        result
    }
}

/// Prepares every participant (taking their locks in order), then applies them all and runs
/// the commit hooks.
fn apply_all(
    parts: &mut [Box<dyn Participant>],
    on_commit: Vec<Box<dyn FnOnce() + Send>>,
) -> Result<()> {
    let mut prepared = parts
        .iter_mut()
        .map(|p| p.prepare())
        .collect::<Result<Vec<_>>>()?;
    for write in &mut prepared {
        write.apply();
    }
    for write in on_commit {
        write();
    }
    // Only now are the locks released: no reader sees a part of the writes.
    drop(prepared);
    Ok(())
}

impl Drop for MemoryUnitOfWork {
    fn drop(&mut self) {
        for part in &mut self.parts {
            part.abandon();
        }
    }
}

impl UnitOfWork for MemoryUnitOfWork {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn commit(mut self) -> impl Future<Output = Result<()>> + Send {
        let result = self.commit_now();
        std::future::ready(result)
    }

    fn rollback(self) -> impl Future<Output = Result<()>> + Send {
        drop(self);
        std::future::ready(Ok(()))
    }

    fn commit_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).commit())
    }

    fn rollback_boxed(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin((*self).rollback())
    }
}

impl MemoryUnitOfWork {
    /// The in-memory unit of work inside `uow`, or [`Error::UnitOfWork`].
    pub(crate) fn of(uow: &mut dyn UnitOfWork) -> Result<&mut Self> {
        uow.downcast::<Self>("memory")
    }
}

/// The address of a store's shared state, as the second part of its lock order.
pub(crate) fn address<T: ?Sized>(shared: &std::sync::Arc<T>) -> usize {
    std::sync::Arc::as_ptr(shared).cast::<()>() as usize
}
