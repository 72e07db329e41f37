//! `dtx migrate status|run`.

use crate::args::Migrate;
use crate::output::{Out, Paint, time};
use crate::{CliError, Database, Outcome};
use dtx_postgres::MigrationState;

pub(crate) async fn run(
    db: &Database,
    command: Migrate,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    match command {
        Migrate::Status(json) => {
            let states = dtx_postgres::migration_status(db.pool(), db.schema()).await?;
            if json.json {
                out.json(&states)?;
            } else {
                print(&states, out)?;
            }
            Ok(Outcome::Ok)
        }
        Migrate::Run => {
            let before = dtx_postgres::migration_status(db.pool(), db.schema()).await?;
            let pending: Vec<&MigrationState> = before.iter().filter(|s| s.pending()).collect();
            if pending.is_empty() {
                out.line("nothing to apply: every migration is applied")?;
                return Ok(Outcome::Ok);
            }
            match db.schema() {
                Some(schema) => dtx_postgres::migrate_in_schema(db.pool(), schema).await?,
                None => dtx_postgres::migrate(db.pool()).await?,
            }
            for state in pending {
                let line = format!("applied {} {}", state.version, state.description);
                out.line(out.paint(&line, Paint::Green))?;
            }
            Ok(Outcome::Ok)
        }
    }
}

fn print(states: &[MigrationState], out: &mut Out<'_>) -> Result<(), CliError> {
    let rows = states
        .iter()
        .map(|s| {
            let state = match (s.applied_at, s.changed, s.known) {
                (None, _, _) => "pending",
                (Some(_), true, _) => "changed since applied",
                (Some(_), _, false) => "applied (unknown to this build)",
                (Some(_), false, true) => "applied",
            };
            vec![
                s.version.to_string(),
                s.description.clone(),
                state.to_owned(),
                s.applied_at.map(time).unwrap_or_default(),
            ]
        })
        .collect();
    out.table(
        &["version", "migration", "state", "applied at"],
        rows,
        "no migrations",
    )?;
    let pending = states.iter().filter(|s| s.pending()).count();
    out.line(match pending {
        0 => "every migration is applied".to_owned(),
        n => format!("{n} pending: `dtx migrate run` applies them"),
    })?;
    Ok(())
}
