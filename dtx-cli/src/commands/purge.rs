//! `dtx purge`.

use crate::args::Purge;
use crate::output::Out;
use crate::{CliError, Database, Outcome};
use dtx::retention::{Retention, RetentionKind, RetentionPolicy};

pub(crate) async fn run(
    db: &Database,
    command: &Purge,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let mut policy = RetentionPolicy {
        batch: command.batch.max(1),
        ..RetentionPolicy::default()
    };
    if let Some(age) = command.older_than {
        policy = policy.older_than(age);
    }
    if let Some(age) = command.failed_sagas {
        policy = policy.keep(RetentionKind::FailedSagas, Some(age));
    }
    let retention = Retention::new(policy, db.purger());
    let report = if command.dry_run {
        retention.dry_run().await?
    } else {
        retention.purge_once().await?
    };
    if command.json.json {
        out.json(&serde_json::json!({
            "dry_run": command.dry_run,
            "rows": report.purged,
            "total": report.total(),
        }))?;
        return Ok(Outcome::Ok);
    }
    let rows = RetentionKind::ALL
        .into_iter()
        .map(|kind| {
            let kept = policy
                .age(kind)
                .map_or_else(|| "kept".to_owned(), dtx_postgres::health::human);
            let rows = report
                .purged
                .get(&kind)
                .map_or_else(|| "-".to_owned(), u64::to_string);
            vec![kind.as_str().to_owned(), kept, rows]
        })
        .collect();
    let verb = if command.dry_run { "due" } else { "deleted" };
    out.table(&["kind", "older than", verb], rows, "")?;
    out.line(if command.dry_run {
        format!("{} rows due; nothing deleted (--dry-run)", report.total())
    } else {
        format!("{} rows deleted", report.total())
    })?;
    Ok(Outcome::Ok)
}
