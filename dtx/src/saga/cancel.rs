//! An operator's cancellation of a saga: it compensates what it did, and the decision is kept
//! in its record ([`SagaRecord::cancellation`]).
//!
//! A cancellation does not run anything itself: it puts the saga in
//! [`SagaStatus::Compensating`], due now, and the workers compensate its completed steps in
//! reverse order as they do after a failed step.

use super::store::{SagaRecord, SagaStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The key of the `received` map of a saga's record that holds its [`Cancelled`] record.
pub const CANCELLED: &str = "dtx.cancelled";

/// An operator's decision to cancel a saga: why, and who decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// Why the saga is cancelled (kept in its record and shown as its last error).
    pub reason: String,
    /// Who decided (an operator's name, a ticket), as given.
    pub by: String,
}

impl Cancellation {
    /// A cancellation for `reason`, decided by `by`.
    pub fn new(reason: impl Into<String>, by: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            by: by.into(),
        }
    }

    /// The text stored as the saga's last error.
    pub fn last_error(&self) -> String {
        format!("cancelled by {}: {}", self.by, self.reason)
    }

    /// The record stored under [`CANCELLED`], as of `at`.
    pub fn record(&self, at: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({"reason": self.reason, "by": self.by, "at": at})
    }
}

/// A cancellation as a saga's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// Why.
    pub reason: String,
    /// Who decided.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl SagaRecord {
    /// The operator's cancellation of this saga, if it was cancelled.
    pub fn cancellation(&self) -> Option<Cancelled> {
        serde_json::from_value(self.received.get(CANCELLED)?.clone()).ok()
    }
}

/// What [`SagaStore::cancel`](super::SagaStore::cancel) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The saga is compensating now, due at once.
    Cancelled,
    /// No saga has this id.
    NotFound,
    /// The saga is neither running nor waiting (it is compensating already, or over).
    NotCancellable {
        /// Its status.
        status: SagaStatus,
    },
    /// A worker holds the saga (a step is running): cancelling now would lose what that step
    /// does. Cancel again once the lease is released or has expired.
    Busy {
        /// The worker.
        owner: String,
        /// Until when it holds the saga.
        until: DateTime<Utc>,
    },
}

/// The cancellation of `saga` at `now`, as both stores apply it: status compensating, due now,
/// no event awaited, the lease cleared, the decision in the last error and under [`CANCELLED`],
/// one version more. The reason it cannot be cancelled, and nothing changes, otherwise.
pub(crate) fn apply(
    saga: &mut SagaRecord,
    cancellation: &Cancellation,
    now: DateTime<Utc>,
) -> Result<(), Cancel> {
    if !matches!(saga.status, SagaStatus::Running | SagaStatus::Waiting) {
        return Err(Cancel::NotCancellable {
            status: saga.status,
        });
    }
    if let (Some(owner), Some(until)) = (&saga.lease_owner, saga.lease_expires_at)
        && until >= now
    {
        return Err(Cancel::Busy {
            owner: owner.clone(),
            until,
        });
    }
    saga.status = SagaStatus::Compensating;
    saga.attempts = 0;
    saga.awaiting = None;
    saga.next_run_at = now;
    saga.last_error = Some(cancellation.last_error());
    saga.received
        .insert(CANCELLED.to_owned(), cancellation.record(now));
    saga.lease_owner = None;
    saga.lease_expires_at = None;
    saga.version += 1;
    saga.updated_at = now;
    Ok(())
}

impl Cancellation {
    /// [`crate::Error::Unstorable`] unless every backend can store this cancellation of `saga`
    /// (no NUL character in its texts). Both stores check it before they write.
    pub fn check_storable(&self, saga: Uuid) -> crate::Result<()> {
        use crate::store::storable::check_text;
        let what = || format!("the cancellation of saga {saga}");
        check_text(None, &self.reason, what)?;
        check_text(None, &self.by, what)
    }
}
