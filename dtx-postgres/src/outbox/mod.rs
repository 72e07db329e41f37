//! The PostgreSQL outbox ([`PgOutbox`]) and its relay ([`OutboxRelay`]).
//!
//! # Writing
//!
//! [`crate::PgEventStore::with_outbox`] marks the appended event rows for the relay
//! (`event_store.outbox = true`) in the append statement itself: the event row is its own outbox
//! record, so the append with the outbox is still one statement and one round trip, and it
//! writes nothing more than the events. [`PgOutbox::enqueue`] adds other messages, with their
//! own payload and headers, to `outbox_events` inside the caller's transaction.
//!
//! # Reading: the feed, then the backlog table
//!
//! A relay pass has two steps, each one transaction.
//!
//! 1. **The feed.** The relay tries the feed's advisory lock (one relay at a time reads the
//!    feed, the others go on to step 2) and reads the next batch of the gap-free global feed
//!    after the checkpoint (`outbox_feed`): rows in
//!    `(commit_order, global_position)` order below the oldest transaction still running, the
//!    same rule as [`dtx::EventStore::read_all`], so no event is ever passed over because it
//!    committed late. The lock is tried in the statement that opens the transaction, the read
//!    is the next one (its snapshot follows the lock, so it sees the checkpoint the previous
//!    batch committed). For each outbox event it tries the stream's advisory lock. It hands the
//!    batch to the publisher at once (`Publisher::publish_batch`: each stream's events in order,
//!    pipelined by a publisher that can), then, in one statement, sets aside in `outbox_events`
//!    every event it could not publish now, and moves the checkpoint past the batch; the commit
//!    makes both durable together. With the publish's own round trips aside, a pass is three
//!    round trips (`BEGIN` and the lock, the read, then the checkpoint and `COMMIT` in one simple
//!    query), four when it sets events aside (their statement carries arrays, so it goes on its
//!    own, before the `COMMIT`). Set aside are: an event
//!    whose publish failed (with its failure, to be retried with backoff) and the later events of
//!    its stream; the events of a stream that already has rows in `outbox_events` (a dead letter,
//!    a retry, a message); the events of a stream another relay holds.
//! 2. **The backlog table** (`outbox_events`, normally empty), when it has rows: the relay walks
//!    the keys that have rows with a skip scan of its primary key (one index probe per key,
//!    which also yields the key's first row), going on from where its previous pass stopped, so
//!    every key gets its turn; a key is claimable when its first row is pending and due, and the
//!    relay takes the same per-key advisory lock with `pg_try_advisory_xact_lock` (keys another
//!    relay holds are passed over). It reads the first rows of the keys it locked in id order,
//!    an equal share of the batch per key, publishes each key's rows in order, deletes what was
//!    published, records failures (backoff or dead letter) and commits.
//!
//! # Order per stream key, with any number of relays
//!
//! Within a stream the feed's order is version order, and a stream's events are never split
//! between the two paths out of order: an event goes to the backlog table when its stream has
//! rows there, and the table's order within a key is the id order, which for events is their
//! global position. Per-key advisory locks rather than `FOR UPDATE SKIP LOCKED` on rows:
//! skipping a locked row lets another relay take the *next* row of the same key and publish it
//! first. Locking the key keeps the whole key with one relay.
//!
//! The locks live as long as the relay's transaction, so a relay that dies (even by SIGKILL)
//! releases them, and the feed's checkpoint, at once when its connection drops; what it was
//! publishing is still behind the checkpoint or in the table, and is published again by the next
//! relay. Duplicates are thus limited to the batch in flight, and every message carries its id
//! (`dtx-event-id`, `Nats-Msg-Id`) for deduplication. The cost is a transaction held open while
//! a batch is published (milliseconds). The relay's commits do not wait for the WAL flush
//! (`synchronous_commit = off` for its transactions only): a server crash can lose the record
//! that a batch was published, and then the batch is published again. A running relay keeps
//! its pooled connection from one pass to the next while passes follow each other at once (no
//! checkout, and no test of the connection by the pool, per pass) while the pool has others
//! idle; it gives it back before it lingers, waits or arms, so an idle relay holds no pooled
//! connection (its `LISTEN` and its wake lock have connections of their own, outside the pool:
//! a relay and its writers can share a pool of one connection).
//!
//! The price of reading the feed: an event is published once every transaction that began
//! before it committed has ended (the feed cannot know what such a transaction will still write).
//! A long-running write transaction anywhere in the database cluster holds publishing back for
//! as long as it runs, as it holds back every reader of the feed; the relay then looks again
//! every few milliseconds ([`RelayPass::waiting`]) and never skips. Keep write transactions
//! short.
//!
//! # Poison messages
//!
//! A message that fails `max_retries + 1` times becomes `dead`. Its key **stops** behind it —
//! later messages of the same key are not published past it, so per-key order is never broken —
//! while every other key keeps flowing. [`PgOutbox::requeue`] puts it back after a fix; the key
//! then resumes in order.
//!
//! # Wake-ups
//!
//! A transaction with a pending `NOTIFY` takes a global lock at commit that serialises every
//! committing transaction, so outbox writes must not notify while a relay is busy anyway. An
//! idle relay **arms** the wake-up by holding an advisory lock (`pg_advisory_lock`, on a
//! connection of its own outside the pool, so a relay dropped while armed leaves no lock behind)
//! and releases it when it is busy again. Every outbox write tries the
//! same lock in shared mode, in its own statement (`pg_try_advisory_xact_lock_shared`): that only
//! fails while a relay holds it, and then the write notifies. No table is read or written for
//! this, and a busy relay means no `NOTIFY` at all.
//!
//! The wake lock, the channel (`dtx_outbox_<oid>`, see [`PgOutbox::notify_channel`]), the feed's
//! lock and the per-key locks are scoped to the outbox's tables (by the oid of its
//! `event_store`): relays of different schemas in one database never block or wake each other.
//!
//! A write that found the relay busy holds the shared lock until it commits, so a relay that
//! goes idle and arms waits for such writes to commit (and writes arriving meanwhile already
//! notify); its last look for work after arming therefore sees them (or finds them waiting for
//! an older transaction, and keeps looking). The wake-up cannot be lost
//! in the instant between a relay's last empty pass and its arming, which a flag read by the
//! writes cannot promise. The poll ([`RelayOptions::poll_interval`]) remains as a fallback for
//! a relay that could not listen.
//!
//! Measured with pgbench (8 clients, one-event appends, PostgreSQL 15 on 2 cores, two runs each):
//! the lock check cost 0–8 % of the throughput, reading a one-row flag table 6–9 %, and a
//! `pg_notify` in every transaction halves it.
//!
//! # Retention
//!
//! Events published from the feed stay where they are, in the event store. Messages published
//! from the backlog table are copied to `outbox_published` (when [`RelayOptions::retention`] is
//! not zero) and deleted from there after the retention, in batches of
//! [`RelayOptions::retention_batch`] rows per statement (see [`PgOutbox::purge_published`]).
//!
//! [`RelayOptions::poll_interval`]: dtx::outbox::RelayOptions::poll_interval
//! [`RelayOptions::retention`]: dtx::outbox::RelayOptions::retention
//! [`RelayOptions::retention_batch`]: dtx::outbox::RelayOptions::retention_batch

mod backlog;
mod feed;
mod message;
mod publish;
mod relay;
mod sql;
mod store;
mod wake;

pub use relay::{OutboxRelay, RelayPass};
pub use store::PgOutbox;
pub use wake::hold_wake_lock;
pub(crate) use wake::wake_check;

/// The advisory-lock class of outbox keys (`pg_try_advisory_xact_lock(class, hashtext(key) #
/// scope)`, see [`scope`]), so that they never collide with an application's own single-key
/// advisory locks.
const LOCK_CLASS: i32 = 0x6474_786f; // "dtxo"

/// The advisory lock of the relay reading the feed: class `"dtxf"`, id the [`scope`].
const FEED_CLASS: i32 = 0x6474_7866; // "dtxf"

/// The SQL expression (an `int4`) that scopes an outbox's advisory locks and `NOTIFY` channel to
/// its tables: the oid of its `event_store` table (`events`, schema-qualified or not), as the
/// second key of its two-key advisory locks. Relays of outboxes in different schemas of one
/// database thus never block or wake each other, while relays of the same tables share them
/// however they name the schema (`PgOutbox::new` on a `search_path` that finds `public`, or
/// `with_schema("public")`). The `regclass` literal is resolved when the statement is planned.
fn scope(events: &str) -> String {
    format!("('{events}'::regclass::oid::int8::bit(32)::int4)")
}

/// The SQL expression (`text`) of the `NOTIFY` channel of the outbox on `events`:
/// `dtx_outbox_<oid of its event_store table>`.
fn channel(events: &str) -> String {
    format!("('dtx_outbox_' || '{events}'::regclass::oid::text)")
}
