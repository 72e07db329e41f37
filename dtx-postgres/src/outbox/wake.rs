//! The wake-up of an idle relay: the lock it holds while it listens, and the check every outbox
//! write makes (see the module docs of [`crate::outbox`], Wake-ups).

use super::PgOutbox;
use super::sql::OutboxSql;
use super::{channel, scope};
use dtx::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Executor, PgConnection};
use std::sync::Arc;

/// The advisory lock an armed (idle, listening) relay holds: class `"dtxw"`, id the outbox's
/// [`scope`].
pub(super) const WAKE_CLASS: i32 = 0x6474_7877; // "dtxw"

/// The wake-up check of every outbox write on the event table `events` (schema-qualified or
/// not), as one SQL expression: a shared try-lock on the outbox's wake key fails only while a
/// relay holds it (armed), and then the write notifies the outbox's channel. See
/// [`crate::outbox`], Wake-ups.
///
/// A plain `CASE` rather than a subquery: it costs the server no executor nodes to set up (a
/// subquery with a `pg_notify` in a `FROM` cost about a tenth of a raw INSERT's server CPU on
/// every append, measured by `append_1_outbox_server_cpu`). In a `RETURNING` list it runs once
/// per row: the first row takes the shared lock, the others find their own transaction holding
/// it; and a `NOTIFY` repeated in one transaction is delivered once.
pub(crate) fn wake_check(events: &str) -> String {
    format!(
        "CASE WHEN pg_try_advisory_xact_lock_shared({WAKE_CLASS}, {}) \
         THEN false ELSE pg_notify({}, '') IS NOT NULL END",
        scope(events),
        channel(events)
    )
}

/// Takes the wake lock of the outbox whose tables `conn`'s `search_path` finds (see
/// [`PgOutbox::hold_wake_lock`] for an outbox in a schema) that an idle relay holds while it
/// listens, on `conn`: a session lock, released
/// when the connection closes (or with `pg_advisory_unlock_all()`). While it is held every outbox
/// write sends a `NOTIFY`, as if a relay were armed; this is how a relay arms, and how tests and
/// benchmarks of the wake-ups arm one by hand. It waits while writes that found no relay armed
/// are still running (they hold the lock in shared mode until they commit).
///
/// # Errors
/// The database's, as sqlx reports it (a `lock_timeout` set on `conn` ends the wait with one).
pub async fn hold_wake_lock(conn: &mut PgConnection) -> sqlx::Result<()> {
    let hold = format!(
        "SELECT pg_advisory_lock({WAKE_CLASS}, {})",
        scope("event_store")
    );
    sqlx::query(&hold).execute(conn).await.map(drop)
}

impl PgOutbox {
    /// Whether an idle relay of this outbox is armed, that is listening and holding the wake
    /// lock: while it is, every outbox write notifies.
    pub async fn armed(&self) -> Result<bool> {
        sqlx::query_scalar(&self.sql.armed)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::storage)
    }

    /// Takes this outbox's wake lock on `conn`, as an idle relay does (see the free
    /// [`hold_wake_lock`]).
    ///
    /// # Errors
    /// The database's, as sqlx reports it.
    pub async fn hold_wake_lock(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query(&self.sql.hold_wake)
            .execute(conn)
            .await
            .map(drop)
    }

    /// The `NOTIFY` channel this outbox's writes wake its idle relays on:
    /// `dtx_outbox_<oid of its event_store table>`, one per schema.
    pub async fn notify_channel(&self) -> Result<String> {
        sqlx::query_scalar(&self.sql.channel)
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
    sql: Arc<OutboxSql>,
    conn: Option<PgConnection>,
}

impl WakeLock {
    /// A wake lock, not yet taken, for the outbox of `sql` in the database of `pool`.
    pub(super) fn new(pool: &PgPool, sql: Arc<OutboxSql>) -> Self {
        Self {
            options: (*pool.connect_options()).clone(),
            sql,
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
        match sqlx::query(&self.sql.hold_wake).execute(&mut *conn).await {
            Ok(_) => true,
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
        let released = sqlx::query(&self.sql.release_wake)
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
    fn the_wake_check_tries_the_wake_lock_relays_hold_and_notifies_its_channel() {
        let check = super::wake_check("\"tenant_7\".event_store");
        let sql = super::OutboxSql::new(&crate::sql::Schema::named("tenant_7").unwrap());
        let key = sql.hold_wake.replace("SELECT pg_advisory_lock(", "");
        let shared = format!("pg_try_advisory_xact_lock_shared({key}");
        assert!(check.contains(&shared), "{check}\n{shared}");
        let channel = sql.channel.replace("SELECT ", "");
        assert!(
            check.contains(&format!("pg_notify({channel}, '')")),
            "{check}"
        );
    }
}
