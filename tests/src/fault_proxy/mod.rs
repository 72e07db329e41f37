//! [`FaultProxy`]: a TCP proxy in front of PostgreSQL that understands the wire protocol's
//! framing and cuts connections at chosen points — before a statement reaches the server,
//! after it ran but before its answer reaches the client, or right after the answer was
//! delivered — or at random every few milliseconds.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> std::io::Result<()> {
//! use tests::fault_proxy::{Fault, FaultProxy};
//!
//! let proxy = FaultProxy::in_front_of(&pool).await?;
//! let proxied = proxy.pool(1).await.expect("a pool through the proxy");
//! proxy.arm(Fault::during_commit());
//! // ... a unit of work on `proxied` commits: the server commits, the client never hears of it
//! proxy.fired().await;
//! assert_eq!(proxy.counts().faults, 1);
//! # Ok(())
//! # }
//! ```
//!
//! The proxy answers `SSLRequest`s itself with `N` (no TLS), so clients connect in plain text
//! (sqlx's default `sslmode=prefer` accepts that). Faults are decided per message, whatever the
//! reads that carry the bytes: see the `framing` module.

mod framing;
mod link;

use link::Link;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Which statements a [`Fault`] waits for. A statement is a `Query` message (the simple
/// protocol) or a `Bind` message (the extended protocol: its prepared statement's SQL, from the
/// `Parse` that prepared it on that connection, however long ago).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// An explicit `COMMIT` (or `END`), alone (what `sqlx::Transaction::commit` and
    /// `dtx::UnitOfWork::commit` send) or as a statement of a simple query (the relay's feed pass
    /// sends its last statement and its `COMMIT` together). A statement outside a transaction
    /// commits on its own; match it with [`Statement::Containing`].
    Commit,
    /// Any statement whose SQL contains this text (ASCII case-insensitive).
    Containing(String),
}

impl Statement {
    /// Any statement whose SQL contains `text` (ASCII case-insensitive).
    pub fn containing(text: impl Into<String>) -> Self {
        Self::Containing(text.into())
    }

    /// Whether `sql` is such a statement.
    pub fn matches(&self, sql: &str) -> bool {
        match self {
            Self::Commit => sql.split(';').any(|statement| {
                let first = statement
                    .split_ascii_whitespace()
                    .next()
                    .unwrap_or_default();
                first.eq_ignore_ascii_case("COMMIT") || first.eq_ignore_ascii_case("END")
            }),
            Self::Containing(text) => sql
                .to_ascii_lowercase()
                .contains(&text.to_ascii_lowercase()),
        }
    }
}

/// When a [`Fault`] cuts the connection, relative to the statement it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The statement never reaches the server: the connection is cut instead of forwarding it.
    /// Nothing it would have done happens.
    Before,
    /// The statement reaches the server and runs to its end (the server answers with
    /// `ReadyForQuery`), but none of the answer reaches the client: the connection is cut
    /// first. What it did is done (a `COMMIT` committed) and the client cannot know.
    During,
    /// The answer reaches the client whole; the connection is cut when the client sends its
    /// next message (a pool's ping when the connection is returned, or the next statement),
    /// which never reaches the server.
    After,
}

/// A one-shot fault: cut the connection that carries the `nth` statement matching `statement`
/// after the fault was armed ([`FaultProxy::arm`]), at the point `cut` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Where the connection is cut.
    pub cut: Cut,
    /// Which statements count.
    pub statement: Statement,
    /// Which of them is cut (1 = the first, the default).
    pub nth: u32,
}

impl Fault {
    /// Cuts the connection before the first statement matching `statement` reaches the server.
    pub fn before(statement: Statement) -> Self {
        Self {
            cut: Cut::Before,
            statement,
            nth: 1,
        }
    }

    /// Lets the first statement matching `statement` run, and cuts the connection before its
    /// answer reaches the client.
    pub fn during(statement: Statement) -> Self {
        Self {
            cut: Cut::During,
            ..Self::before(statement)
        }
    }

    /// Delivers the answer to the first statement matching `statement`, then cuts the
    /// connection at the client's next message.
    pub fn after(statement: Statement) -> Self {
        Self {
            cut: Cut::After,
            ..Self::before(statement)
        }
    }

    /// [`Fault::before`] an explicit `COMMIT`.
    pub fn before_commit() -> Self {
        Self::before(Statement::Commit)
    }

    /// [`Fault::during`] an explicit `COMMIT`: the transaction commits, the client never hears.
    pub fn during_commit() -> Self {
        Self::during(Statement::Commit)
    }

    /// [`Fault::after`] an explicit `COMMIT`.
    pub fn after_commit() -> Self {
        Self::after(Statement::Commit)
    }

    /// Cuts at the `n`th matching statement instead of the first (`n` of 0 counts as 1).
    #[must_use]
    pub fn nth(mut self, n: u32) -> Self {
        self.nth = n.max(1);
        self
    }
}

/// What a [`FaultProxy`] has seen and done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Client connections accepted.
    pub connections: u64,
    /// Statements (`Query` and `Bind` messages) clients sent.
    pub statements: u64,
    /// Armed [`Fault`]s that cut their connection.
    pub faults: u64,
    /// Connections cut by chaos ([`FaultProxy::start_chaos`]) or [`FaultProxy::cut_all`].
    pub chaos_cuts: u64,
}

impl Counts {
    /// Every connection the proxy cut: faults and chaos.
    pub fn cuts(&self) -> u64 {
        self.faults + self.chaos_cuts
    }
}

/// A fault armed and not yet matched: how many more matches to let through.
#[derive(Debug)]
struct Armed {
    fault: Fault,
    skip: u32,
}

/// What the accept loop, the connections and the handle share.
#[derive(Debug)]
struct Shared {
    upstream: String,
    /// Faults armed, in arming order.
    armed: Mutex<Vec<Armed>>,
    /// Faults matched whose cut has not happened yet.
    in_flight: AtomicU64,
    /// The live connections, by id.
    links: Mutex<HashMap<u64, Arc<Link>>>,
    connections: AtomicU64,
    statements: AtomicU64,
    faults: AtomicU64,
    chaos_cuts: AtomicU64,
    /// Woken whenever an armed fault fires (or is dropped with its connection).
    changed: Notify,
}

impl Shared {
    /// The fault that `sql` fires, if any: every armed fault it matches counts it, and the first
    /// one that reaches its `nth` match is taken out.
    fn matched(&self, sql: &str) -> Option<Cut> {
        let mut armed = lock(&self.armed);
        let mut fired = None;
        for (i, a) in armed.iter_mut().enumerate() {
            if !a.fault.statement.matches(sql) {
                continue;
            }
            if a.skip == 0 {
                fired = Some(i);
                break;
            }
            a.skip -= 1;
        }
        let fault = armed.remove(fired?).fault;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(fault.cut)
    }

    /// A matched fault cut its connection (`cut`), or the connection ended before it could.
    fn settled(&self, cut: bool) {
        if cut {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// A TCP proxy in front of a PostgreSQL server that cuts connections on command; see the
/// [module docs](self).
///
/// Dropping it stops accepting connections and cuts the live ones.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    accept: JoinHandle<()>,
    chaos: Mutex<Option<JoinHandle<()>>>,
    /// The server's connect options, when started with [`FaultProxy::in_front_of`].
    options: Option<PgConnectOptions>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1, forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: impl Into<String>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            armed: Mutex::default(),
            in_flight: AtomicU64::new(0),
            links: Mutex::default(),
            connections: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            chaos_cuts: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            shared,
            port,
            accept,
            chaos: Mutex::default(),
            options: None,
        })
    }

    /// Starts a proxy in front of the server `pool` connects to; [`FaultProxy::pool`] then
    /// connects to the same database through it.
    pub async fn in_front_of(pool: &PgPool) -> std::io::Result<Self> {
        let options = pool.connect_options();
        let mut proxy =
            Self::start(format!("{}:{}", options.get_host(), options.get_port())).await?;
        proxy.options = Some((*options).clone());
        Ok(proxy)
    }

    /// The port the proxy listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `options` pointed at the proxy instead of the server.
    pub fn connect_options(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options.clone().host("127.0.0.1").port(self.port)
    }

    /// A pool of up to `max_connections` on the database of the pool given to
    /// [`FaultProxy::in_front_of`], through the proxy. Connections are not tested before they
    /// are handed out (`test_before_acquire(false)`: a test would add statements of its own
    /// that faults could hit); a cut connection fails its statement, and the pool drops it.
    ///
    /// # Errors
    /// When the proxy was not started with [`FaultProxy::in_front_of`], or no connection opens.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool, sqlx::Error> {
        let options = self.options.as_ref().ok_or_else(|| {
            sqlx::Error::Configuration("start the proxy with FaultProxy::in_front_of".into())
        })?;
        PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .connect_with(self.connect_options(options))
            .await
    }

    /// Arms a one-shot fault. Faults armed together are matched in arming order; each fires
    /// once.
    pub fn arm(&self, fault: Fault) {
        let skip = fault.nth.max(1) - 1;
        lock(&self.shared.armed).push(Armed { fault, skip });
    }

    /// Drops every armed fault that has not matched yet; returns how many.
    pub fn disarm(&self) -> usize {
        let mut armed = lock(&self.shared.armed);
        let n = armed.len();
        armed.clear();
        n
    }

    /// How many armed faults have not cut their connection yet.
    pub fn pending(&self) -> usize {
        let armed = lock(&self.shared.armed).len();
        let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
        armed + usize::try_from(in_flight).unwrap_or(usize::MAX)
    }

    /// Waits until every armed fault has fired (cut its connection) — for as long as that
    /// takes: put a deadline around it (`tokio::time::timeout`) if the statement might never
    /// come.
    pub async fn fired(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Cuts every live connection now; returns how many.
    pub fn cut_all(&self) -> usize {
        cut_all(&self.shared)
    }

    /// Cuts every live connection at intervals drawn from `every` (uniformly, from a generator
    /// seeded with `seed`, so a run can be repeated), until [`FaultProxy::stop_chaos`]. Replaces
    /// a chaos already running.
    pub fn start_chaos(&self, every: std::ops::Range<Duration>, seed: u64) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            let mut rng = seed | 1;
            let (low, high) = (every.start, every.end.max(every.start));
            let span = u64::try_from(high.saturating_sub(low).as_micros()).unwrap_or(u64::MAX);
            loop {
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let jitter = if span == 0 { 0 } else { rng % span };
                tokio::time::sleep(low + Duration::from_micros(jitter)).await;
                cut_all(&shared);
            }
        });
        if let Some(previous) = lock(&self.chaos).replace(task) {
            previous.abort();
        }
    }

    /// Stops the chaos started by [`FaultProxy::start_chaos`]; connections are left alone from
    /// now on.
    pub fn stop_chaos(&self) {
        if let Some(task) = lock(&self.chaos).take() {
            task.abort();
        }
    }

    /// What the proxy has seen and done so far.
    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            connections: s.connections.load(Ordering::Relaxed),
            statements: s.statements.load(Ordering::Relaxed),
            faults: s.faults.load(Ordering::Relaxed),
            chaos_cuts: s.chaos_cuts.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.stop_chaos();
        cut_all(&self.shared);
    }
}

/// Locks `mutex`, whether or not a thread panicked holding it (every update the proxy makes
/// under a lock is complete before anything can panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn cut_all(shared: &Shared) -> usize {
    let links: Vec<Arc<Link>> = lock(&shared.links).values().cloned().collect();
    let cut = links.iter().filter(|link| link.cut()).count();
    shared
        .chaos_cuts
        .fetch_add(u64::try_from(cut).unwrap_or(u64::MAX), Ordering::Relaxed);
    cut
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        next_id += 1;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(&shared);
        let id = next_id;
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&shared.upstream).await else {
                return;
            };
            // Faults act on single messages: send each as soon as it is decided.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            link::run(id, client, server, shared).await;
        });
    }
}
