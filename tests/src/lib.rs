//! Cross-crate integration tests of dtx; the tests themselves live in `tests/tests/`.
//!
//! This library holds what several test files share.

use dtx_postgres::PgEventStore;

/// A [`PgEventStore`] on a fresh, migrated database.
///
/// # Panics
/// When the test server cannot be reached: database tests need PostgreSQL (`scripts/test.sh`
/// starts it).
pub async fn pg_store() -> PgEventStore {
    let pool = dtx_postgres::testing::fresh_database(16)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed for this test: {e}",
                dtx_postgres::testing::database_url()
            )
        });
    PgEventStore::new(pool)
}

/// An event store whose every call first yields to the scheduler, as real I/O would: lets
/// concurrency tests interleave tasks on the in-memory backend, which never waits otherwise.
#[derive(Debug, Clone, Default)]
pub struct Yielding<S>(pub S);

#[async_trait::async_trait]
impl<S: dtx::EventStore> dtx::EventStore for Yielding<S> {
    async fn append(
        &self,
        stream: &dtx::StreamId,
        expected: dtx::ExpectedVersion,
        events: Vec<dtx::NewEvent>,
    ) -> dtx::Result<dtx::AppendResult> {
        tokio::task::yield_now().await;
        self.0.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &dtx::StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::RecordedEvent>> {
        tokio::task::yield_now().await;
        self.0.read_stream(stream, from_version, max_count).await
    }

    async fn read_stream_data(
        &self,
        stream: &dtx::StreamId,
        from_version: u64,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::EventData>> {
        tokio::task::yield_now().await;
        self.0
            .read_stream_data(stream, from_version, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: dtx::GlobalPosition,
        max_count: usize,
    ) -> dtx::Result<Vec<dtx::RecordedEvent>> {
        tokio::task::yield_now().await;
        self.0.read_all(after, max_count).await
    }

    async fn stream_version(&self, stream: &dtx::StreamId) -> dtx::Result<u64> {
        tokio::task::yield_now().await;
        self.0.stream_version(stream).await
    }

    async fn load_snapshot(&self, stream: &dtx::StreamId) -> dtx::Result<Option<dtx::Snapshot>> {
        tokio::task::yield_now().await;
        self.0.load_snapshot(stream).await
    }

    async fn save_snapshot(
        &self,
        stream: &dtx::StreamId,
        snapshot: dtx::Snapshot,
    ) -> dtx::Result<()> {
        tokio::task::yield_now().await;
        self.0.save_snapshot(stream, snapshot).await
    }
}
