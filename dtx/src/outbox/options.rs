//! How a relay claims, publishes, retries and cleans up: [`RelayOptions`], and in which form it
//! publishes events stored at an older schema version: [`Payloads`].

use crate::event::Upcasters;
use crate::{Backoff, Jitter};
use std::time::Duration;

/// In which form a relay publishes an event stored at an older schema version or under an older
/// name (see `#[event(upcast(..), alias = ..)]`).
///
/// - [`Payloads::Stored`] (the default): as stored, with its stored name and schema version in
///   the `dtx-event-type` and `dtx-schema-version` headers. Consumers built with dtx upcast it
///   when they decode it (`#[consumer]` handlers and [`crate::inbox::decode`] read the version
///   header), so they need the producer's upcasts, and other consumers must know every version.
/// - [`Payloads::Current`]: the events of the enums in the [`Upcasters`] are upcast before they
///   are published, re-encoded as the current type with its name and version in the headers.
///   Consumers only ever see the current form; an event of a type the set does not know is
///   published as stored, and one that does not upcast (an upcaster's error, a version without
///   upcast) is dead-lettered at once with the error, never published in another form.
#[derive(Debug, Clone, Default)]
pub enum Payloads {
    /// As stored.
    #[default]
    Stored,
    /// Upcast to the current form by these enums.
    Current(Upcasters),
}

/// How a relay claims, publishes, retries and cleans up.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Most messages claimed at once (default 100). Part of a relay's cost is paid per batch
    /// (a transaction, its checkpoint or marks), so under thousands of appends a second a larger
    /// batch (say 500) spends less of the database on relaying.
    pub batch_size: usize,
    /// Batches of the global feed a PostgreSQL relay publishes in one pass, one transaction
    /// (default 4; at least 1). While one batch is being published, the next is read, so the
    /// publisher and the database work at the same time; the pass ends early when the feed has
    /// no full batch left. The feed's checkpoint moves once per pass, so a relay that stops
    /// mid-pass (a crash, a lost connection) leaves up to this many batches to be published
    /// again. The backlog table and the in-memory outbox are worked one batch per pass.
    pub batches_per_pass: usize,
    /// Failed attempts retried before a message is dead-lettered (default 5): a message is tried
    /// at most `max_retries + 1` times.
    pub max_retries: u32,
    /// Backoff after the first failure; doubled after each further one (default 100 ms).
    pub base_backoff: Duration,
    /// Longest backoff (default 30 s).
    pub max_backoff: Duration,
    /// How often an idle relay looks for work without a wake-up: the fallback to
    /// `LISTEN/NOTIFY` (default 1 s).
    pub poll_interval: Duration,
    /// How long a busy relay waits after a pass that found several messages but did not fill its
    /// batch before it claims the next one (default 20 ms): under a steady stream of writes,
    /// batches of many messages cost the database far less than many batches of a few. A pass
    /// that filled its batch, or found a single message, is followed at once, so a lone message
    /// is never held back.
    pub linger: Duration,
    /// How long published messages are kept before they are deleted (default 7 days; `None`
    /// keeps them; zero deletes a message as soon as it is published and keeps no copy). On
    /// PostgreSQL this is the archive of the messages the relay takes from its backlog table;
    /// the events it publishes straight from the feed stay in the event store. In memory it is
    /// the [`MemoryOutbox`](super::MemoryOutbox)'s archive of published messages.
    pub retention: Option<Duration>,
    /// Rows one retention statement deletes (default 1000), so no delete holds long locks.
    pub retention_batch: usize,
    /// The form of the events stored at an older schema version (default
    /// [`Payloads::Stored`]); see [`RelayOptions::publish_current`].
    pub payloads: Payloads,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            batches_per_pass: 4,
            max_retries: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            linger: Duration::from_millis(20),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_batch: 1000,
            payloads: Payloads::Stored,
        }
    }
}

impl RelayOptions {
    /// Publishes the events of `E` (and of the enums already added) in their current form:
    /// [`Payloads::Current`].
    ///
    /// ```
    /// # use dtx::DomainEvent;
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Placed {}
    /// # #[derive(DomainEvent)]
    /// # enum OrderEvent { Placed(Placed) }
    /// use dtx::outbox::{Payloads, RelayOptions};
    ///
    /// let options = RelayOptions::default().publish_current::<OrderEvent>();
    /// assert!(matches!(options.payloads, Payloads::Current(_)));
    /// ```
    #[must_use]
    pub fn publish_current<E: crate::DomainEvent>(mut self) -> Self {
        let upcasters = match std::mem::take(&mut self.payloads) {
            Payloads::Stored => Upcasters::new(),
            Payloads::Current(upcasters) => upcasters,
        };
        self.payloads = Payloads::Current(upcasters.with::<E>());
        self
    }

    /// The wait before attempt `failures + 1`: a [`Backoff`] from
    /// [`base_backoff`](Self::base_backoff), doubling up to [`max_backoff`](Self::max_backoff),
    /// with [`Jitter::Equal`] (between half and all of it) so retries of many messages spread out.
    pub fn backoff(&self, failures: u32) -> Duration {
        Backoff::new(self.base_backoff, self.max_backoff, Jitter::Equal).delay(failures)
    }

    /// Whether a message that has now failed `failures` times is dead.
    pub fn is_dead(&self, failures: u32) -> bool {
        failures > self.max_retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        let options = RelayOptions::default();
        assert!(options.backoff(1) <= Duration::from_millis(100));
        assert!(options.backoff(3) >= Duration::from_millis(200));
        assert!(options.backoff(30) <= Duration::from_secs(30));
        assert!(!options.is_dead(5));
        assert!(options.is_dead(6));
    }
}
