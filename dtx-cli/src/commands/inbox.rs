//! `dtx inbox dead|requeue|discard`.

use crate::args::Inbox;
use crate::output::{Out, ago, cut};
use crate::{CliError, Database, Outcome};
use chrono::Utc;
use dtx::inbox::InboxStore as _;

pub(crate) async fn run(
    db: &Database,
    command: Inbox,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let inbox = db.inbox();
    match command {
        Inbox::Dead { consumer, json } => {
            let dead = inbox.dead_letters(consumer.as_deref()).await?;
            if json.json {
                out.json(&dead)?;
            } else {
                let now = Utc::now();
                let rows = dead
                    .iter()
                    .map(|d| {
                        vec![
                            d.consumer.clone(),
                            d.message.message_id.to_string(),
                            d.message.event_type.clone(),
                            d.status.as_str().to_owned(),
                            d.attempts.to_string(),
                            ago(d.dead_at, now),
                            cut(&d.error, 60),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "consumer",
                        "message",
                        "type",
                        "status",
                        "attempts",
                        "dead since",
                        "error",
                    ],
                    rows,
                    "no dead letters",
                )?;
            }
        }
        Inbox::Requeue {
            consumer,
            message_id,
        } => {
            if !inbox.requeue(&consumer, message_id).await? {
                return Err(CliError::NotFound(format!(
                    "consumer `{consumer}` has no dead letter {message_id}"
                )));
            }
            out.line(format!(
                "dead letter {message_id} of `{consumer}` requeued: the consumer handles it again"
            ))?;
        }
        Inbox::Discard {
            consumer,
            message_id,
        } => {
            if !inbox.discard(&consumer, message_id).await? {
                return Err(CliError::NotFound(format!(
                    "consumer `{consumer}` has no dead letter {message_id}"
                )));
            }
            out.line(format!(
                "dead letter {message_id} of `{consumer}` discarded"
            ))?;
        }
    }
    Ok(Outcome::Ok)
}
