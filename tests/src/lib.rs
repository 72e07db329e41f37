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
