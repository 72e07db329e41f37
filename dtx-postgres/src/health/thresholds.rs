//! When a [`HealthReport`] needs a person: [`Thresholds`], and the [`Problem`]s they find.

use super::report::HealthReport;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// What counts as a problem. `None` (or `false`) turns a check off.
///
/// The defaults suit an on-call alert: anything that stops by itself ([`Thresholds::default`]).
/// [`Thresholds::none`] turns every check off (only the database's answer counts), for a
/// liveness probe that must not restart a service over the data it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one switch per check, each independent of the others"
)]
pub struct Thresholds {
    /// A transaction open longer than this holds the feed back (default 5 minutes): no
    /// projection, outbox relay or subscriber sees what commits after it began.
    pub transaction_age: Option<Duration>,
    /// The oldest pending outbox message is older than this (default 5 minutes).
    pub outbox_age: Option<Duration>,
    /// Any dead outbox message (default on): its key is stopped.
    pub outbox_dead: bool,
    /// Any failed saga (default on): a compensation kept failing.
    pub saga_failed: bool,
    /// An unfinished saga's lease expired longer ago than this (default 5 minutes): no worker
    /// has picked it up.
    pub saga_lease_expired: Option<Duration>,
    /// Any failed projection (default on): it stopped at an event.
    pub projection_failed: bool,
    /// A projection more events behind the feed than this (default 10 000).
    pub projection_lag: Option<u64>,
    /// A projection whose first unapplied event is older than this (default 5 minutes).
    pub projection_age: Option<Duration>,
    /// Any dead letter in the inbox (default on).
    pub inbox_dead: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        let five_minutes = Some(Duration::from_secs(300));
        Self {
            transaction_age: five_minutes,
            outbox_age: five_minutes,
            outbox_dead: true,
            saga_failed: true,
            saga_lease_expired: five_minutes,
            projection_failed: true,
            projection_lag: Some(10_000),
            projection_age: five_minutes,
            inbox_dead: true,
        }
    }
}

impl Thresholds {
    /// Every check off.
    pub fn none() -> Self {
        Self {
            transaction_age: None,
            outbox_age: None,
            outbox_dead: false,
            saga_failed: false,
            saga_lease_expired: None,
            projection_failed: false,
            projection_lag: None,
            projection_age: None,
            inbox_dead: false,
        }
    }
}

/// Something in a [`HealthReport`] that needs a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The part it is in: `feed`, `outbox`, `sagas`, `projections` or `inbox`.
    pub area: &'static str,
    /// What it is about: a pid, a saga id, a projection, a consumer.
    pub subject: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.area, self.subject, self.message)
    }
}

/// `n thing` or `n things`.
fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// `90s` as `1m30s`, for messages.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn since(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - at).to_std().unwrap_or_default()
}

impl HealthReport {
    /// The problems `thresholds` find, in the order of the report.
    pub fn problems(&self, thresholds: &Thresholds) -> Vec<Problem> {
        let mut found = Found(Vec::new());
        self.feed_problems(thresholds, &mut found);
        self.outbox_problems(thresholds, &mut found);
        self.saga_problems(thresholds, &mut found);
        self.projection_problems(thresholds, &mut found);
        self.inbox_problems(thresholds, &mut found);
        found.0
    }

    fn feed_problems(&self, thresholds: &Thresholds, found: &mut Found) {
        let mut add = |area, subject, message| found.add(area, subject, message);
        if let (Some(max), Some(tx)) = (thresholds.transaction_age, &self.feed.oldest_transaction)
            && tx.age > max
        {
            let who = match (&tx.pid, &tx.prepared_gid) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(gid)) => format!("prepared transaction {gid}"),
                (None, None) => "a transaction".to_owned(),
            };
            add(
                "feed",
                who,
                format!(
                    "transaction open for {} ({}) holds the feed back, {} behind it",
                    human(tx.age),
                    tx.state.as_deref().unwrap_or("unknown state"),
                    count(self.feed.waiting, "committed event")
                ),
            );
        }
    }

    fn outbox_problems(&self, thresholds: &Thresholds, found: &mut Found) {
        let mut add = |area, subject, message| found.add(area, subject, message);
        let outbox = &self.outbox;
        if let (Some(max), Some(age)) = (thresholds.outbox_age, outbox.oldest_pending_age)
            && age > max
        {
            add(
                "outbox",
                "pending".to_owned(),
                format!(
                    "{} pending, the oldest for {}: is a relay running?",
                    count(outbox.pending, "message"),
                    human(age)
                ),
            );
        }
        if thresholds.outbox_dead && outbox.dead > 0 {
            for dead in &outbox.first_dead {
                add(
                    "outbox",
                    format!("message {}", dead.id),
                    format!(
                        "dead letter (key {}, {}) after {}: {}",
                        dead.key,
                        dead.message_type,
                        count(u64::from(dead.attempts), "attempt"),
                        dead.last_error.as_deref().unwrap_or("no error recorded")
                    ),
                );
            }
            let more = outbox.dead.saturating_sub(outbox.first_dead.len() as u64);
            if more > 0 {
                add(
                    "outbox",
                    "dead letters".to_owned(),
                    format!("{} more", count(more, "dead letter")),
                );
            }
        }
    }

    fn saga_problems(&self, thresholds: &Thresholds, found: &mut Found) {
        let mut add = |area, subject, message| found.add(area, subject, message);
        if thresholds.saga_failed {
            for saga in &self.sagas.failed {
                add(
                    "sagas",
                    format!("{} {}", saga.name, saga.id),
                    format!(
                        "failed: {}",
                        saga.last_error.as_deref().unwrap_or("no error recorded")
                    ),
                );
            }
            let failed = self.sagas.counts.get("failed").copied().unwrap_or(0);
            let more = failed.saturating_sub(self.sagas.failed.len() as u64);
            if more > 0 {
                add("sagas", "failed".to_owned(), format!("{more} more failed"));
            }
        }
        if let Some(max) = thresholds.saga_lease_expired {
            for saga in &self.sagas.expired_leases {
                let expired = saga
                    .lease_expires_at
                    .map(|until| since(until, self.at))
                    .unwrap_or_default();
                if expired > max {
                    add(
                        "sagas",
                        format!("{} {}", saga.name, saga.id),
                        format!(
                            "{}, but the lease of worker `{}` expired {} ago and no worker took it over",
                            saga.status,
                            saga.lease_owner.as_deref().unwrap_or("?"),
                            human(expired)
                        ),
                    );
                }
            }
        }
    }

    fn projection_problems(&self, thresholds: &Thresholds, found: &mut Found) {
        let mut add = |area, subject, message| found.add(area, subject, message);
        for projection in &self.projections {
            let subject = projection.key.to_string();
            if thresholds.projection_failed
                && let Some(failure) = &projection.failure
            {
                add(
                    "projections",
                    subject.clone(),
                    format!(
                        "failed at event {} ({} v{}) after {}: {}",
                        failure.position,
                        failure.stream_id,
                        failure.version,
                        count(u64::from(failure.attempts), "attempt"),
                        failure.error
                    ),
                );
            }
            let lagging = thresholds
                .projection_lag
                .is_some_and(|max| projection.lag > max);
            let old = match (thresholds.projection_age, projection.oldest_unapplied) {
                (Some(max), Some(oldest)) => since(oldest, self.at) > max,
                _ => false,
            };
            // A failed projection falls behind as a matter of course: its failure says it all.
            if (lagging || old) && projection.failure.is_none() {
                let age = projection
                    .oldest_unapplied
                    .map(|oldest| human(since(oldest, self.at)))
                    .unwrap_or_default();
                add(
                    "projections",
                    subject,
                    format!(
                        "{}{} behind the feed, the oldest recorded {age} ago",
                        count(projection.lag, "event"),
                        if projection.lag >= super::LAG_CAP {
                            " (or more)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
    }

    fn inbox_problems(&self, thresholds: &Thresholds, found: &mut Found) {
        let mut add = |area, subject, message| found.add(area, subject, message);
        if thresholds.inbox_dead {
            for (consumer, dead) in &self.inbox.dead_by_consumer {
                add(
                    "inbox",
                    consumer.clone(),
                    format!("{} waiting for an operator", count(*dead, "dead letter")),
                );
            }
        }
    }
}

/// The problems found so far.
struct Found(Vec<Problem>);

impl Found {
    fn add(&mut self, area: &'static str, subject: String, message: String) {
        self.0.push(Problem {
            area,
            subject,
            message,
        });
    }
}
