//! `append_1_archived_1m` and `read_all_100_archived_1m`: the hot path with a million archived
//! events (in 10 000 closed, archived streams) against the same with none, in two schemas of
//! the same database migrated alike, the sides interleaved. The baselines are dtx itself: the
//! rows show what a large archive costs the hot statements (their index probes of
//! `closed_streams` and `event_archive`), not what dtx costs over raw SQL.

use crate::{AccountEvent, BoxError, Options, deposit, pair, report};
use dtx::{EventMetadata, EventStore, ExpectedVersion, GlobalPosition, NewEvent, StreamId};
use dtx_postgres::PgEventStore;
use sqlx::PgPool;

/// Archived events in the archived side's schema.
const ARCHIVED: i64 = 1_000_000;

pub(crate) async fn lifecycle_rows(options: &Options, pool: &PgPool) -> Result<(), BoxError> {
    let rows = ["append_1_archived_1m", "read_all_100_archived_1m"];
    if !rows.iter().any(|row| options.wants(row)) {
        return Ok(());
    }
    dtx_postgres::migrate_in_schema(pool, "bench_hot").await?;
    dtx_postgres::migrate_in_schema(pool, "bench_archived").await?;
    sqlx::query(
        "INSERT INTO bench_archived.event_archive (stream_id, version, global_position,
                                                  commit_order, event_id, event_type,
                                                  schema_version, data, recorded_at, outbox)
         SELECT 'Archived-' || (n / 100), n % 100 + 1, n, 2, gen_random_uuid(), 'Deposited', 1,
                jsonb_build_object('amount', n, 'memo', 'an archived deposit of the benchmark'),
                now(), false
         FROM generate_series(1, $1) AS n",
    )
    .bind(ARCHIVED)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO bench_archived.closed_streams (stream_id, last_version, archived_at)
         SELECT DISTINCT stream_id, 100, now() FROM bench_archived.event_archive",
    )
    .execute(pool)
    .await?;
    sqlx::raw_sql("ANALYZE bench_archived.event_archive; ANALYZE bench_archived.closed_streams")
        .execute(pool)
        .await?;
    let hot = PgEventStore::new(pool.clone()).with_schema("bench_hot")?;
    let archived = PgEventStore::new(pool.clone()).with_schema("bench_archived")?;
    let n = options.iterations;

    if options.wants("append_1_archived_1m") {
        let stream = StreamId::new("Bench-append-archived")?;
        let append = async |store: &PgEventStore, i: u64| {
            let event = NewEvent::encode(
                &stream,
                &AccountEvent::Deposited(deposit(i)),
                EventMetadata::default(),
            )
            .expect("encodes");
            store
                .append(&stream, ExpectedVersion::Exact(i), vec![event])
                .await
                .expect("append");
        };
        let row = pair(
            n,
            async |i| append(&archived, i).await,
            async |i| append(&hot, i).await,
        )
        .await;
        report(options, "append_1_archived_1m", "append_1_no_archive", &row);
    }

    if options.wants("read_all_100_archived_1m") {
        // 200 live events on each side; each read is the feed's last 100 (a reader near the
        // head, where every projection and the relay spend their lives).
        let mut from = [GlobalPosition::START; 2];
        for (side, store) in [&archived, &hot].into_iter().enumerate() {
            let stream = StreamId::new("Bench-feed-live")?;
            for k in 0..200u64 {
                let event = NewEvent::encode(
                    &stream,
                    &AccountEvent::Deposited(deposit(k)),
                    EventMetadata::default(),
                )?;
                let stored = store
                    .append(&stream, ExpectedVersion::Exact(k), vec![event])
                    .await?;
                if k == 99 {
                    from[side] = stored.positions[0];
                }
            }
        }
        let read = async |store: &PgEventStore, after: GlobalPosition| {
            let page = store.read_all(after, 100).await.expect("read");
            assert_eq!(page.len(), 100);
        };
        let row = pair(
            n,
            async |_| read(&archived, from[0]).await,
            async |_| read(&hot, from[1]).await,
        )
        .await;
        report(
            options,
            "read_all_100_archived_1m",
            "read_all_100_no_archive",
            &row,
        );
    }
    Ok(())
}
