//! A real `pg_dump` and `pg_restore` into a fresh cluster, whose transaction ids are below the
//! stored `commit_order`s: the event store, the outbox relay and the projection runner refuse
//! to start ([`dtx::Error::FeedAhead`]); `dtx_postgres::repair_restored_feed` re-bases the feed;
//! then events appended in the new cluster reach the relay and a projection, none skipped.
//!
//! The fresh cluster is started by the test (`initdb` and `pg_ctl` in a temporary folder, on a
//! free port, as the `postgres` user when the test runs as root) and stopped at its end. The
//! test is skipped, saying so, only where `initdb` is not installed.

#![allow(clippy::unwrap_used, clippy::too_many_lines, reason = "tests")]

use dtx::outbox::{MemoryPublisher, RelayOptions};
use dtx::projection::ProjectionRunner;
use dtx::{Error, EventStore, ExpectedVersion, NewEvent, StreamId};
use dtx_postgres::{PgCheckpointStore, PgEventStore, PgOutbox};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tests::projections::{PgFolds, Tick, expected_folds};

/// The folder of the PostgreSQL server programs (`initdb`, `pg_ctl`, `pg_dump`, ...), if any.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs a server program, as `postgres` when this process is root (the server refuses root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway cluster: its transaction ids start where `initdb` leaves them (a few hundred).
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(bin: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("dtx-restore-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // The server runs as `postgres` when we are root: it owns the folder.
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .output();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        run(as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data));
        let cluster = Self {
            bin: bin.to_owned(),
            dir,
            port,
        };
        run(as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                cluster.dir.display()
            ))
            .args(["-w", "start"]));
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tick(n: u64) -> NewEvent {
    NewEvent::from_json("Tick", &Tick { n }).unwrap()
}

async fn next_xid(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn is_feed_ahead<T: std::fmt::Debug>(result: &dtx::Result<T>) -> bool {
    matches!(result, Err(Error::FeedAhead { stored, next_xid }) if stored >= next_xid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_restore_is_refused_then_repaired_and_no_event_is_skipped() {
    let Some(bin) = bindir() else {
        eprintln!("SKIPPED: `initdb` is not installed, so no fresh cluster can be started");
        return;
    };

    // Database A, on the shared cluster, whose transaction ids are well above a fresh
    // cluster's (burnt here if the shared cluster is young).
    let store_a = tests::pg_store().await.with_outbox(true);
    let pool_a = store_a.pool().clone();
    while next_xid(&pool_a).await < 20_000 {
        for _ in 0..1000 {
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&pool_a)
                .await
                .unwrap();
        }
    }
    let folds = PgFolds {
        table: "folds_restore",
    };
    folds.create(&pool_a).await.unwrap();
    for s in 0..5 {
        let stream = StreamId::new(format!("Tick-old-{s}")).unwrap();
        store_a
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![tick(s), tick(s + 10)],
            )
            .await
            .unwrap();
    }
    let publisher_a = MemoryPublisher::new();
    let relay_a = PgOutbox::new(pool_a.clone()).relay(publisher_a.clone(), RelayOptions::default());
    assert_eq!(relay_a.run_until_idle().await.unwrap(), 10);
    let runner_a = ProjectionRunner::new(
        Arc::new(store_a.clone()),
        Arc::new(PgCheckpointStore::new(pool_a.clone())),
    )
    .projection(folds.clone());
    assert_eq!(runner_a.run_once().await.unwrap(), 10);
    let stored_max: i64 = sqlx::query_scalar("SELECT max(commit_order) FROM event_store")
        .fetch_one(&pool_a)
        .await
        .unwrap();

    // pg_dump A; pg_restore into database B of a fresh cluster.
    let cluster = Cluster::start(&bin);
    let dump = cluster.dir.join("a.dump");
    run(Command::new(bin.join("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(tests::database_url(&pool_a)));
    run(Command::new(bin.join("createdb"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(cluster.port.to_string())
        .arg("restored"));
    run(Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "-d"])
        .arg(cluster.url("restored"))
        .arg(&dump));
    let pool_b = sqlx::PgPool::connect(&cluster.url("restored"))
        .await
        .unwrap();
    assert!(
        next_xid(&pool_b).await <= stored_max,
        "the fresh cluster's ids are below the stored order: the hazard is real"
    );

    // Start-up refuses, everywhere a feed is written or read.
    let store_b = PgEventStore::new(pool_b.clone()).with_outbox(true);
    let publisher_b = MemoryPublisher::new();
    let relay_b = PgOutbox::new(pool_b.clone()).relay(publisher_b.clone(), RelayOptions::default());
    let runner_b = ProjectionRunner::new(
        Arc::new(store_b.clone()),
        Arc::new(PgCheckpointStore::new(pool_b.clone())),
    )
    .projection(folds.clone());
    let new_stream = StreamId::new("Tick-new-0").unwrap();
    let refused = store_b
        .append(&new_stream, ExpectedVersion::NoStream, vec![tick(1)])
        .await;
    assert!(is_feed_ahead(&refused), "{refused:?}");
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("repair_restored_feed") && message.contains("logical"),
        "{message}"
    );
    assert!(is_feed_ahead(&relay_b.run_once().await));
    assert!(is_feed_ahead(&runner_b.run_once().await));
    assert!(is_feed_ahead(&dtx_postgres::check_feed(&pool_b).await));

    // The repair, once; a second run changes nothing.
    let repair = dtx_postgres::repair_restored_feed(&pool_b).await.unwrap();
    assert!(repair.repaired, "{repair:?}");
    assert_eq!(
        (repair.events, repair.checkpoints, repair.stored),
        (10, 2, u64::try_from(stored_max).unwrap()),
        "{repair:?}"
    );
    dtx_postgres::check_feed(&pool_b).await.unwrap();
    let again = dtx_postgres::repair_restored_feed(&pool_b).await.unwrap();
    assert!(!again.repaired, "{again:?}");

    // The same instances go on: new streams, and more events in restored ones.
    let mut appended = Vec::new();
    for s in 0..3 {
        let stream = StreamId::new(format!("Tick-new-{s}")).unwrap();
        let events = vec![tick(100 + s), tick(200 + s)];
        appended.extend(events.iter().map(|e| e.event_id));
        store_b
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    for s in 0..2 {
        let stream = StreamId::new(format!("Tick-old-{s}")).unwrap();
        let events = vec![tick(300 + s)];
        appended.extend(events.iter().map(|e| e.event_id));
        store_b
            .append(&stream, ExpectedVersion::Exact(2), events)
            .await
            .unwrap();
    }

    // The relay publishes every new event, and nothing it had published before.
    assert_eq!(relay_b.run_until_idle().await.unwrap(), 8);
    let mut published: Vec<_> = publisher_b
        .published()
        .iter()
        .map(|m| m.message_id)
        .collect();
    published.sort();
    appended.sort();
    assert_eq!(published, appended);

    // The projection applies every new event: its read model equals the fold of the whole feed.
    assert_eq!(runner_b.run_once().await.unwrap(), 8);
    let expected = expected_folds(&store_b).await.unwrap();
    assert_eq!(expected.values().map(|f| f.0).sum::<u64>(), 18);
    assert_eq!(folds.read(&pool_b).await.unwrap(), expected);
    pool_b.close().await;
}
