//! The event store's statements, built once per schema; above all the append statements, one
//! per expectation shape, with or without the outbox, for one event or more.

use super::lifecycle;
use crate::sql::Schema;
use dtx::ExpectedVersion;

/// The statements, built once with the (validated, quoted) schema.
pub(super) struct Sql {
    /// The append statements, by [`Shape`], outbox and batch: see [`Sql::append`].
    pub(super) appends: [String; 12],
    /// The append statements of a unit of work, by outbox and batch: see [`Sql::append_in`].
    pub(super) appends_in: [String; 4],
    /// The statements of combined appends, without and with the outbox: see
    /// [`combined_statement`].
    pub(super) combined: [String; 2],
    pub(super) stored: String,
    pub(super) head: String,
    pub(super) read_stream: String,
    pub(super) read_stream_data: String,
    pub(super) read_all: String,
    /// [`dtx::EventStore::read_feed`]: a window of the feed, filtered by type, and the window's
    /// last position (a row with a NULL stream id).
    pub(super) read_feed: String,
    /// The event table, schema-qualified.
    pub(super) events: String,
    pub(super) load_snapshot: String,
    pub(super) save_snapshot: String,
}

/// The names of [`Sql::appends`], in its order: the expectation's shape (`any`, `new`,
/// `exact`), then one event or more, then with the outbox.
pub(super) const APPEND_NAMES: [&str; 12] = [
    "append_any_one",
    "append_any_many",
    "append_any_one_outbox",
    "append_any_many_outbox",
    "append_new_one",
    "append_new_many",
    "append_new_one_outbox",
    "append_new_many_outbox",
    "append_exact_one",
    "append_exact_many",
    "append_exact_one_outbox",
    "append_exact_many_outbox",
];

/// The names of [`Sql::appends_in`], in its order: one event or more, then with the outbox.
pub(super) const APPEND_IN_NAMES: [&str; 4] = [
    "append_in_one",
    "append_in_many",
    "append_in_one_outbox",
    "append_in_many_outbox",
];

/// The columns of an event row, in the order [`recorded`](super::recorded) reads them.
pub(super) const COLUMNS: &str = "stream_id, version, global_position, commit_order, event_id, event_type, \
     schema_version, data::text AS data, correlation_id, causation_id, traceparent, recorded_at";

impl Sql {
    /// The statements on the tables of `schema`.
    pub(super) fn new(schema: &Schema) -> Self {
        let events = schema.table("event_store");
        let snapshots = schema.table("event_snapshots");
        Self {
            appends: std::array::from_fn(|i| {
                let (shape, outbox, many) = Sql::append_key(i);
                append_statement(&events, shape, outbox, many)
            }),
            appends_in: std::array::from_fn(|i| {
                append_in_statement(&events, i >= 2, i % 2 == 1)
            }),
            combined: [
                combined_statement(&events, false),
                combined_statement(&events, true),
            ],
            // One index probe per id (the LATERAL subquery with LIMIT is never flattened into a
            // hash join, whatever the statistics say).
            stored: format!(
                "SELECT e.stream_id, e.version, e.global_position, e.commit_order, i.id AS event_id
                 FROM UNNEST($1::uuid[]) AS i(id)
                 CROSS JOIN LATERAL (
                     SELECT stream_id, version, global_position, commit_order FROM {events}
                     WHERE event_id = i.id LIMIT 1
                 ) e"
            ),
            head: format!("SELECT COALESCE(MAX(version), 0) FROM {events} WHERE stream_id = $1"),
            // Both stream reads end with a marker row (version 0) when the stream is archived.
            read_stream: format!(
                "(SELECT {COLUMNS} FROM {events}
                  WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3)
                 UNION ALL ({})",
                lifecycle::archived_marker(
                    &events,
                    "stream_id, 0::bigint, 0::bigint, 0::bigint, NULL::uuid, NULL::text, \
                     NULL::int4, NULL::text, NULL::uuid, NULL::uuid, NULL::text, NULL::timestamptz"
                )
            ),
            read_stream_data: format!(
                "(SELECT version, event_type, schema_version, data::text AS data FROM {events}
                  WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3)
                 UNION ALL ({})",
                lifecycle::archived_marker(&events, "0::bigint, NULL::text, NULL::int4, NULL::text")
            ),
            // The feed reads the archive too (see `lifecycle::feed_window`).
            read_all: format!(
                "SELECT {COLUMNS} FROM ({}) w ORDER BY commit_order, global_position",
                lifecycle::feed_window(&events)
            ),
            read_feed: format!(
                "WITH w AS MATERIALIZED ({})
                 (SELECT {COLUMNS} FROM w
                  WHERE cardinality($4::text[]) = 0 OR event_type = ANY($4::text[])
                  ORDER BY commit_order, global_position)
                 UNION ALL
                 (SELECT NULL::text, NULL::bigint, global_position, commit_order, NULL::uuid,
                         NULL::text, NULL::int4, NULL::text, NULL::uuid, NULL::uuid, NULL::text,
                         NULL::timestamptz
                  FROM w ORDER BY commit_order DESC, global_position DESC LIMIT 1)",
                lifecycle::feed_window(&events)
            ),
            events: events.clone(),
            load_snapshot: format!(
                "SELECT aggregate_type, version, schema_hash, state::text AS state
                 FROM {snapshots} WHERE stream_id = $1"
            ),
            save_snapshot: format!(
                "INSERT INTO {snapshots} AS s (stream_id, aggregate_type, version, schema_hash, state)
                 VALUES ($1, $2, $3, $4, $5::jsonb)
                 ON CONFLICT (stream_id) DO UPDATE
                   SET aggregate_type = EXCLUDED.aggregate_type, version = EXCLUDED.version,
                       schema_hash = EXCLUDED.schema_hash, state = EXCLUDED.state, created_at = now()
                 WHERE s.version < EXCLUDED.version OR s.schema_hash <> EXCLUDED.schema_hash"
            ),
        }
    }

    /// The statement that appends with `shape`, with or without the outbox, one event or more.
    pub(super) fn append(&self, shape: Shape, outbox: bool, many: bool) -> &str {
        &self.appends[shape as usize * 4 + usize::from(outbox) * 2 + usize::from(many)]
    }

    /// The statement that appends in a unit of work, with or without the outbox, one event or
    /// more: see [`append_in_statement`].
    pub(super) fn append_in(&self, outbox: bool, many: bool) -> &str {
        &self.appends_in[usize::from(outbox) * 2 + usize::from(many)]
    }

    /// The statement of several appends combined, with or without the outbox: see
    /// [`combined_statement`].
    pub(super) fn combined(&self, outbox: bool) -> &str {
        &self.combined[usize::from(outbox)]
    }

    /// What the append statement at `index` of [`Sql::appends`] does.
    fn append_key(index: usize) -> (Shape, bool, bool) {
        let shape = [Shape::Head, Shape::New, Shape::Exact][index / 4];
        (shape, index % 4 >= 2, index % 2 == 1)
    }
}

/// The append statement for `shape` (see [`Shape`]) into the `events` table: one statement that
/// finds the stream's current version the cheapest way the expectation allows, inserts the
/// events and returns a row per stored event (none when the expectation does not hold). Stored
/// event ids are only looked up (`stored`) when it inserts nothing or hits a unique constraint.
/// One event binds scalars; more go through `UNNEST` (the planner and executor do measurably
/// less for the first). With the outbox the rows are marked for the relay (`outbox = true`):
/// the event row is its own outbox record, so the append writes nothing more, and the last
/// column it returns wakes an idle relay (see `crate::outbox`, Wake-ups, and `wake_check`).
fn append_statement(events: &str, shape: Shape, outbox: bool, many: bool) -> String {
    const XID: &str = "pg_current_xact_id()::text::bigint";
    // The version before the first event (empty: none), the commit order, where they come
    // from, and when the insert happens at all.
    let (before, commit_order, source, filter) = match shape {
        Shape::Head => (
            "h.current",
            "h.commit_order".to_owned(),
            format!(
                "(SELECT COALESCE(max(version), 0) AS current,
                         GREATEST({XID}, COALESCE(max(commit_order), 0)) AS commit_order
                  FROM (SELECT version, commit_order FROM {events}
                        WHERE stream_id = $1 ORDER BY version DESC LIMIT 1) last) h"
            ),
            "WHERE $2::bigint IS NULL OR h.current = $2",
        ),
        Shape::New => ("", XID.to_owned(), String::new(), "WHERE $2::bigint = 0"),
        Shape::Exact => (
            "p.version",
            format!("GREATEST({XID}, p.commit_order)"),
            format!("{events} p"),
            "WHERE p.stream_id = $1 AND p.version = $2::bigint",
        ),
    };
    // The version of the event at `ord`, counted from 1.
    let nth = |ord: &str| {
        if before.is_empty() {
            ord.to_owned()
        } else {
            format!("{before} + {ord}")
        }
    };
    let (values, sources, order) = if many {
        let unnest = "UNNEST($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::uuid[],
                             $8::uuid[], $9::text[])
                      WITH ORDINALITY AS e(event_id, event_type, schema_version, data,
                                           correlation_id, causation_id, traceparent, ord)";
        (
            format!(
                "{}, {commit_order}, e.event_id, e.event_type, e.schema_version, e.data::jsonb, \
                 e.correlation_id, e.causation_id, e.traceparent",
                nth("e.ord")
            ),
            [source.as_str(), unnest],
            "ORDER BY e.ord",
        )
    } else {
        (
            format!(
                "{}, {commit_order}, $3::uuid, $4::text, $5::int4, $6::text::jsonb, $7::uuid, \
                 $8::uuid, $9::text",
                nth("1")
            ),
            [source.as_str(), ""],
            "",
        )
    };
    let sources: Vec<&str> = sources.into_iter().filter(|s| !s.is_empty()).collect();
    let from = if sources.is_empty() {
        String::new()
    } else {
        format!("FROM {}", sources.join(", "))
    };
    let (marked_column, marked) = if outbox {
        (", outbox", ", true")
    } else {
        ("", "")
    };
    // Every append wakes an idle, armed feed reader (see `super::wake`).
    let mut returning = format!(
        "RETURNING version, global_position, commit_order, {} AS fed",
        super::wake::feed_wake_check(events)
    );
    if outbox {
        returning = format!("{returning}, {} AS woke", crate::outbox::wake_check(events));
    }
    [
        format!(
            "INSERT INTO {events} (stream_id, version, commit_order, event_id, event_type, \
             schema_version, data, correlation_id, causation_id, traceparent{marked_column})"
        ),
        format!("SELECT $1, {values}{marked}"),
        from,
        lifecycle::refuse_closed(filter, events),
        order.to_owned(),
        returning,
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join("\n")
}

/// The append statement of a unit of work ([`Shape::Head`]), which must not fail on a stored
/// event id (that would abort the caller's transaction): it looks the ids up first, in the
/// transaction's view, inserts only when none is stored and the stream is at the expected
/// version, and answers in one statement with a row of each kind ([`INSERTED`] and the others): each event inserted,
/// each id found stored (committed before, or written by this very transaction: `xmin` is its
/// id), and the stream's head before the statement.
fn append_in_statement(events: &str, outbox: bool, many: bool) -> String {
    let insert = append_statement(events, Shape::Head, outbox, many);
    // The plain statement checks `$2::bigint IS NULL OR h.current = $2` (and that the stream is
    // open): insert only when no id is stored, too.
    let filter = lifecycle::refuse_closed("WHERE $2::bigint IS NULL OR h.current = $2", events);
    debug_assert!(insert.contains(&filter));
    let insert = insert.replace(
        &filter,
        &lifecycle::refuse_closed(
            "WHERE ($2::bigint IS NULL OR h.current = $2) AND NOT EXISTS (SELECT 1 FROM stored)",
            events,
        ),
    );
    let ids = if many {
        "$3::uuid[]"
    } else {
        "ARRAY[$3::uuid]"
    };
    let woke = if outbox { "woke" } else { "NULL::bool" };
    format!(
        "WITH stored AS (
             SELECT s.stream_id, s.version, s.global_position, s.commit_order, i.id AS event_id,
                    i.ord, s.xmin = pg_current_xact_id()::xid AS ours
             FROM UNNEST({ids}) WITH ORDINALITY AS i(id, ord)
             CROSS JOIN LATERAL (
                 SELECT stream_id, version, global_position, commit_order, xmin FROM {events}
                 WHERE event_id = i.id LIMIT 1
             ) s
         ),
         appended AS (
         {insert}
         )
         SELECT {INSERTED} AS kind, NULL::text AS stream_id, NULL::uuid AS event_id, 0::bigint AS ord,
                version, global_position, commit_order, {woke} AS woke
         FROM appended
         UNION ALL
         SELECT CASE WHEN ours THEN {OURS} ELSE {STORED} END, stream_id, event_id, ord,
                version, global_position, commit_order, NULL
         FROM stored
         UNION ALL
         SELECT {HEAD}, NULL, NULL, 0, COALESCE(max(version), 0), 0, 0, NULL
         FROM {events} WHERE stream_id = $1"
    )
}

/// The names of [`Sql::combined`], in its order.
pub(super) const COMBINED_NAMES: [&str; 2] = ["append_combined", "append_combined_outbox"];

/// The statement of several appends to different streams, combined into one statement and so
/// one commit (see `super::combine`). Each append keeps its own expectation: the statement reads
/// each stream's head (its last event, as [`Shape::Head`] does) and inserts the events of
/// exactly those appends whose expectation holds and whose stream is open; a version conflict
/// never stops the others. It answers with a row per inserted event (its stream, version,
/// global position and commit order); an append with none inserted nothing, and is settled
/// afterwards as a plain append that inserted nothing is (a retry of stored events, a conflict,
/// a closed stream: `PgEventStore::append_combined`).
///
/// Parameters: per append `$1` the stream (distinct within a batch), `$2` the expected version
/// (NULL for [`ExpectedVersion::Any`]); per event `$3` its append (counted from 1, in the order
/// of `$1`), `$4` its place in that append (from 1), and the event's columns as in the plain
/// statements. Each event gets the `commit_order` a plain append gives it (the transaction's id,
/// raised to the stream's previous event), so the feed stays gap-free and in order per stream.
/// The wake-up checks run per inserted row, as in the plain statements (a `NOTIFY` is sent once
/// per transaction whatever the rows).
///
/// Event ids are not looked up first, as the plain statements do not: an id stored already (a
/// retried append whose expectation still holds, as `Any` does), or a race with a writer outside
/// the statement (an append of another process, a unit of work), fails the statement on a
/// unique constraint, and the combiner then runs its appends one by one. Looking every id up
/// would cost each batch an index probe per event for a case that is rare.
fn combined_statement(events: &str, outbox: bool) -> String {
    const XID: &str = "pg_current_xact_id()::text::bigint";
    let (marked_column, marked) = if outbox {
        (", outbox", ", true")
    } else {
        ("", "")
    };
    let fed = super::wake::feed_wake_check(events);
    let closed = super::lifecycle::closed_streams(events);
    let woke = if outbox {
        crate::outbox::wake_check(events)
    } else {
        "NULL::bool".to_owned()
    };
    format!(
        "WITH a AS MATERIALIZED (
             SELECT a.n, a.stream_id, h.current, h.commit_order
             FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS a(stream_id, expected, n)
             CROSS JOIN LATERAL (
                 SELECT COALESCE(max(version), 0) AS current,
                        GREATEST({XID}, COALESCE(max(commit_order), 0)) AS commit_order
                 FROM (SELECT version, commit_order FROM {events}
                       WHERE stream_id = a.stream_id ORDER BY version DESC LIMIT 1) last
             ) h
             WHERE (a.expected IS NULL OR h.current = a.expected)
               AND NOT EXISTS (SELECT 1 FROM {closed} c WHERE c.stream_id = a.stream_id)
         )
         INSERT INTO {events} (stream_id, version, commit_order, event_id, event_type,
                               schema_version, data, correlation_id, causation_id,
                               traceparent{marked_column})
         SELECT a.stream_id, a.current + e.ord, a.commit_order, e.event_id, e.event_type,
                e.schema_version, e.data::jsonb, e.correlation_id, e.causation_id,
                e.traceparent{marked}
         FROM a JOIN UNNEST($3::int8[], $4::int8[], $5::uuid[], $6::text[], $7::int4[],
                             $8::text[], $9::uuid[], $10::uuid[], $11::text[])
                  AS e(n, ord, event_id, event_type, schema_version, data, correlation_id,
                       causation_id, traceparent)
              ON e.n = a.n
         ORDER BY a.n, e.ord
         RETURNING stream_id, version, global_position, commit_order, {fed} AS fed,
                   {woke} AS woke"
    )
}

/// An append in a unit of work's row for an event it inserted (see [`append_in_statement`]).
pub(super) const INSERTED: i32 = 0;
/// ... for an event id stored before the transaction (or by another, committed since).
pub(super) const STORED: i32 = 1;
/// ... for an event id this transaction stored.
pub(super) const OURS: i32 = 2;
/// ... with the stream's version before the statement.
pub(super) const HEAD: i32 = 3;

/// How an append finds the stream's current version, chosen by the expectation: the cheapest
/// way that still checks it, since this lookup is most of what an append costs beyond a plain
/// `INSERT` (with 8 concurrent writers, the head subquery's executor nodes alone cost about a
/// tenth of the append's server time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// [`ExpectedVersion::Any`]: reads the stream's last event (`max(version)`, zero for a new
    /// stream).
    Head = 0,
    /// [`ExpectedVersion::NoStream`]: inserts from version 1 with no lookup at all; an existing
    /// stream is a unique violation on its version 1.
    New = 1,
    /// [`ExpectedVersion::Exact`] `(n)`, `n` ≥ 1: joins the event at version `n` (one
    /// primary-key probe, no sort, no aggregate); none means the stream is shorter, and a
    /// stream that is longer is a unique violation on version `n + 1`.
    Exact = 2,
}

impl Shape {
    /// The shape that checks `expected`.
    pub(super) fn of(expected: ExpectedVersion) -> Self {
        match expected.required() {
            None => Self::Head,
            Some(0) => Self::New,
            Some(_) => Self::Exact,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each append statement carries the name its place in the table gives it, and does what
    /// the name says.
    #[test]
    fn append_statements_are_where_their_names_say() {
        let sql = Sql::new(&Schema::default());
        for (index, name) in APPEND_NAMES.into_iter().enumerate() {
            let (shape, outbox, many) = Sql::append_key(index);
            let statement = sql.append(shape, outbox, many);
            assert_eq!(statement, sql.appends[index]);
            let word = match shape {
                Shape::Head => "_any_",
                Shape::New => "_new_",
                Shape::Exact => "_exact_",
            };
            assert!(name.contains(word), "{name}");
            assert_eq!(name.contains("_many"), many, "{name}");
            assert_eq!(statement.contains("UNNEST"), many, "{name}");
            assert_eq!(name.ends_with("_outbox"), outbox, "{name}");
            assert_eq!(statement.contains("'dtx_outbox_'"), outbox, "{name}");
            assert!(
                statement.contains("'dtx_feed_'"),
                "every append wakes feed readers: {name}"
            );
            assert_eq!(
                statement.contains("max(version)"),
                shape == Shape::Head,
                "{name}"
            );
        }
    }

    /// The combined statements: with the outbox only where the name says, and both wake-up
    /// checks where the plain statements have them.
    #[test]
    fn combined_statements_mark_and_wake_as_the_plain_ones() {
        let sql = Sql::new(&Schema::default());
        for (name, outbox) in COMBINED_NAMES.into_iter().zip([false, true]) {
            let statement = sql.combined(outbox);
            assert_eq!(name.ends_with("_outbox"), outbox, "{name}");
            assert_eq!(statement.contains("'dtx_outbox_'"), outbox, "{name}");
            assert_eq!(statement.contains(", outbox)"), outbox, "{name}");
            assert!(statement.contains("'dtx_feed_'"), "{name}");
            assert!(statement.contains("pg_current_xact_id()"), "{name}");
        }
    }
}
