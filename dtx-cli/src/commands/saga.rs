//! `dtx saga list|show|retry|cancel|graph`.

use crate::args::{GraphFormat, Saga, SagaStatusArg};
use crate::output::{Out, Paint, ago, cut, time};
use crate::{CliError, Database, Operator, Outcome};
use chrono::{DateTime, Utc};
use dtx::saga::{
    Cancellation, SagaOrchestrator, SagaRecord, SagaShape, SagaStatus, SagaStore as _,
};
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

#[expect(clippy::too_many_lines, reason = "one arm per command")]
pub(crate) async fn run(
    op: &Operator,
    db: &Database,
    command: Saga,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let store = db.sagas();
    let orchestrator = SagaOrchestrator::builder(Arc::new(store.clone())).build()?;
    match command {
        Saga::List {
            status,
            name,
            limit,
            json,
        } => {
            let statuses: Vec<SagaStatus> = if status.is_empty() {
                vec![
                    SagaStatus::Running,
                    SagaStatus::Waiting,
                    SagaStatus::Compensating,
                    SagaStatus::Failed,
                ]
            } else {
                status.into_iter().map(SagaStatusArg::into).collect()
            };
            let mut sagas = Vec::new();
            for status in statuses {
                sagas.extend(
                    store
                        .list(status, limit)
                        .await?
                        .into_iter()
                        .filter(|s| name.as_deref().is_none_or(|n| s.name == n)),
                );
            }
            sagas.sort_by_key(|s| (s.created_at, s.id));
            let now = Utc::now();
            if json.json {
                out.json(&sagas.iter().map(Listed::of).collect::<Vec<_>>())?;
            } else {
                let rows = sagas
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.name.clone(),
                            s.status.to_string(),
                            s.step.to_string(),
                            s.attempts.to_string(),
                            ago(s.created_at, now),
                            ago(s.updated_at, now),
                            s.last_error
                                .as_deref()
                                .map(|e| cut(e, 60))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "id",
                        "saga",
                        "status",
                        "step",
                        "attempts",
                        "started",
                        "updated",
                        "last error",
                    ],
                    rows,
                    "no sagas",
                )?;
            }
            Ok(Outcome::Ok)
        }
        Saga::Show { id, json } => {
            let saga = orchestrator.status(id).await?;
            let shape = op.sagas.iter().find(|s| s.name == saga.name);
            let timeline = timeline(&saga, shape);
            if json.json {
                out.json(&Shown::of(&saga, &timeline))?;
            } else {
                show(&saga, &timeline, out)?;
            }
            Ok(Outcome::Ok)
        }
        Saga::Retry { id } => {
            orchestrator.retry(id).await?;
            out.line(format!(
                "saga {id} compensates again: a worker runs its remaining compensations now"
            ))?;
            Ok(Outcome::Ok)
        }
        Saga::Cancel { id, reason, by } => {
            let by = by.unwrap_or_else(|| "an operator".to_owned());
            orchestrator
                .cancel(id, &Cancellation::new(reason, by.clone()))
                .await?;
            out.line(format!(
                "saga {id} cancelled by {by}: a worker compensates its completed steps now"
            ))?;
            Ok(Outcome::Ok)
        }
        Saga::Graph { name, format } => graph(op, name.as_deref(), format, out),
    }
}

/// `dtx saga graph`: no database needed.
pub(crate) fn graph(
    op: &Operator,
    name: Option<&str>,
    format: GraphFormat,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let known = || {
        if op.sagas.is_empty() {
            "no saga is registered in this binary: link `dtx_cli::Operator` into the service \
             that declares its sagas"
                .to_owned()
        } else {
            format!(
                "the registered sagas: {}",
                op.sagas
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let Some(name) = name else {
        out.line(known())?;
        return Ok(Outcome::Ok);
    };
    let shape = op
        .sagas
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| CliError::NotFound(format!("no saga named `{name}`; {}", known())))?;
    out.line(crate::graph::render(shape, format).trim_end())?;
    Ok(Outcome::Ok)
}

/// A saga as `saga list --json` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    id: Uuid,
    name: &'a str,
    status: SagaStatus,
    step: u32,
    attempts: u32,
    awaiting: Option<&'a str>,
    last_error: Option<&'a str>,
    correlation_id: Option<Uuid>,
    lease_owner: Option<&'a str>,
    lease_expires_at: Option<DateTime<Utc>>,
    next_run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> Listed<'a> {
    fn of(s: &'a SagaRecord) -> Self {
        Self {
            id: s.id,
            name: &s.name,
            status: s.status,
            step: s.step,
            attempts: s.attempts,
            awaiting: s.awaiting.as_deref(),
            last_error: s.last_error.as_deref(),
            correlation_id: s.correlation_id,
            lease_owner: s.lease_owner.as_deref(),
            lease_expires_at: s.lease_expires_at,
            next_run_at: s.next_run_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A saga as `saga show --json` prints it.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    saga: Listed<'a>,
    deadline: Option<DateTime<Utc>>,
    version: u64,
    data: &'a serde_json::Value,
    completed: &'a [dtx::saga::CompletedStep],
    received: Vec<&'a str>,
    cancellation: Option<dtx::saga::Cancelled>,
    timeline: &'a [Entry],
}

impl<'a> Shown<'a> {
    fn of(s: &'a SagaRecord, timeline: &'a [Entry]) -> Self {
        let mut received: Vec<&str> = s
            .received
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with("dtx."))
            .collect();
        received.sort_unstable();
        Self {
            saga: Listed::of(s),
            deadline: s.deadline,
            version: s.version,
            data: &s.data,
            completed: &s.completed,
            received,
            cancellation: s.cancellation(),
            timeline,
        }
    }
}

/// One line of a saga's timeline.
#[derive(Debug, Serialize)]
struct Entry {
    /// `started`, `step`, `waiting`, `next`, `retrying`, `cancelled`, `compensation started`,
    /// `undone`, `undo next`, `undo failed`, `pending`, `completed`, `compensated`.
    kind: &'static str,
    /// The step it is about.
    step: Option<String>,
    /// When, if known.
    at: Option<DateTime<Utc>>,
    /// What else there is to say.
    detail: Option<String>,
}

fn entry(
    kind: &'static str,
    step: Option<String>,
    at: Option<DateTime<Utc>>,
    detail: Option<String>,
) -> Entry {
    Entry {
        kind,
        step,
        at,
        detail,
    }
}

/// The timeline of `saga`: what ran, what runs next, and how it ended. With its `shape` (the
/// saga registered in this binary), the steps still to come are named too.
#[expect(clippy::too_many_lines, reason = "one arm per status")]
fn timeline(saga: &SagaRecord, shape: Option<&SagaShape>) -> Vec<Entry> {
    let name_of = |i: usize| {
        shape
            .and_then(|s| s.steps.get(i))
            .map_or_else(|| format!("step {}", i + 1), |s| s.name.to_owned())
    };
    let mut lines = vec![entry(
        "started",
        None,
        Some(saga.created_at),
        saga.correlation_id.map(|c| format!("correlation {c}")),
    )];
    for done in &saga.completed {
        let events = match done.events.len() {
            0 => None,
            1 => Some("1 event recorded".to_owned()),
            n => Some(format!("{n} events recorded")),
        };
        lines.push(entry(
            "step",
            Some(done.step.clone()),
            Some(done.completed_at),
            events,
        ));
    }
    let next = saga.step as usize;
    match saga.status {
        SagaStatus::Running => {
            if saga.attempts > 0 {
                lines.push(entry(
                    "retrying",
                    Some(name_of(next)),
                    Some(saga.next_run_at),
                    Some(format!(
                        "attempt {} next; {}",
                        saga.attempts + 1,
                        saga.last_error.as_deref().unwrap_or("no error recorded")
                    )),
                ));
            } else {
                lines.push(entry(
                    "next",
                    Some(name_of(next)),
                    Some(saga.next_run_at),
                    None,
                ));
            }
        }
        SagaStatus::Waiting => {
            lines.push(entry(
                "waiting",
                saga.completed.last().map(|c| c.step.clone()),
                Some(saga.next_run_at),
                Some(format!(
                    "for `{}`; compensates if it has not come by then",
                    saga.awaiting.as_deref().unwrap_or("?")
                )),
            ));
        }
        SagaStatus::Compensating | SagaStatus::Compensated | SagaStatus::Failed => {
            match saga.cancellation() {
                Some(cancelled) => lines.push(entry(
                    "cancelled",
                    None,
                    Some(cancelled.at),
                    Some(format!("by {}: {}", cancelled.by, cancelled.reason)),
                )),
                None => lines.push(entry(
                    "compensation started",
                    (next < shape.map_or(usize::MAX, |s| s.steps.len())).then(|| name_of(next)),
                    None,
                    // The reason, unless a compensation's error has replaced it since.
                    saga.last_error
                        .clone()
                        .filter(|_| saga.status != SagaStatus::Failed && saga.attempts == 0),
                )),
            }
            for done in saga.completed.iter().rev().filter(|c| c.compensated) {
                let nothing = shape
                    .and_then(|s| s.steps.iter().find(|st| st.name == done.step))
                    .is_some_and(|st| !st.compensation);
                lines.push(entry(
                    "undone",
                    Some(done.step.clone()),
                    None,
                    nothing.then(|| "no compensation: nothing to undo".to_owned()),
                ));
            }
            let pending = saga.completed.iter().rev().find(|c| !c.compensated);
            match (saga.status, pending) {
                (SagaStatus::Compensating, Some(step)) => lines.push(entry(
                    "undo next",
                    Some(step.step.clone()),
                    Some(saga.next_run_at),
                    (saga.attempts > 0).then(|| {
                        format!(
                            "attempt {} next; {}",
                            saga.attempts + 1,
                            saga.last_error.as_deref().unwrap_or("no error recorded")
                        )
                    }),
                )),
                (SagaStatus::Failed, Some(step)) => lines.push(entry(
                    "undo failed",
                    Some(step.step.clone()),
                    Some(saga.updated_at),
                    Some(format!(
                        "after {} attempt{}: {} (`dtx saga retry {}` compensates again)",
                        saga.attempts,
                        if saga.attempts == 1 { "" } else { "s" },
                        saga.last_error.as_deref().unwrap_or("no error recorded"),
                        saga.id
                    )),
                )),
                _ => {}
            }
            if saga.status == SagaStatus::Compensated {
                lines.push(entry("compensated", None, Some(saga.updated_at), None));
            }
        }
        SagaStatus::Completed => {
            lines.push(entry("completed", None, Some(saga.updated_at), None));
        }
    }
    if matches!(saga.status, SagaStatus::Running | SagaStatus::Waiting)
        && let Some(shape) = shape
    {
        let first = if saga.status == SagaStatus::Running {
            next + 1
        } else {
            next
        };
        for i in first..shape.steps.len() {
            lines.push(entry("pending", Some(name_of(i)), None, None));
        }
    }
    lines
}

fn show(saga: &SagaRecord, timeline: &[Entry], out: &mut Out<'_>) -> Result<(), CliError> {
    let now = Utc::now();
    let status = match saga.status {
        SagaStatus::Completed | SagaStatus::Compensated => {
            out.paint(saga.status.as_str(), Paint::Green)
        }
        SagaStatus::Failed => out.paint(saga.status.as_str(), Paint::Red),
        _ => out.paint(saga.status.as_str(), Paint::Yellow),
    };
    out.heading(&format!("saga {} {}", saga.name, saga.id))?;
    out.line(format!(
        "  status {status} · version {} · attempts {}",
        saga.version, saga.attempts
    ))?;
    if let Some(deadline) = saga.deadline.filter(|_| !saga.status.is_finished()) {
        out.line(format!(
            "  deadline {} ({})",
            time(deadline),
            ago(deadline, now)
        ))?;
    }
    if let (Some(owner), Some(until)) = (&saga.lease_owner, saga.lease_expires_at) {
        let held = if until >= now {
            "held"
        } else {
            "was held (lease expired)"
        };
        out.line(format!("  {held} by worker {owner} until {}", time(until)))?;
    }
    let received = Shown::of(saga, timeline).received;
    if !received.is_empty() {
        out.line(format!("  received: {}", received.join(", ")))?;
    }
    out.line("")?;
    let width = timeline
        .iter()
        .filter_map(|e| e.step.as_deref())
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0);
    for e in timeline {
        let (mark, paint) = match e.kind {
            "started" => ("○", Paint::Dim),
            "step" => ("✓", Paint::Green),
            "next" => ("▶", Paint::Yellow),
            "retrying" => ("↻", Paint::Yellow),
            "waiting" => ("⏸", Paint::Yellow),
            "pending" => ("·", Paint::Dim),
            "cancelled" => ("✋", Paint::Red),
            "compensation started" | "undo failed" => ("✗", Paint::Red),
            "undone" => ("↶", Paint::Green),
            "undo next" => ("↶", Paint::Yellow),
            _ => ("■", Paint::Bold),
        };
        let mark = out.paint(mark, paint);
        let step = e.step.as_deref().unwrap_or("");
        let at = e.at.map(time).unwrap_or_default();
        let line = format!("  {mark} {:<20} {step:<width$}  {at}", e.kind);
        out.line(line.trim_end())?;
        if let Some(detail) = &e.detail {
            out.line(format!("      {}", cut(detail, 200)))?;
        }
    }
    Ok(())
}
