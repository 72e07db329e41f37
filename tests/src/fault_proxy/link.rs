//! One proxied connection: the startup, then a pump per direction that frames the bytes and
//! decides, message by message, what to forward and where to cut.
//!
//! Answers are matched to requests by counting: every `Query` and `Sync` the server receives
//! (and the `StartupMessage`) is answered by exactly one `ReadyForQuery`, in order. So the
//! answer to request `n` is what the server sends after its `n - 1`th `ReadyForQuery`, up to
//! and including the `n`th.

use super::framing::{Frame, Framer, Request, is_ready_for_query};
use super::{Cut, Shared, lock};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::AbortHandle;

/// A live connection, as the proxy's handle sees it: something to cut.
#[derive(Debug)]
pub(super) struct Link {
    state: Mutex<State>,
    pumps: Mutex<Pumps>,
}

/// The pumps of a link, and whether it was closed.
#[derive(Debug, Default)]
struct Pumps {
    closed: bool,
    tasks: Vec<AbortHandle>,
}

/// What the pumps of one connection share.
#[derive(Debug, Default)]
struct State {
    /// The SQL of the statements prepared on this connection, by name.
    prepared: HashMap<String, String>,
    /// Requests (`StartupMessage`, `Query`, `Sync`) forwarded to the server.
    requests: u64,
    /// `ReadyForQuery` messages received from the server.
    answered: u64,
    /// `ReadyForQuery` messages written to the client.
    delivered: u64,
    /// A [`Cut::During`] fault: hold back the answer to this request, and cut at its end.
    during: Option<u64>,
    /// A [`Cut::After`] fault: once the answer to this request was delivered, cut at the
    /// client's next message.
    after: Option<u64>,
}

impl Link {
    /// Closes both directions at once; `false` if the link was closed already.
    pub(super) fn cut(&self) -> bool {
        let mut pumps = lock(&self.pumps);
        if pumps.closed {
            return false;
        }
        pumps.closed = true;
        for task in pumps.tasks.drain(..) {
            task.abort();
        }
        true
    }

    /// Takes the pumps' tasks, to abort them on a cut (at once if it was cut already).
    fn adopt(&self, tasks: [AbortHandle; 2]) {
        let mut pumps = lock(&self.pumps);
        if pumps.closed {
            tasks.iter().for_each(AbortHandle::abort);
        } else {
            pumps.tasks.extend(tasks);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Proxies one client connection to `server` until either side closes or the link is cut.
pub(super) async fn run(id: u64, client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let mut frames = Framer::frontend();
    let mut buf = vec![0u8; 16 * 1024];
    // The startup: encryption requests are refused here, the StartupMessage goes through.
    'startup: loop {
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) if frame.is_encryption_request() => {
                    if client_write.write_all(b"N").await.is_err() {
                        return;
                    }
                }
                Ok(Some(frame)) => {
                    if server_write.write_all(&frame.bytes).await.is_err() {
                        return;
                    }
                    break 'startup;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => frames.push(&buf[..n]),
        }
    }

    let link = Arc::new(Link {
        state: Mutex::new(State {
            requests: 1,
            ..State::default()
        }),
        pumps: Mutex::default(),
    });
    lock(&shared.links).insert(id, Arc::clone(&link));
    let to_server = tokio::spawn(client_to_server(
        client_read,
        server_write,
        frames,
        Arc::clone(&link),
        Arc::clone(&shared),
    ));
    let to_client = tokio::spawn(server_to_client(
        server_read,
        client_write,
        Arc::clone(&link),
        Arc::clone(&shared),
    ));
    link.adopt([to_server.abort_handle(), to_client.abort_handle()]);
    let _ = to_server.await;
    let _ = to_client.await;
    lock(&shared.links).remove(&id);
    // A fault matched on this connection whose cut never came (the connection ended first).
    let mut state = link.state();
    for pending in [state.during.take(), state.after.take()] {
        if pending.is_some() {
            shared.settled(false);
        }
    }
}

/// What to do with one message.
enum Verdict {
    Forward,
    /// Drop it (the answer a [`Cut::During`] fault hides).
    Hold,
    /// Cut the connection; the message is not forwarded.
    Cut,
}

/// Client to server: records prepared statements, matches statements against armed faults.
async fn client_to_server(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    mut frames: Framer,
    link: Arc<Link>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    link.cut();
                    return;
                }
            };
            match client_message(&frame, &link, &shared) {
                Verdict::Forward => out.extend_from_slice(&frame.bytes),
                Verdict::Hold => {}
                Verdict::Cut => {
                    // What came before the cut still goes through.
                    let _ = server.write_all(&out).await;
                    link.cut();
                    shared.settled(true);
                    return;
                }
            }
        }
        if !out.is_empty() {
            if server.write_all(&out).await.is_err() {
                link.cut();
                return;
            }
            out.clear();
        }
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => {
                link.cut();
                return;
            }
            Ok(n) => frames.push(&buf[..n]),
        }
    }
}

/// Decides one client message (a tagged one: the startup is over).
fn client_message(frame: &Frame, link: &Link, shared: &Shared) -> Verdict {
    let mut state = link.state();
    if state
        .after
        .is_some_and(|request| state.delivered >= request)
    {
        state.after = None;
        return Verdict::Cut;
    }
    let request = Request::of(frame);
    let sql = match &request {
        Request::Parse { name, sql } => {
            state.prepared.insert(name.clone(), sql.clone());
            None
        }
        Request::Bind { statement } => {
            Some(state.prepared.get(statement).cloned().unwrap_or_default())
        }
        Request::Query { sql } => Some(sql.clone()),
        Request::Sync | Request::Other => None,
    };
    if let Some(sql) = sql {
        shared.statements.fetch_add(1, Ordering::Relaxed);
        // One fault at a time per connection.
        let this_request = state.requests + 1;
        if state.during.is_none() && state.after.is_none() {
            match shared.matched(&sql) {
                Some(Cut::Before) => return Verdict::Cut,
                Some(Cut::During) => state.during = Some(this_request),
                Some(Cut::After) => state.after = Some(this_request),
                None => {}
            }
        }
    }
    if request.ends_request() {
        state.requests += 1;
    }
    Verdict::Forward
}

/// Server to client: counts answers, holds back the one a [`Cut::During`] fault hides.
async fn server_to_client(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    link: Arc<Link>,
    shared: Arc<Shared>,
) {
    let mut frames = Framer::backend();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        let mut ready = 0;
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    link.cut();
                    return;
                }
            };
            match server_message(&frame, &link) {
                Verdict::Forward => {
                    out.extend_from_slice(&frame.bytes);
                    ready += u64::from(is_ready_for_query(&frame));
                }
                Verdict::Hold => {}
                Verdict::Cut => {
                    let _ = client.write_all(&out).await;
                    link.cut();
                    shared.settled(true);
                    return;
                }
            }
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                link.cut();
                return;
            }
            out.clear();
            link.state().delivered += ready;
        }
        match server.read(&mut buf).await {
            Ok(0) | Err(_) => {
                link.cut();
                return;
            }
            Ok(n) => frames.push(&buf[..n]),
        }
    }
}

/// Decides one server message.
fn server_message(frame: &Frame, link: &Link) -> Verdict {
    let mut state = link.state();
    let answers = state.answered + 1;
    let end = is_ready_for_query(frame);
    if end {
        state.answered += 1;
    }
    if state.during.is_none_or(|request| answers < request) {
        return Verdict::Forward;
    }
    // The answer to the faulted request (or a later one): never delivered.
    if end {
        state.during = None;
        Verdict::Cut
    } else {
        Verdict::Hold
    }
}
