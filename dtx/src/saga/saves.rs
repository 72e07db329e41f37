//! The saves of one worker's claimed sagas, combined: each saga's task hands its transition to
//! a [`Saves`] queue, and one writer saves whatever has queued up in one
//! [`SagaStore::save_many`] while the previous one is in flight. A lone save is written at once
//! (nothing waits for company); under load, the sagas of a batch share round trips and commits.

use super::store::{SagaRecord, SagaSave, SagaStore};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A transition waiting to be written, and where its outcome goes.
struct Pending {
    record: SagaRecord,
    lease_until: Option<DateTime<Utc>>,
    outcome: oneshot::Sender<crate::Result<bool>>,
}

/// The queue the sagas of one claim save through (clones share it). The writer stops once
/// every clone is dropped and the queue is empty.
#[derive(Clone)]
pub(super) struct Saves {
    queue: mpsc::Sender<Pending>,
}

impl Saves {
    /// A queue for `owner`'s sagas, written to `store` by a task of its own; at most `limit`
    /// saves per write.
    pub(super) fn start(store: Arc<dyn SagaStore>, owner: String, limit: usize) -> Self {
        let limit = limit.max(1);
        let (queue, pending) = mpsc::channel(limit);
        tokio::spawn(write(store, owner, pending, limit));
        Self { queue }
    }

    /// Saves `record` as [`SagaStore::save`] does (for the queue's owner), together with what
    /// the other sagas queued meanwhile.
    pub(super) async fn save(
        &self,
        record: &SagaRecord,
        lease_until: Option<DateTime<Utc>>,
    ) -> crate::Result<bool> {
        let gone = || {
            crate::Error::storage(format!(
                "the transition of saga {} (version {}) was not saved: the worker's writer stopped",
                record.id, record.version
            ))
        };
        let (outcome, written) = oneshot::channel();
        self.queue
            .send(Pending {
                record: record.clone(),
                lease_until,
                outcome,
            })
            .await
            .map_err(|_| gone())?;
        written.await.map_err(|_| gone())?
    }
}

/// The writer: takes whatever is queued (waiting only when nothing is), saves it in one
/// `save_many`, answers each save, and goes on until the queue closes.
async fn write(
    store: Arc<dyn SagaStore>,
    owner: String,
    mut pending: mpsc::Receiver<Pending>,
    limit: usize,
) {
    let mut batch = Vec::with_capacity(limit);
    while pending.recv_many(&mut batch, limit).await > 0 {
        let saves: Vec<SagaSave<'_>> = batch
            .iter()
            .map(|p| SagaSave {
                record: &p.record,
                owner: &owner,
                lease_until: p.lease_until,
            })
            .collect();
        let outcomes = store.save_many(&saves).await;
        drop(saves);
        // A store that answered fewer saves than it was given leaves the rest unanswered: their
        // senders drop, and those saves fail as not saved.
        for (waiting, outcome) in batch.drain(..).zip(outcomes) {
            // The saga's task may be gone (its worker aborted): nothing waits for the outcome.
            let _ = waiting.outcome.send(outcome);
        }
        batch.clear();
    }
}
