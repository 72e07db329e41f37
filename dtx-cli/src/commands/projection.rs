//! `dtx projection list|reset|skip|resume|rebuild`.

use crate::args::{Projection, ProjectionKey};
use crate::output::{Out, Paint, ago, cut};
use crate::{CliError, Database, Operator, Outcome};
use chrono::Utc;
use dtx::GlobalPosition;
use dtx::projection::{Checkpoint, CheckpointKey, CheckpointStore as _, ProjectionStatus};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, Instant};

pub(crate) async fn run(
    op: &Operator,
    db: &Database,
    command: Projection,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let checkpoints = db.checkpoint_store();
    match command {
        Projection::List(json) => list(db, json.json, out).await?,
        Projection::Reset {
            key,
            checkpoint_only,
        } => {
            let runner = op.projections.as_ref().map(|f| f(db));
            match runner {
                Some(runner)
                    if !checkpoint_only && runner.keys().iter().any(|k| k.name == key.name) =>
                {
                    runner.reset(&key.name).await?;
                    out.line(format!(
                        "{} reset: its read model is cleared and it applies the feed again from the start",
                        key.name
                    ))?;
                }
                _ if checkpoint_only => {
                    let keys = select(&checkpoints.list().await?, &key, |_| true)?;
                    let mut uow = checkpoints.begin().await?;
                    for k in &keys {
                        checkpoints.reset_in(&mut *uow, k).await?;
                    }
                    uow.commit_boxed().await?;
                    for k in keys {
                        out.line(format!(
                            "{k} reset to the start of the feed (checkpoint only: its read model is not cleared)"
                        ))?;
                    }
                }
                _ => {
                    return Err(CliError::Refused(format!(
                        "`{}` is not a projection this binary runs, so its read model cannot be \
                         cleared: run the reset from the service's binary (dtx_cli::Operator::projections), \
                         or pass --checkpoint-only for a subscription or a read model whose handlers upsert",
                        key.name
                    )));
                }
            }
        }
        Projection::Skip { key, reason } => {
            let keys = select(&checkpoints.list().await?, &key, |c| {
                c.status == ProjectionStatus::Failed
            })
            .map_err(|_| not_failed(&key))?;
            for k in keys {
                let skip = checkpoints.skip(&k, &reason).await?;
                out.line(format!(
                    "{k} skipped the event at {} ({} v{}, {}) and runs again; recorded: {}",
                    skip.failure.position,
                    skip.failure.stream_id,
                    skip.failure.version,
                    skip.failure.event_id,
                    skip.reason
                ))?;
            }
        }
        Projection::Resume { key } => {
            let keys = select(&checkpoints.list().await?, &key, |c| {
                c.status == ProjectionStatus::Failed
            })
            .map_err(|_| not_failed(&key))?;
            for k in keys {
                checkpoints.resume(&k).await?;
                out.line(format!("{k} runs again from the event it stopped at"))?;
            }
        }
        Projection::Rebuild { name } => rebuild(op, db, &name, out).await?,
    }
    Ok(Outcome::Ok)
}

fn not_failed(key: &ProjectionKey) -> CliError {
    CliError::Refused(format!(
        "projection `{}` has no failed checkpoint{}",
        key.name,
        key.version
            .map(|v| format!(" at version {v}"))
            .unwrap_or_default()
    ))
}

/// The checkpoint keys of `key` that pass `filter`: of its version (the newest when none is
/// given) and partition (every one when none is given).
fn select(
    all: &[Checkpoint],
    key: &ProjectionKey,
    filter: impl Fn(&Checkpoint) -> bool,
) -> Result<Vec<CheckpointKey>, CliError> {
    let named: Vec<&Checkpoint> = all.iter().filter(|c| c.key.name == key.name).collect();
    let version = key
        .version
        .or_else(|| named.iter().map(|c| c.key.version).max())
        .ok_or_else(|| {
            CliError::NotFound(format!("no projection `{}` has a checkpoint", key.name))
        })?;
    let keys: Vec<CheckpointKey> = named
        .into_iter()
        .filter(|c| c.key.version == version)
        .filter(|c| key.partition.is_none_or(|p| c.key.partition == p))
        .filter(|c| filter(c))
        .map(|c| c.key.clone())
        .collect();
    if keys.is_empty() {
        return Err(CliError::NotFound(format!(
            "no checkpoint of `{}` v{version} matches",
            key.name
        )));
    }
    Ok(keys)
}

/// A projection as `projection list --json` prints it.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    health: dtx_postgres::health::ProjectionHealth,
    /// Whether this binary registers it (`#[projection]`).
    registered: bool,
}

async fn list(db: &Database, json: bool, out: &mut Out<'_>) -> Result<(), CliError> {
    let registered = dtx::projection::registered()?;
    let listed: Vec<Listed> = db
        .health()
        .projections()
        .await?
        .into_iter()
        .map(|health| Listed {
            registered: registered.iter().any(|r| r.name == health.key.name),
            health,
        })
        .collect();
    if json {
        out.json(&listed)?;
        return Ok(());
    }
    let now = Utc::now();
    let rows = listed
        .iter()
        .map(|l| {
            let p = &l.health;
            vec![
                p.key.name.clone(),
                p.key.version.to_string(),
                format!("{}/{}", p.key.partition, p.key.partitions),
                p.status.as_str().to_owned(),
                p.position.clone(),
                p.applied.to_string(),
                p.lag.to_string(),
                p.oldest_unapplied.map(|t| ago(t, now)).unwrap_or_default(),
                p.failure
                    .as_ref()
                    .map(|f| {
                        format!(
                            "at {} ({} v{}): {}",
                            f.position,
                            f.stream_id,
                            f.version,
                            cut(&f.error, 40)
                        )
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.table(
        &[
            "projection",
            "version",
            "partition",
            "status",
            "position",
            "applied",
            "lag",
            "oldest unapplied",
            "failure",
        ],
        rows,
        "no projection checkpoints",
    )?;
    for r in &registered {
        if !listed.iter().any(|l| l.health.key.name == r.name) {
            out.line(format!(
                "{} v{} is registered and has no checkpoint yet",
                r.name, r.version
            ))?;
        }
    }
    Ok(())
}

/// Resets `name` through the service's runner and applies the feed again, with a progress bar
/// (on a terminal) and an ETA. When a running service holds the projection's lease, that
/// service rebuilds it, and this follows its progress.
async fn rebuild(
    op: &Operator,
    db: &Database,
    name: &str,
    out: &mut Out<'_>,
) -> Result<(), CliError> {
    let runner = op.projections.as_ref().map(|f| f(db)).ok_or_else(|| {
        CliError::Refused(
            "a rebuild runs the projection's handlers, which this binary does not have: run it \
             from the service's binary (dtx_cli::Operator::projections)"
                .to_owned(),
        )
    })?;
    let keys: Vec<CheckpointKey> = runner
        .keys()
        .into_iter()
        .filter(|k| k.name == name)
        .collect();
    if keys.is_empty() {
        return Err(CliError::NotFound(format!(
            "the service's runner has no projection `{name}` (it runs: {})",
            runner
                .keys()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let started = Instant::now();
    runner.reset(name).await?;
    let target = super::events::head(db).await?;
    let bar = ProgressBar::new(target.sequence.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} positions ({percent}%) · {per_sec} · ETA {eta}",
        )
        .map_err(|e| CliError::Refused(e.to_string()))?
        .progress_chars("=> "),
    );
    bar.set_message(name.to_owned());
    let checkpoints = db.checkpoint_store();
    let mut task = Some(tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_once().await }
    }));
    let applied: u64 = loop {
        let ours: Vec<Checkpoint> = checkpoints
            .list()
            .await?
            .into_iter()
            .filter(|c| keys.contains(&c.key))
            .collect();
        let slowest = ours
            .iter()
            .map(|c| c.position)
            .min()
            .unwrap_or(GlobalPosition::START);
        bar.set_position(slowest.sequence.min(target.sequence));
        if let Some(failed) = ours.iter().find(|c| c.status == ProjectionStatus::Failed) {
            bar.abandon();
            let failure = failed
                .failure
                .as_ref()
                .map(|f| f.error.clone())
                .unwrap_or_default();
            return Err(CliError::Refused(format!(
                "{} failed during the rebuild: {failure} (see `dtx projection list`)",
                failed.key
            )));
        }
        if ours.len() == keys.len() && slowest >= target && task.is_none() {
            break ours.iter().map(|c| c.applied).sum();
        }
        match task.take() {
            Some(running) if running.is_finished() => {
                running
                    .await
                    .map_err(|e| CliError::Refused(e.to_string()))??;
            }
            Some(running) => {
                task = Some(running);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None => {
                // Another runner holds the lease: it rebuilds, this follows (and takes over
                // when it can).
                bar.set_message(format!("{name} (by the service holding it)"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                task = Some(tokio::spawn({
                    let runner = runner.clone();
                    async move { runner.run_once().await }
                }));
            }
        }
    };
    bar.finish_and_clear();
    let done = format!(
        "{name} rebuilt: {applied} events applied up to position {target} in {}",
        dtx_postgres::health::human(started.elapsed())
    );
    let done = out.paint(&done, Paint::Green);
    out.line(done)?;
    Ok(())
}
