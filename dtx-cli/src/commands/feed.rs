//! `dtx feed check|repair`: the feed's order after a logical restore.

use crate::args::Feed;
use crate::output::{Out, Paint};
use crate::{CliError, Database, Outcome};

pub(crate) async fn run(
    db: &Database,
    command: Feed,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    match command {
        Feed::Check(json) => {
            let checked = match db.schema() {
                Some(schema) => dtx_postgres::check_feed_in_schema(db.pool(), schema).await,
                None => dtx_postgres::check_feed(db.pool()).await,
            };
            let ahead = match checked {
                Ok(()) => None,
                Err(dtx::Error::FeedAhead { stored, next_xid }) => Some((stored, next_xid)),
                Err(error) => return Err(error.into()),
            };
            if json.json {
                out.json(&serde_json::json!({
                    "ahead": ahead.is_some(),
                    "stored": ahead.map(|(stored, _)| stored),
                    "next_xid": ahead.map(|(_, next_xid)| next_xid),
                }))?;
            } else {
                match ahead {
                    None => out.line(out.paint(
                        "the feed's order is behind the database's transaction ids: nothing to repair",
                        Paint::Green,
                    ))?,
                    Some((stored, next_xid)) => {
                        let line = format!(
                            "the feed's stored order ({stored}) is ahead of the next transaction id \
                             ({next_xid}), as after a logical restore: new events would sort below \
                             what readers have read; `dtx feed repair` re-bases it"
                        );
                        out.line(out.paint(&line, Paint::Red))?;
                    }
                }
            }
            Ok(if ahead.is_some() {
                Outcome::NeedsAPerson
            } else {
                Outcome::Ok
            })
        }
        Feed::Repair(json) => {
            let repair = match db.schema() {
                Some(schema) => {
                    dtx_postgres::repair_restored_feed_in_schema(db.pool(), schema).await?
                }
                None => dtx_postgres::repair_restored_feed(db.pool()).await?,
            };
            if json.json {
                out.json(&serde_json::json!({
                    "repaired": repair.repaired,
                    "stored": repair.stored,
                    "next_xid": repair.next_xid,
                    "events": repair.events,
                    "checkpoints": repair.checkpoints,
                }))?;
            } else if repair.repaired {
                let line = format!(
                    "re-based {} events and {} checkpoints (the stored order was {}, the next \
                     transaction id {})",
                    repair.events, repair.checkpoints, repair.stored, repair.next_xid
                );
                out.line(out.paint(&line, Paint::Green))?;
            } else {
                out.line("the feed is not ahead: nothing changed")?;
            }
            Ok(Outcome::Ok)
        }
    }
}
