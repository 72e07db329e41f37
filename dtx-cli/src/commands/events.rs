//! `dtx events show|tail`.

use crate::args::Events;
use crate::output::{Out, Paint, time};
use crate::{CliError, Database, Outcome};
use chrono::{DateTime, Utc};
use dtx::{EventStore as _, GlobalPosition, RecordedEvent, StreamId};
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

/// An event as `--json` prints it.
#[derive(Serialize)]
struct Shown<'a> {
    stream: &'a str,
    version: u64,
    position: String,
    event_type: &'a str,
    schema_version: u32,
    data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    event_id: Uuid,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    traceparent: Option<&'a str>,
    recorded_at: DateTime<Utc>,
}

fn shown(e: &RecordedEvent, metadata: bool) -> Shown<'_> {
    Shown {
        stream: e.stream_id.as_str(),
        version: e.version,
        position: e.position.to_string(),
        event_type: &e.event_type,
        schema_version: e.schema_version,
        data: serde_json::from_str(&e.data)
            .unwrap_or_else(|_| serde_json::Value::String(e.data.to_string())),
        metadata: metadata.then_some(Metadata {
            event_id: e.event_id,
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            traceparent: e.metadata.traceparent.as_deref(),
            recorded_at: e.recorded_at,
        }),
    }
}

fn print(e: &RecordedEvent, metadata: bool, out: &mut Out<'_>) -> Result<(), CliError> {
    let head = format!(
        "{} v{} · {} (schema {}) · position {}",
        e.stream_id, e.version, e.event_type, e.schema_version, e.position
    );
    let head = out.paint(&head, Paint::Bold);
    out.line(head)?;
    if metadata {
        let meta = format!(
            "  event {} · recorded {}{}{}{}",
            e.event_id,
            time(e.recorded_at),
            e.metadata
                .correlation_id
                .map(|c| format!(" · correlation {c}"))
                .unwrap_or_default(),
            e.metadata
                .causation_id
                .map(|c| format!(" · causation {c}"))
                .unwrap_or_default(),
            e.metadata
                .traceparent
                .as_deref()
                .map(|t| format!(" · traceparent {t}"))
                .unwrap_or_default(),
        );
        let meta = out.paint(&meta, Paint::Dim);
        out.line(meta)?;
    }
    let data = serde_json::from_str::<serde_json::Value>(&e.data)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| e.data.to_string());
    for line in data.lines() {
        out.line(format!("  {line}"))?;
    }
    Ok(())
}

pub(crate) async fn run(
    db: &Database,
    command: Events,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let store = db.event_store();
    match command {
        Events::Show {
            stream,
            from,
            limit,
            metadata,
            json,
        } => {
            let id = StreamId::new(stream)?;
            let events = store.read_stream(&id, from.max(1), limit).await?;
            if events.is_empty() && store.stream_version(&id).await? == 0 {
                return Err(CliError::NotFound(format!("no stream `{id}`")));
            }
            if json.json {
                out.json(
                    &events
                        .iter()
                        .map(|e| shown(e, metadata))
                        .collect::<Vec<_>>(),
                )?;
            } else {
                for e in &events {
                    print(e, metadata, out)?;
                }
            }
        }
        Events::Tail {
            last,
            follow,
            types,
            metadata,
            json,
        } => {
            let type_refs: Vec<&str> = types.iter().map(String::as_str).collect();
            let mut after = start(db, last, &type_refs).await?;
            loop {
                let page = store.read_feed(after, &type_refs, 1000).await?;
                for e in &page.events {
                    if json.json {
                        // One JSON document a line, for `jq` and friends.
                        let line = serde_json::to_string(&shown(e, metadata))
                            .map_err(std::io::Error::other)?;
                        out.line(line)?;
                    } else {
                        print(e, metadata, out)?;
                    }
                }
                let mut moved = page.scanned_to > after;
                after = after.max(page.scanned_to);
                if let Some(row) = page.unreadable {
                    let warning = format!(
                        "position {} ({}): the stored row cannot be read: {}",
                        row.position, row.stream_id, row.error
                    );
                    let warning = out.paint(&warning, Paint::Red);
                    out.line(warning)?;
                    after = after.max(row.position);
                    moved = true;
                }
                if !moved {
                    if !follow {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The position before the `last` latest visible events (of `types`, if any).
async fn start(db: &Database, last: usize, types: &[&str]) -> Result<GlobalPosition, CliError> {
    let events = events_table(db);
    let row: Option<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT commit_order, global_position FROM (
             SELECT commit_order, global_position FROM {events}
             WHERE commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
               AND (cardinality($2::text[]) = 0 OR event_type = ANY($2))
             ORDER BY commit_order DESC, global_position DESC LIMIT $1) e
         ORDER BY commit_order, global_position LIMIT 1"
    ))
    .bind(i64::try_from(last).unwrap_or(i64::MAX))
    .bind(types)
    .fetch_optional(db.pool())
    .await
    .map_err(CliError::storage)?;
    Ok(match row {
        // Just before the first of them.
        Some((commit, position)) if last > 0 => GlobalPosition {
            commit: u64::try_from(commit).unwrap_or(0),
            sequence: u64::try_from(position).unwrap_or(0).saturating_sub(1),
        },
        _ if last == 0 => head(db).await?,
        _ => GlobalPosition::START,
    })
}

/// The event table, in the database's schema.
fn events_table(db: &Database) -> String {
    db.schema().map_or_else(
        || "event_store".to_owned(),
        |s| format!("\"{s}\".event_store"),
    )
}

/// The position of the latest visible event.
pub(crate) async fn head(db: &Database) -> Result<GlobalPosition, CliError> {
    let events = events_table(db);
    let row: Option<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT commit_order, global_position FROM {events}
         WHERE commit_order < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         ORDER BY commit_order DESC, global_position DESC LIMIT 1"
    ))
    .fetch_optional(db.pool())
    .await
    .map_err(CliError::storage)?;
    Ok(row.map_or(GlobalPosition::START, |(c, p)| GlobalPosition {
        commit: u64::try_from(c).unwrap_or(0),
        sequence: u64::try_from(p).unwrap_or(0),
    }))
}
