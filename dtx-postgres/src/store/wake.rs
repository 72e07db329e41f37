//! The wake-up of idle feed readers (projection runners): the lock a waker holds while it
//! listens, and the check every append makes. The same design as the outbox relay's (see
//! [`crate::outbox`], Wake-ups): an append sends a `NOTIFY` only while a reader is idle and
//! armed, never one per append under load.

use dtx::store::{FeedWaker, WakeTicket};
use sqlx::postgres::{PgListener, PgPool};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The advisory lock class of an armed feed waker: `"dtxr"` (for readers; `"dtxf"` is the
/// outbox relay's feed lock).
const FEED_CLASS: i32 = 0x6474_7872; // "dtxr"

/// The lock key of the feed of the event table `events`: the low 32 bits of its oid.
fn scope(events: &str) -> String {
    format!("('{events}'::regclass::oid::int8::bit(32)::int4)")
}

/// The SQL expression (`text`) of the feed's `NOTIFY` channel: `dtx_feed_<oid>`.
fn channel(events: &str) -> String {
    format!("('dtx_feed_' || '{events}'::regclass::oid::text)")
}

/// The wake-up check of every append into `events`, as one SQL expression: a shared try-lock
/// on the feed's wake key fails only while a waker holds it (armed), and then the append
/// notifies the feed's channel, once per transaction.
pub(super) fn feed_wake_check(events: &str) -> String {
    format!(
        "CASE WHEN pg_try_advisory_xact_lock_shared({FEED_CLASS}, {}) \
         THEN false ELSE pg_notify({}, '') IS NOT NULL END",
        scope(events),
        channel(events)
    )
}

/// The statements of a waker on `events`.
struct Statements {
    hold: String,
    /// Whether another waker holds the lock (then its wake-ups reach this one's channel too).
    held_elsewhere: String,
    release: String,
    channel: String,
}

/// What the waker's task and its waiters share.
struct Shared {
    state: watch::Sender<WakeTicket>,
    wanted: Notify,
}

/// The [`FeedWaker`] of a [`crate::PgEventStore`]: a task with a connection of its own that,
/// when a waiting reader asks, takes the feed's wake lock and listens; the first append after
/// that notifies, and the task gives the lock up and wakes every waiting reader.
pub(crate) struct PgFeedWaker {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgFeedWaker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgFeedWaker {
    /// Starts the waker of the feed of `events` in the database of `pool`.
    pub(crate) fn start(pool: &PgPool, events: &str) -> Self {
        let shared = Arc::new(Shared {
            state: watch::Sender::new(WakeTicket {
                epoch: 0,
                armed: false,
            }),
            wanted: Notify::new(),
        });
        let statements = Statements {
            hold: format!("SELECT pg_advisory_lock({FEED_CLASS}, {})", scope(events)),
            held_elsewhere: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
                   AND pid <> pg_backend_pid() AND objsubid = 2
                   AND classid::int8 = {FEED_CLASS}
                   AND objid::int8 = ({}::int8 & 4294967295))",
                scope(events)
            ),
            release: format!("SELECT pg_advisory_unlock({FEED_CLASS}, {})", scope(events)),
            channel: format!("SELECT {}", channel(events)),
        };
        // The listener's connection (which holds the wake lock) is its own, outside the pool.
        let task = tokio::spawn(watch_feed(
            crate::sql::own_connection(pool),
            statements,
            Arc::downgrade(&shared),
        ));
        Self { shared, task }
    }
}

#[async_trait::async_trait]
impl FeedWaker for PgFeedWaker {
    fn ticket(&self) -> WakeTicket {
        *self.shared.state.borrow()
    }

    async fn wait(&self, ticket: WakeTicket, timeout: Duration) {
        let mut state = self.shared.state.subscribe();
        if *state.borrow_and_update() != ticket {
            return;
        }
        if !ticket.armed {
            self.shared.wanted.notify_one();
        }
        let changed = state.wait_for(|now| *now != ticket);
        let _ = tokio::time::timeout(timeout, changed).await;
    }
}

/// Moves the waker to a new epoch, armed or not.
fn publish(shared: &Shared, armed: bool) {
    shared.state.send_modify(|state| {
        state.epoch += 1;
        state.armed = armed;
    });
}

/// The waker's task: arms when asked, disarms on the first notification, until the waker is
/// dropped.
async fn watch_feed(pool: PgPool, statements: Statements, shared: Weak<Shared>) {
    const CHECK: Duration = Duration::from_secs(5);
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        // Wait until a reader asks (looking again now and then whether the waker is gone).
        if tokio::time::timeout(CHECK, strong.wanted.notified())
            .await
            .is_err()
        {
            continue;
        }
        let armed = arm(&pool, &statements, &mut listener).await;
        let armed_here = matches!(armed, Ok(Armed::Here));
        match armed {
            Ok(Armed::Here | Armed::Elsewhere) => publish(&strong, true),
            Ok(Armed::No) => {
                // Neither armed here nor elsewhere (a long write holds the lock): readers
                // poll this time.
                publish(&strong, false);
                drop(strong);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "arming the feed wake-up failed; readers poll");
                listener = None;
                publish(&strong, false);
                drop(strong);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let Some(active) = listener.as_mut() else {
            continue;
        };
        // Armed: wait for the first notification (or a lost connection, which drops the lock).
        let woken = loop {
            match tokio::time::timeout(CHECK, active.try_recv()).await {
                Ok(Ok(Some(_))) => break true,
                Ok(Ok(None) | Err(_)) => break false,
                Err(_) if shared.strong_count() <= 1 => break false,
                Err(_) => {}
            }
        };
        if woken && armed_here {
            if let Err(error) = sqlx::query(&statements.release).execute(&mut *active).await {
                tracing::debug!(%error, "disarming the feed wake-up failed");
                listener = None;
            }
        } else {
            listener = None;
        }
        publish(&strong, false);
    }
}

/// Connects (once) and takes the wake lock; the connection listens on the feed's channel.
async fn arm(
    pool: &PgPool,
    statements: &Statements,
    listener: &mut Option<PgListener>,
) -> sqlx::Result<Armed> {
    if listener.is_none() {
        let mut connected = PgListener::connect_with(pool).await?;
        // Arming waits for the appends that found no waker armed, not for another waker.
        sqlx::query("SET lock_timeout = '250ms'")
            .execute(&mut connected)
            .await?;
        let channel: String = sqlx::query_scalar(&statements.channel)
            .fetch_one(&mut connected)
            .await?;
        connected.listen(&channel).await?;
        *listener = Some(connected);
    }
    let Some(active) = listener.as_mut() else {
        return Err(sqlx::Error::PoolClosed);
    };
    match sqlx::query(&statements.hold).execute(&mut *active).await {
        Ok(_) => Ok(Armed::Here),
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            let elsewhere: bool = sqlx::query_scalar(&statements.held_elsewhere)
                .fetch_one(&mut *active)
                .await?;
            Ok(if elsewhere {
                Armed::Elsewhere
            } else {
                Armed::No
            })
        }
        Err(error) => Err(error),
    }
}

/// How [`arm`] went.
enum Armed {
    /// This waker holds the lock.
    Here,
    /// Another waker holds it: its wake-ups reach this waker's channel too, and it gives the
    /// lock up only on a notification this waker receives as well.
    Elsewhere,
    /// Neither (a long write held the lock past the timeout).
    No,
}
