//! `dtx status`: one screen of health, from [`dtx_postgres::health`].

use crate::args::Status;
use crate::output::{Out, Paint, ago, cut, time};
use crate::{CliError, Database, Outcome};
use dtx_postgres::health::{HealthReport, Problem, Thresholds, human};
use serde::Serialize;

/// The thresholds the options set.
pub(crate) fn thresholds(command: &Status) -> Thresholds {
    Thresholds {
        transaction_age: command.max_transaction_age.0,
        outbox_age: command.max_outbox_age.0,
        saga_lease_expired: command.max_lease_expired.0,
        projection_lag: command.max_projection_lag.0,
        projection_age: command.max_projection_age.0,
        ..Thresholds::default()
    }
}

#[derive(Serialize)]
struct Json<'a> {
    healthy: bool,
    problems: &'a [Problem],
    thresholds: &'a Thresholds,
    report: &'a HealthReport,
}

pub(crate) async fn run(
    db: &Database,
    command: &Status,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let report = db.health().report().await?;
    let thresholds = thresholds(command);
    let problems = report.problems(&thresholds);
    if command.json {
        out.json(&Json {
            healthy: problems.is_empty(),
            problems: &problems,
            thresholds: &thresholds,
            report: &report,
        })?;
    } else {
        print(&report, &problems, out)?;
    }
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::NeedsAPerson
    })
}

#[expect(
    clippy::too_many_lines,
    reason = "the screen's sections, one after the other"
)]
fn print(report: &HealthReport, problems: &[Problem], out: &mut Out<'_>) -> Result<(), CliError> {
    let now = report.at;
    out.heading(&format!("dtx status at {}", time(now)))?;
    out.line("")?;

    let feed = &report.feed;
    out.heading("feed")?;
    out.line(format!(
        "  horizon xid {} · head position {} · {} committed at or above the horizon",
        feed.horizon,
        feed.head
            .map_or_else(|| "none".to_owned(), |h| h.to_string()),
        plural(feed.waiting, "event")
    ))?;
    match &feed.oldest_transaction {
        Some(tx) => {
            let who = match (tx.pid, &tx.prepared_gid) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(gid)) => format!("prepared transaction {gid}"),
                (None, None) => "a transaction".to_owned(),
            };
            out.line(format!(
                "  oldest transaction: {who}, {} for {}, database {}{}{}",
                tx.state.as_deref().unwrap_or("unknown state"),
                human(tx.age),
                tx.database.as_deref().unwrap_or("?"),
                tx.application
                    .as_deref()
                    .map(|a| format!(", application {a}"))
                    .unwrap_or_default(),
                tx.client
                    .as_deref()
                    .map(|c| format!(", client {c}"))
                    .unwrap_or_default(),
            ))?;
            if let Some(query) = &tx.query {
                out.line(format!("    query: {}", cut(query.trim(), 100)))?;
            }
        }
        None => out.line("  no transaction holds the horizon")?,
    }
    out.line("")?;

    let outbox = &report.outbox;
    out.heading("outbox")?;
    out.line(format!(
        "  {} pending{} · {} dead · {} published",
        outbox.pending,
        outbox
            .oldest_pending_age
            .map(|a| format!(" (oldest {})", human(a)))
            .unwrap_or_default(),
        outbox.dead,
        outbox.published
    ))?;
    out.line("")?;

    let sagas = &report.sagas;
    out.heading("sagas")?;
    out.line(format!(
        "  {}",
        [
            "running",
            "waiting",
            "compensating",
            "completed",
            "compensated",
            "failed"
        ]
        .iter()
        .map(|status| format!(
            "{status} {}",
            sagas.counts.get(*status).copied().unwrap_or(0)
        ))
        .collect::<Vec<_>>()
        .join(" · ")
    ))?;
    if let Some(oldest) = &sagas.oldest_running {
        out.line(format!(
            "  oldest unfinished: {} {} ({}, next step {}), started {}",
            oldest.name,
            oldest.id,
            oldest.status,
            oldest.step,
            ago(oldest.created_at, now)
        ))?;
    }
    for saga in &sagas.expired_leases {
        out.line(format!(
            "  expired lease: {} {} ({}), worker {} until {}",
            saga.name,
            saga.id,
            saga.status,
            saga.lease_owner.as_deref().unwrap_or("?"),
            saga.lease_expires_at
                .map(|t| ago(t, now))
                .unwrap_or_default()
        ))?;
    }
    out.line("")?;

    out.heading("projections")?;
    let rows = report
        .projections
        .iter()
        .map(|p| {
            vec![
                p.key.name.clone(),
                p.key.version.to_string(),
                format!("{}/{}", p.key.partition, p.key.partitions),
                p.status.as_str().to_owned(),
                p.position.clone(),
                p.lag.to_string(),
                p.oldest_unapplied.map(|t| ago(t, now)).unwrap_or_default(),
                p.failure
                    .as_ref()
                    .map(|f| cut(&f.error, 40))
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
            "lag",
            "oldest unapplied",
            "failure",
        ],
        rows,
        "  no projection checkpoints",
    )?;
    out.line("")?;

    let inbox = &report.inbox;
    out.heading("inbox")?;
    out.line(format!(
        "  {} dead{} · {} requeued",
        inbox.dead,
        if inbox.dead_by_consumer.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                inbox
                    .dead_by_consumer
                    .iter()
                    .map(|(c, n)| format!("{c}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        inbox.requeued
    ))?;
    out.line("")?;

    if problems.is_empty() {
        let ok = out.paint("all is well: nothing needs a person", Paint::Green);
        out.line(ok)?;
    } else {
        let heading = match problems.len() {
            1 => "1 problem needs a person:".to_owned(),
            n => format!("{n} problems need a person:"),
        };
        let heading = out.paint(&heading, Paint::Red);
        out.line(heading)?;
        for problem in problems {
            let mark = out.paint("✗", Paint::Red);
            out.line(format!("  {mark} {problem}"))?;
        }
    }
    Ok(())
}

/// `n thing` or `n things`.
fn plural(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
