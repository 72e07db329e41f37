//! Outbox messages written inside a unit of work.

use super::memory::OutboxState;
use super::{MemoryOutbox, NewOutboxMessage};
use crate::error::Result;
use crate::store::{NewEvent, StreamId};
use crate::uow::{MemoryUnitOfWork, Participant, Prepared, UnitOfWork, address, rank};
use async_trait::async_trait;
use std::sync::MutexGuard;

/// An outbox that messages can be written to inside a [`UnitOfWork`]: they are published if and
/// only if the unit of work commits.
///
/// Implemented by [`MemoryOutbox`] and `dtx_postgres::PgOutbox`.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Adds messages as part of `uow`.
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) when a message has a header that breaks
    /// [`headers::check`](super::headers::check) (nothing is added); the backend's errors.
    async fn enqueue_in(
        &self,
        uow: &mut dyn UnitOfWork,
        messages: Vec<NewOutboxMessage>,
    ) -> Result<()>;
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn enqueue_in(
        &self,
        uow: &mut dyn UnitOfWork,
        messages: Vec<NewOutboxMessage>,
    ) -> Result<()> {
        for message in &messages {
            message.check_storable()?;
            message.check_headers()?;
        }
        let uow = MemoryUnitOfWork::of(uow)?;
        uow.part(self.order(), || Staged::new(self.clone()))
            .writes
            .push(Write::Messages(messages));
        Ok(())
    }
}

impl MemoryOutbox {
    fn order(&self) -> (u8, usize) {
        (rank::OUTBOX, address(&self.inner))
    }

    /// Stages the messages of events appended in a unit of work (the event store calls it).
    pub(crate) fn stage_events(
        &self,
        uow: &mut MemoryUnitOfWork,
        stream: &StreamId,
        first_version: u64,
        events: Vec<NewEvent>,
    ) {
        uow.part(self.order(), || Staged::new(self.clone()))
            .writes
            .push(Write::Events(stream.clone(), first_version, events));
    }
}

enum Write {
    Events(StreamId, u64, Vec<NewEvent>),
    Messages(Vec<NewOutboxMessage>),
}

struct Staged {
    outbox: MemoryOutbox,
    writes: Vec<Write>,
}

impl Staged {
    fn new(outbox: MemoryOutbox) -> Self {
        Self {
            outbox,
            writes: Vec::new(),
        }
    }
}

impl Participant for Staged {
    fn order(&self) -> (u8, usize) {
        self.outbox.order()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn prepare(&mut self) -> Result<Box<dyn Prepared + '_>> {
        Ok(Box::new(Commit {
            state: self.outbox.lock(),
            wake: &self.outbox.wake,
            writes: std::mem::take(&mut self.writes),
        }))
    }
}

struct Commit<'a> {
    state: MutexGuard<'a, OutboxState>,
    wake: &'a tokio::sync::Notify,
    writes: Vec<Write>,
}

impl Prepared for Commit<'_> {
    fn apply(&mut self) {
        for write in std::mem::take(&mut self.writes) {
            match write {
                Write::Events(stream, first, events) => {
                    self.state.push_events(&stream, first, &events);
                }
                Write::Messages(messages) => self.state.push_messages(messages),
            }
        }
        self.wake.notify_one();
    }
}
