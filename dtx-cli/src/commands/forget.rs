//! `dtx forget <subject>`: crypto-shredding of one data subject.

use crate::args::Forget;
use crate::output::{Out, Paint};
use crate::{CliError, Database, Outcome};
use dtx::personal::SubjectKeys;

pub(crate) async fn run(
    db: &Database,
    command: Forget,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let keys = match db.schema() {
        Some(schema) => dtx_postgres::PgSubjectKeys::with_schema(db.pool().clone(), schema)?,
        None => dtx_postgres::PgSubjectKeys::new(db.pool().clone()),
    };
    let forgotten = keys.forget(&command.subject).await?;
    if command.json {
        out.json(&serde_json::json!({
            "subject": command.subject,
            "forgotten": forgotten,
        }))?;
    } else if forgotten {
        let line = format!(
            "forgot `{}`: its key is deleted, its personal values read as forgotten everywhere",
            command.subject
        );
        out.line(out.paint(&line, Paint::Green))?;
    } else {
        out.line(format!(
            "`{}` has no key: nothing was stored about it, or it was forgotten before",
            command.subject
        ))?;
    }
    Ok(Outcome::Ok)
}
