//! The aggregate command path: load, decide, check invariants, append with the loaded version,
//! and retry a lost version race with backoff (or make one attempt inside a unit of work).

use super::command::{CommandError, Committed, Env};
use super::context::CommandContext;
use crate::uow::UnitOfWork;
use crate::{Aggregate, AggregateRoot, Error, Repository};
use std::sync::Arc;
use tracing::Instrument;

/// A decision of an aggregate command handler: the current state (the initial one for a
/// stream with no events) and the command in, events out.
pub(crate) type Decide<A, C> = dyn Fn(&AggregateRoot<A>, &C, &CommandContext) -> Result<Vec<<A as Aggregate>::Event>, CommandError>
    + Send
    + Sync;

/// What an aggregate command expects of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// It creates the aggregate: its stream must have no events
    /// ([`CommandError::AlreadyExists`] otherwise).
    Create,
    /// It changes an existing aggregate ([`CommandError::NotFound`] otherwise).
    Update,
    /// It works either way: the decision sees whether the aggregate exists.
    Upsert,
}

/// What an aggregate command handler may return as its events: one event, a `Vec`, an array,
/// an `Option` or any iterator of values convertible into the aggregate's event enum.
#[diagnostic::on_unimplemented(
    message = "this aggregate's handlers return events of its event enum `{E}`, not `{Self}`",
    label = "returns `{Self}`",
    note = "return `Result<Vec<{E}>, MyError>`, one event of `{E}` or one of its payload structs, an array or an `Option`"
)]
pub trait IntoEvents<E> {
    /// The events.
    fn into_events(self) -> Vec<E>;
}

impl<E, T: Into<E>> IntoEvents<E> for Vec<T> {
    fn into_events(self) -> Vec<E> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<E, T: Into<E>, const N: usize> IntoEvents<E> for [T; N] {
    fn into_events(self) -> Vec<E> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<E, T: Into<E>> IntoEvents<E> for Option<T> {
    fn into_events(self) -> Vec<E> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<E: crate::DomainEvent> IntoEvents<E> for E {
    fn into_events(self) -> Vec<E> {
        vec![self]
    }
}

/// Runs an aggregate command: load, decide, check invariants, append with the loaded version,
/// and on a conflict reload and decide again with backoff.
pub(crate) async fn run_aggregate<A, C>(
    env: &Env,
    command: &C,
    id: A::Id,
    ctx: &CommandContext,
    target: Target,
    decide: &Decide<A, C>,
    uow: Option<&mut dyn UnitOfWork>,
) -> Result<Committed, CommandError>
where
    A: Aggregate,
{
    let repo = Repository::<A>::shared(Arc::clone(&env.store), &env.config);
    let mut uow = uow;
    // Inside a unit of work there is one attempt: a failed write may have aborted its
    // transaction, so the caller runs the whole unit of work again.
    let max_attempts = if uow.is_some() {
        1
    } else {
        env.retry.max_attempts
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let span = tracing::debug_span!(
            "dtx.command.handle",
            aggregate = A::TYPE,
            aggregate_id = %id,
            attempt,
        );
        let mode = match uow.as_deref_mut() {
            Some(uow) => Mode::In(uow),
            None if attempt == 1 => Mode::First,
            None => Mode::Retry,
        };
        let saved = attempt_once(&repo, env, command, &id, ctx, target, mode, decide)
            .instrument(span)
            .await;
        match saved {
            Ok(committed) => {
                return Ok(Committed {
                    attempts: attempt,
                    ..committed
                });
            }
            Err(AttemptError::Command(error)) => return Err(error),
            Err(AttemptError::Store(Error::Conflict { .. })) if target == Target::Create => {
                return Err(CommandError::AlreadyExists {
                    aggregate: A::TYPE,
                    id: id.to_string(),
                });
            }
            Err(AttemptError::Store(error @ Error::Conflict { .. })) if attempt >= max_attempts => {
                return Err(CommandError::Conflict {
                    command: std::any::type_name::<C>(),
                    attempts: attempt,
                    source: error,
                });
            }
            Err(AttemptError::Store(Error::Conflict { .. })) => {
                tracing::debug!(attempt, "version conflict; reloading and retrying");
                tokio::time::sleep(env.retry.backoff(attempt)).await;
            }
            Err(AttemptError::Store(error)) => return Err(error.into()),
        }
    }
}

enum AttemptError {
    Command(CommandError),
    Store(Error),
}

impl From<Error> for AttemptError {
    fn from(error: Error) -> Self {
        Self::Store(error)
    }
}

/// How an attempt reads and writes.
enum Mode<'u> {
    /// The first attempt of [`CommandBus::execute`]: it may decide from the bus's cached state.
    First,
    /// A retry after a conflict: it reloads from the store.
    Retry,
    /// The one attempt of [`CommandBus::execute_in`]: through the unit of work, never cached.
    In(&'u mut dyn UnitOfWork),
}

/// One attempt: the command's own errors and the store's are told apart so that only store
/// conflicts are retried.
#[allow(
    clippy::too_many_arguments,
    reason = "one attempt of run_aggregate, with its context"
)]
async fn attempt_once<A, C>(
    repo: &Repository<A>,
    env: &Env,
    command: &C,
    id: &A::Id,
    ctx: &CommandContext,
    target: Target,
    mode: Mode<'_>,
    decide: &Decide<A, C>,
) -> Result<Committed, AttemptError>
where
    A: Aggregate,
{
    let stream = A::stream_id(id)?;
    let (trust_cache, mut uow) = match mode {
        Mode::First => (true, None),
        Mode::Retry => (false, None),
        Mode::In(uow) => (false, Some(uow)),
    };
    let cached = env
        .states
        .as_ref()
        .filter(|_| trust_cache && target != Target::Create)
        .and_then(|states| states.get(&stream))
        .and_then(|entry| entry.downcast_ref::<(A, u64)>().cloned());
    if !trust_cache && let Some(states) = &env.states {
        states.invalidate(&stream);
    }
    let mut root = if target == Target::Create {
        AggregateRoot::<A>::new(id.clone())
    } else if let Some((state, version)) = cached {
        AggregateRoot::from_state(state, version)
    } else {
        let root = match uow.as_deref_mut() {
            Some(uow) => repo.load_in(uow, id).await?,
            None => repo.load(id).await?,
        };
        if root.version() == 0 && target == Target::Update {
            return Err(AttemptError::Command(CommandError::NotFound {
                aggregate: A::TYPE,
                id: id.to_string(),
            }));
        }
        root
    };
    let events = decide(&root, command, ctx).map_err(AttemptError::Command)?;
    root.record(events)?;
    let events = root.pending().len();
    let metadata = ctx.metadata.event_metadata();
    let in_uow = uow.is_some();
    if let Some(uow) = uow {
        // The unit of work may still roll back: the bus's cache learns nothing from it (the
        // entry was invalidated above, so the next command reads the store).
        repo.save_in_with(uow, &mut root, metadata).await?;
    } else {
        repo.save_with(&mut root, metadata).await?;
    }
    if !in_uow && let Some(states) = &env.states {
        states.insert(
            stream.clone(),
            Arc::new((root.state().clone(), root.version())),
        );
    }
    Ok(Committed {
        stream,
        version: root.version(),
        events,
        attempts: 1,
    })
}
