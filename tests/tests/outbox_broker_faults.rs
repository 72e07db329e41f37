//! Broker faults: the NATS server is killed (SIGKILL) and restarted while the relay publishes.
//! Every event still reaches `JetStream`, each stream's events in order, nothing is
//! dead-lettered. The test runs its own `nats-server` (on a free port, with its own store
//! directory), never the shared one; `scripts/test.sh` installs `nats-server` when it is missing.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use async_nats::jetstream::{self, consumer, stream};
use dtx::outbox::{RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::nats::NatsPublisher;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STREAMS: u64 = 20;
const PER_STREAM: u64 = 30;

/// A `nats-server -js` process of this test's own.
struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("dtx-nats-fault-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again, on the same port and store) and waits until it accepts
    /// connections.
    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test runs its own nats-server, which is not on PATH ({e}): install it \
                     (scripts/test.sh does, with apt-get install nats-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `done` until it holds, for at most `limit`.
async fn until<F: AsyncFn() -> bool>(what: &str, limit: Duration, done: F) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_round(store: &dtx_postgres::PgEventStore, versions: std::ops::RangeInclusive<u64>) {
    for n in versions {
        for s in 0..STREAMS {
            store
                .append(
                    &StreamId::new(format!("Order-{s}")).unwrap(),
                    ExpectedVersion::Exact(n - 1),
                    vec![NewEvent::from_json("Placed", &serde_json::json!({ "n": n })).unwrap()],
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restarted_while_the_relay_publishes_loses_and_reorders_nothing() {
    let mut server = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "FAULTS".into(),
        subjects: vec!["faults.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_mins(10),
        ..stream::Config::default()
    })
    .await
    .unwrap();

    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    let publisher = NatsPublisher::new(client.clone(), "faults");
    let relay = outbox.relay(
        publisher.clone(),
        RelayOptions {
            // The outage must not dead-letter anything: retry for as long as it lasts.
            max_retries: u32::MAX - 1,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            poll_interval: Duration::from_millis(100),
            ..RelayOptions::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let half = PER_STREAM / 2;
    append_round(&store, 1..=half).await;
    until(
        "some events published",
        Duration::from_mins(1),
        async || outbox.counts().await.unwrap().published > 0,
    )
    .await;
    server.kill();
    append_round(&store, half + 1..=PER_STREAM).await;
    // The relay fails while the server is down: each failure is kept for a retry.
    until(
        "a failed publish recorded",
        Duration::from_mins(1),
        async || {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox_events WHERE attempts > 0)")
                .fetch_one(store.pool())
                .await
                .unwrap()
        },
    )
    .await;
    server.restart();
    let total = STREAMS * PER_STREAM;
    until(
        "every event published",
        Duration::from_mins(2),
        async || {
            let counts = outbox.counts().await.unwrap();
            counts.pending == 0 && counts.published >= total
        },
    )
    .await;
    assert_eq!(outbox.counts().await.unwrap().dead, 0);
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    // Read everything back: per stream, the first copy of each event in version order.
    let consumer = js
        .get_stream("FAULTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..consumer::pull::Config::default()
        })
        .await
        .unwrap();
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut received = 0;
    while received < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let before = received;
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let h = message.headers.as_ref().unwrap();
            let id = h.get(headers::EVENT_ID).unwrap().to_string();
            if !seen.insert(id) {
                continue;
            }
            received += 1;
            let stream = h.get(headers::STREAM_ID).unwrap().to_string();
            let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            per_stream
                .entry(stream)
                .or_default()
                .push(payload["n"].as_u64().unwrap());
        }
        assert!(
            received > before,
            "JetStream holds {received} of {total} events"
        );
    }
    assert_eq!(per_stream.len(), usize::try_from(STREAMS).unwrap());
    for (stream, ns) in per_stream {
        assert!(ns.iter().copied().eq(1..=PER_STREAM), "{stream}: {ns:?}");
    }
}
