//! What every store shares: the schema its tables are in, the conversions between Rust's and
//! PostgreSQL's integers, and the reading of sqlx errors.

use dtx::error::BoxError;
use dtx::{Error, Result, StreamId};

/// The schema a store's tables are in: validated and quoted once (see
/// [`crate::quote_identifier`]), then put before every table name of the store's statements.
/// The default is no schema: the tables the connection's `search_path` finds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    /// The quoted name, if any.
    quoted: Option<String>,
}

impl Schema {
    /// The schema `name`, validated and quoted.
    pub(crate) fn named(name: &str) -> Result<Self> {
        Ok(Self {
            quoted: Some(crate::quote_identifier(name)?),
        })
    }

    /// The name of `table` (or of any other relation, such as a sequence) in this schema.
    pub(crate) fn table(&self, table: &str) -> String {
        match &self.quoted {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_owned(),
        }
    }
}

/// A pool of one connection, opened when first used, with `pool`'s connect options: for a
/// connection kept for a long time (a `LISTEN`, a session lock), so that it never takes one of
/// the caller's pooled connections (on a pool of one, everything else would wait for it) and is
/// closed with its holder instead of going back to that pool with its session state.
pub(crate) fn own_connection(pool: &sqlx::PgPool) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// A count or version for a `bigint` parameter (saturating).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` column as a count or version (a negative value, which dtx never writes, is 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A number for an `integer` parameter (saturating).
pub(crate) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// An `integer` column as an unsigned number (a negative value, which dtx never writes, is 0).
pub(crate) fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A stored event's `version` column: at least 1, or [`Error::Decode`] naming the stream.
pub(crate) fn stored_version(stream: &StreamId, version: i64) -> Result<u64> {
    match u64::try_from(version) {
        Ok(version) if version > 0 => Ok(version),
        _ => Err(impossible(stream, 0, "version", version)),
    }
}

/// A stored event's `schema_version` column: between 1 and `i32::MAX` as every append
/// writes it, or [`Error::Decode`] naming the stream and the event's version.
pub(crate) fn stored_schema_version(stream: &StreamId, version: u64, schema: i32) -> Result<u32> {
    match u32::try_from(schema) {
        Ok(schema) if schema > 0 => Ok(schema),
        _ => Err(impossible(
            stream,
            version,
            "schema_version",
            i64::from(schema),
        )),
    }
}

fn impossible(stream: &StreamId, version: u64, column: &'static str, value: i64) -> Error {
    Error::Decode {
        stream: stream.clone(),
        version,
        source: dtx::event::DecodeError::ImpossibleValue { column, value },
    }
}

/// A row count or `LIMIT` for a `bigint` parameter (saturating).
pub(crate) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The constraint a unique violation (SQLSTATE `23505`) names, if `error` is one.
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

/// Whether the statement that failed with `error` may have reached the server, and committed,
/// before the link broke: a lost connection, or the server going away mid-statement.
pub(crate) fn outcome_unknown(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // connection exceptions, and the server going away mid-statement
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Sorts a failed write to `stream` into "nothing was written" ([`Error::Storage`]) and "the
/// outcome is unknown" ([`Error::OutcomeUnknown`]).
pub(crate) fn classify(stream: &StreamId, error: sqlx::Error) -> Error {
    if outcome_unknown(&error) {
        Error::OutcomeUnknown {
            stream: stream.clone(),
            source: Box::new(error) as BoxError,
        }
    } else {
        Error::storage(error)
    }
}

/// Sorts a failed commit into "nothing was committed" ([`Error::Storage`]) and "the outcome is
/// unknown" ([`Error::CommitOutcomeUnknown`]).
pub(crate) fn classify_commit(error: sqlx::Error) -> Error {
    if outcome_unknown(&error) {
        Error::CommitOutcomeUnknown {
            source: Box::new(error) as BoxError,
        }
    } else {
        Error::storage(error)
    }
}

/// A duration in whole milliseconds, for `$n * interval '1 millisecond'` (saturating).
pub(crate) fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Column `column` of `row`, a storage error when it cannot be read as `T`.
pub(crate) fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r sqlx::postgres::PgRow,
    column: &str,
) -> dtx::Result<T> {
    use sqlx::Row as _;
    row.try_get(column).map_err(dtx::Error::storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_qualifies_table_names() {
        assert_eq!(Schema::default().table("event_store"), "event_store");
        assert_eq!(
            Schema::named("tenant_7").unwrap().table("event_store"),
            "\"tenant_7\".event_store"
        );
        assert!(Schema::named("no such schema").is_err());
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(to_i32(u32::MAX), i32::MAX);
        assert_eq!(to_u32(-1), 0);
        assert_eq!(count(usize::MAX), i64::MAX);
    }
}
