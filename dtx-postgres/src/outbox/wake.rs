//! The wake-up of an idle relay: the lock it holds while it listens, and the check every outbox
//! write makes (see the module docs of [`crate::outbox`], Wake-ups).

use super::PgOutbox;
use dtx::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Executor, PgConnection};

/// The advisory lock an armed (idle, listening) relay holds: class `"dtxw"`, id 0.
const WAKE_CLASS: i32 = 0x6474_7877; // "dtxw"

/// The wake-up check of every outbox write, as one SQL expression: a shared try-lock on the wake
/// key fails only while a relay holds it (armed), and then the write notifies. See
/// [`crate::outbox`], Wake-ups.
///
/// A plain `CASE` rather than a subquery: it costs the server no executor nodes to set up (a
/// subquery with a `pg_notify` in a `FROM` cost about a tenth of a raw INSERT's server CPU on
/// every append, measured by `append_1_outbox_server_cpu`). In a `RETURNING` list it runs once
/// per row: the first row takes the shared lock, the others find their own transaction holding
/// it; and a `NOTIFY` repeated in one transaction is delivered once.
pub(crate) const WAKE_CHECK: &str = "CASE WHEN pg_try_advisory_xact_lock_shared(1685354615, 0) \
     THEN false ELSE pg_notify('dtx_outbox', '') IS NOT NULL END";

/// Takes the wake lock an idle relay holds while it listens, on `conn`: a session lock, released
/// when the connection closes (or with `pg_advisory_unlock_all()`). While it is held every outbox
/// write sends a `NOTIFY`, as if a relay were armed; this is how a relay arms, and how tests and
/// benchmarks of the wake-ups arm one by hand. It waits while writes that found no relay armed
/// are still running (they hold the lock in shared mode until they commit).
///
/// # Errors
/// The database's, as sqlx reports it (a `lock_timeout` set on `conn` ends the wait with one).
pub async fn hold_wake_lock(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1, 0)")
        .bind(WAKE_CLASS)
        .execute(conn)
        .await
        .map(drop)
}

impl PgOutbox {
    /// Whether an idle relay is armed, that is listening and holding the wake lock: while it
    /// is, every outbox write notifies.
    pub async fn armed(&self) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid = $1::int8::oid AND objid = 0 AND objsubid = 2)",
        )
        .bind(i64::from(WAKE_CLASS))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::storage)
    }
}

/// The connection an idle relay holds the wake lock on: a connection of its own, outside the
/// pool, so that the lock can never stay behind on a pooled connection. A relay dropped while
/// armed (its task aborted) drops this connection, and the server releases the lock with it.
pub(super) struct WakeLock {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

impl WakeLock {
    /// A wake lock, not yet taken, for the database of `pool`.
    pub(super) fn new(pool: &PgPool) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            conn: None,
        }
    }

    /// Takes the wake lock; `false` if another relay holds it (that relay is armed and its
    /// wake-ups reach every relay) or the connection failed (the relay then polls).
    pub(super) async fn arm(&mut self) -> bool {
        if self.conn.is_none() {
            match self.options.connect().await {
                Ok(mut conn) => {
                    // Arming waits for the writes that found the relay busy, but not for
                    // another relay that is armed.
                    if let Err(error) = conn.execute("SET lock_timeout = '250ms'").await {
                        tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                        return false;
                    }
                    self.conn = Some(conn);
                }
                Err(error) => {
                    tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                    return false;
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match hold_wake_lock(conn).await {
            Ok(()) => true,
            Err(sqlx::Error::Database(error)) => {
                tracing::debug!(%error, "the outbox wake-up is armed by another relay");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "arming the outbox wake-up failed; polling");
                self.conn = None;
                false
            }
        }
    }

    /// Releases the wake lock if [`arm`](Self::arm) took it.
    pub(super) async fn disarm(&mut self, armed: bool) {
        let (true, Some(conn)) = (armed, self.conn.as_mut()) else {
            return;
        };
        let released = sqlx::query("SELECT pg_advisory_unlock($1, 0)")
            .bind(WAKE_CLASS)
            .execute(&mut *conn)
            .await;
        if let Err(error) = released {
            // The connection is gone, and the lock with it.
            tracing::debug!(%error, "disarming the outbox wake-up failed");
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wake_check_tries_the_wake_lock_relays_hold() {
        let key = format!("pg_try_advisory_xact_lock_shared({}, 0)", super::WAKE_CLASS);
        assert!(super::WAKE_CHECK.contains(&key), "{}", super::WAKE_CHECK);
    }
}
