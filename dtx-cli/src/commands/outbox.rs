//! `dtx outbox dead|requeue|purge`.

use crate::args::Outbox;
use crate::output::{Out, ago, cut};
use crate::{CliError, Database, Outcome};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A dead message as `outbox dead --json` prints it.
#[derive(Serialize)]
struct Dead {
    id: i64,
    key: String,
    sequence: Option<u64>,
    message_id: Uuid,
    message_type: String,
    attempts: u32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    headers: BTreeMap<String, String>,
    payload: serde_json::Value,
}

pub(crate) async fn run(
    db: &Database,
    command: Outbox,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let outbox = db.outbox();
    match command {
        Outbox::Dead { limit, json } => {
            let dead = outbox.dead(limit).await?;
            if json.json {
                let dead: Vec<Dead> = dead
                    .into_iter()
                    .map(|m| Dead {
                        payload: serde_json::from_str(&m.payload)
                            .unwrap_or_else(|_| serde_json::Value::String(m.payload.to_string())),
                        id: m.id,
                        key: m.key,
                        sequence: m.sequence,
                        message_id: m.message_id,
                        message_type: m.message_type,
                        attempts: m.attempts,
                        last_error: m.last_error,
                        created_at: m.created_at,
                        headers: m.headers,
                    })
                    .collect();
                out.json(&dead)?;
            } else {
                let now = Utc::now();
                let rows = dead
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.key.clone(),
                            m.message_type.clone(),
                            m.attempts.to_string(),
                            ago(m.created_at, now),
                            m.last_error
                                .as_deref()
                                .map(|e| cut(e, 60))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                out.table(
                    &["id", "key", "type", "attempts", "written", "last error"],
                    rows,
                    "no dead letters",
                )?;
            }
        }
        Outbox::Requeue { id: Some(id), .. } => {
            if !outbox.requeue(id).await? {
                return Err(CliError::NotFound(format!(
                    "no dead outbox message has id {id} (see `dtx outbox dead`)"
                )));
            }
            out.line(format!(
                "message {id} is pending again: its key resumes, in order"
            ))?;
        }
        Outbox::Requeue { id: None, .. } => {
            let n = outbox.requeue_all_dead().await?;
            out.line(format!("{n} dead messages are pending again"))?;
        }
        Outbox::Purge { older_than, batch } => {
            let n = outbox.purge_published(older_than, batch).await?;
            out.line(format!(
                "{n} published messages older than {} deleted",
                dtx_postgres::health::human(older_than)
            ))?;
        }
    }
    Ok(Outcome::Ok)
}
