//! Sagas driven by the global feed: started by an event, once, and awaited steps completed by
//! events matched on the correlation id. Called from a projection's handlers (see the README,
//! "Sagas driven by events").

use super::store::{Correlated, SagaEvent, SagaStatus};
use super::{Saga, SagaError, SagaOrchestrator};
use crate::inbox::InboundMessage;
use crate::store::RecordedEvent;
use crate::uow::UnitOfWork;
use uuid::Uuid;

impl SagaOrchestrator {
    /// The id of the saga `S` that the event `event_id` starts: the same on every replay, so
    /// the saga starts once however often the event is handled.
    pub fn saga_id_for_event<S: Saga>(event_id: Uuid) -> Uuid {
        Uuid::new_v5(&event_id, S::NAME.as_bytes())
    }

    /// Starts saga `S` with `data` because of `event`, in `uow` (a read-model projection's,
    /// so the start commits with the projection's checkpoint). Its id is
    /// [`saga_id_for_event`](Self::saga_id_for_event): a second start for the same event (a
    /// rebuild, a subscription's redelivery) changes nothing. Its correlation id is the
    /// event's, or the event's id when it has none: later events of the same operation reach
    /// its awaited steps through [`deliver_from_feed`](Self::deliver_from_feed).
    pub async fn start_on_event_in<S: Saga>(
        &self,
        uow: &mut dyn UnitOfWork,
        event: &RecordedEvent,
        data: S,
    ) -> Result<Uuid, SagaError> {
        let correlation = event.metadata.correlation_id.unwrap_or(event.event_id);
        let mut record = self.prepare(&data, Some(correlation))?;
        record.id = Self::saga_id_for_event::<S>(event.event_id);
        self.store().insert_in(uow, &record).await?;
        tracing::debug!(saga = S::NAME, saga_id = %record.id, event_id = %event.event_id, "saga start written for an event");
        Ok(record.id)
    }

    /// Delivers `event` from the feed to every unfinished saga of its correlation id that
    /// awaits its type, and returns how many took it. An event without a correlation id, or
    /// whose correlation has no saga awaiting it, is delivered to none (`Ok(0)`).
    ///
    /// A saga of the correlation that is still running toward a step that awaits this type is
    /// [`SagaError::NotWaiting`]: the event came before the saga was ready for it, and the
    /// projection retries it (with backoff) until the saga waits.
    pub async fn deliver_from_feed(&self, event: &RecordedEvent) -> Result<usize, SagaError> {
        let Some(correlation) = event.metadata.correlation_id else {
            return Ok(0);
        };
        let sagas = self.store().correlated(correlation).await?;
        self.deliver_to(sagas, event).await
    }

    /// [`deliver_from_feed`](Self::deliver_from_feed) from a read-model projection's handler:
    /// the sagas its unit of work started and has not committed yet count too (a saga started
    /// by an event of the same batch is running, so the event waits for it, retried).
    pub async fn deliver_from_feed_in(
        &self,
        uow: &mut dyn UnitOfWork,
        event: &RecordedEvent,
    ) -> Result<usize, SagaError> {
        let Some(correlation) = event.metadata.correlation_id else {
            return Ok(0);
        };
        let sagas = self.store().correlated_in(uow, correlation).await?;
        self.deliver_to(sagas, event).await
    }

    /// Delivers `event` to those of `sagas` that await it.
    async fn deliver_to(
        &self,
        sagas: Vec<Correlated>,
        event: &RecordedEvent,
    ) -> Result<usize, SagaError> {
        // Stored with the saga until its step runs: personal values only in their sealed form.
        let payload: serde_json::Value = serde_json::from_str(
            &crate::personal::PersonalData::redact(&event.data),
        )
        .map_err(|source| crate::Error::Decode {
            stream: event.stream_id.clone(),
            version: event.version,
            source: crate::DecodeError::Malformed {
                event_type: event.event_type.clone(),
                source,
            },
        })?;
        self.deliver_event(
            sagas,
            SagaEvent {
                event_type: event.event_type.clone(),
                payload,
            },
        )
        .await
    }

    /// Delivers a message from another service (a consumer's, see [`crate::inbox`]) to every
    /// unfinished saga of its correlation id that awaits its type, as
    /// [`deliver_from_feed`](Self::deliver_from_feed) does for events of this service's feed.
    /// Call it from a consumer's handler with the handler's unit of work: a saga that is still
    /// running toward the awaited step is [`SagaError::NotWaiting`], and the consumer's retry
    /// delivers the message again once it waits.
    ///
    /// The saga's step sees the message's payload through
    /// [`StepContext::event`](super::StepContext::event).
    pub async fn deliver_message_in(
        &self,
        uow: &mut dyn UnitOfWork,
        message: &InboundMessage,
    ) -> Result<usize, SagaError> {
        let Some(correlation) = message.correlation_id else {
            return Ok(0);
        };
        let sagas = self.store().correlated_in(uow, correlation).await?;
        let payload: serde_json::Value =
            serde_json::from_slice(&message.payload).map_err(|e| crate::Error::InvalidMessage {
                message_id: message.message_id,
                event_type: message.event_type.clone(),
                source_name: message.source.clone(),
                reason: format!("the payload is not JSON: {e}"),
            })?;
        self.deliver_event(
            sagas,
            SagaEvent {
                event_type: message.event_type.clone(),
                payload,
            },
        )
        .await
    }

    /// Delivers `delivery` to those of `sagas` that await its type.
    async fn deliver_event(
        &self,
        sagas: Vec<Correlated>,
        delivery: SagaEvent,
    ) -> Result<usize, SagaError> {
        let mut delivered = 0;
        for saga in sagas {
            if saga.status == SagaStatus::Waiting
                && saga.awaiting.as_deref() == Some(delivery.event_type.as_str())
            {
                match self.handle_event(saga.id, delivery.clone()).await {
                    Ok(()) => delivered += 1,
                    // Its wait ended meanwhile (a timeout, or this very event delivered by a
                    // run that did not commit its checkpoint): nothing to do.
                    Err(SagaError::NotWaiting { .. } | SagaError::Finished { .. }) => {}
                    Err(error) => return Err(error),
                }
            } else if saga.status == SagaStatus::Running
                && self.awaits_later(&saga.name, saga.step, &delivery.event_type)
            {
                return Err(SagaError::NotWaiting {
                    id: saga.id,
                    status: saga.status,
                    awaiting: saga.awaiting,
                    event: delivery.event_type.clone(),
                });
            }
        }
        Ok(delivered)
    }

    /// Whether saga `name` awaits `event_type` after step `from` or a later one.
    fn awaits_later(&self, name: &str, from: u32, event_type: &str) -> bool {
        let Ok(saga) = self.saga(name) else {
            return false;
        };
        (from as usize..saga.steps()).any(|step| {
            saga.await_event(step)
                .is_some_and(|(awaited, _)| awaited == event_type)
        })
    }
}
