//! Publishing a batch (each key's messages in order, the batch handed to the publisher at once)
//! and what a failed attempt makes of a message.

use super::message::Failed;
use dtx::outbox::{OutboxMessage, Payloads, Publisher, RelayOptions};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What a failed publish attempt makes of a message, by the relay's [`RelayOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Pending again, due after `delay` (the backoff after `attempts` failures).
    Retry {
        /// The attempts made so far, this one included.
        attempts: u32,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// Dead-lettered: its key stops behind it until it is requeued.
    Dead {
        /// The attempts made, this one included.
        attempts: u32,
    },
}

impl Failure {
    /// What the failed attempt makes of `failed.message` (logged, and counted when it is
    /// dead-lettered): dead once the retries are spent, or at once when the failure is
    /// permanent.
    pub(super) fn of(failed: &Failed, options: &RelayOptions) -> Self {
        let Failed {
            message,
            error,
            permanent,
        } = failed;
        let attempts = message.attempts + 1;
        if *permanent || options.is_dead(attempts) {
            tracing::warn!(key = %message.key, id = message.id, attempts, %error, "outbox message dead-lettered; its key stops until it is requeued");
            dtx::telemetry::record_outbox_dead_letter();
            Self::Dead { attempts }
        } else {
            tracing::debug!(key = %message.key, id = message.id, attempts, %error, "publish failed; retrying later");
            Self::Retry {
                attempts,
                delay: options.backoff(attempts),
            }
        }
    }

    /// The attempts made, this one included.
    pub(super) fn attempts(self) -> u32 {
        match self {
            Self::Retry { attempts, .. } | Self::Dead { attempts } => attempts,
        }
    }

    /// The message's `status` column from now on.
    pub(super) fn status(self) -> &'static str {
        match self {
            Self::Retry { .. } => "pending",
            Self::Dead { .. } => "dead",
        }
    }

    /// How long until the next attempt (zero for a dead message, which has none).
    pub(super) fn delay(self) -> Duration {
        match self {
            Self::Retry { delay, .. } => delay,
            Self::Dead { .. } => Duration::ZERO,
        }
    }

    /// Whether the message is dead-lettered.
    pub(super) fn is_dead(self) -> bool {
        matches!(self, Self::Dead { .. })
    }
}

/// What [`publish`] made of a batch.
#[derive(Default)]
pub(super) struct Published {
    /// The ids of the messages published.
    pub(super) ids: Vec<i64>,
    /// Each failed key's first failure.
    pub(super) failed: Vec<Failed>,
    /// The messages after a failure, in their keys' order: not tried.
    pub(super) unsent: Vec<OutboxMessage>,
}

/// Publishes each key's messages in order through `publisher`, in the form `payloads` asks
/// for, as one batch ([`dtx::outbox::publish_batch_as`]: a pipelining publisher has many in
/// flight at once); a key stops at its first failure, and its later messages, whatever the
/// publisher answered for them, are set aside behind it.
pub(super) async fn publish(
    publisher: &Arc<dyn Publisher>,
    payloads: &Payloads,
    per_key: Vec<(String, Vec<OutboxMessage>)>,
) -> Published {
    let messages: Vec<OutboxMessage> = per_key
        .into_iter()
        .flat_map(|(_, messages)| messages)
        .collect();
    let outcomes = dtx::outbox::publish_batch_as(&**publisher, &messages, payloads).await;
    let mut batch = Published::default();
    let mut stopped: HashSet<String> = HashSet::new();
    for (message, outcome) in messages.into_iter().zip(outcomes) {
        if stopped.contains(&message.key) {
            batch.unsent.push(message);
            continue;
        }
        match outcome {
            Ok(()) => batch.ids.push(message.id),
            Err(error) => {
                stopped.insert(message.key.clone());
                batch.failed.push(Failed {
                    message,
                    error: error.to_string(),
                    permanent: error.permanent,
                });
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(attempts: u32) -> Failed {
        Failed {
            message: OutboxMessage {
                id: 1,
                key: "Order-1".to_owned(),
                sequence: Some(1),
                message_id: uuid::Uuid::nil(),
                message_type: "Placed".to_owned(),
                payload: "{}".into(),
                headers: std::collections::BTreeMap::new(),
                attempts,
                last_error: None,
                created_at: chrono::Utc::now(),
            },
            error: "broker down".to_owned(),
            permanent: false,
        }
    }

    #[test]
    fn a_failure_is_retried_until_the_retries_are_spent() {
        let options = RelayOptions {
            max_retries: 2,
            ..RelayOptions::default()
        };
        let first = Failure::of(&failed(0), &options);
        assert!(
            matches!(first, Failure::Retry { attempts: 1, .. }),
            "{first:?}"
        );
        assert_eq!(first.status(), "pending");
        assert!(first.delay() > Duration::ZERO && first.delay() <= options.max_backoff);

        let last = Failure::of(&failed(2), &options);
        assert_eq!(last, Failure::Dead { attempts: 3 });
        assert_eq!(
            (last.attempts(), last.status(), last.delay(), last.is_dead()),
            (3, "dead", Duration::ZERO, true)
        );
    }
}
