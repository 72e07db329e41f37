//! The command line: every command, argument and option, as clap reads them ([`Cli`]).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;
use uuid::Uuid;

/// The operator's tool for a dtx database: what holds the system back, and what to do about it.
#[derive(Debug, Parser)]
#[command(
    name = "dtx",
    version,
    about = "Operate a dtx database: migrations, health, sagas, outbox, projections, events, inbox.",
    after_help = "Exit status: 0 when all is well, 1 when `dtx status` found something that needs a \
                  person, 2 on a usage or connection error."
)]
pub struct Cli {
    /// The database to operate on.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// The schema of a tenant's tables (default: the tables the `search_path` finds).
    #[arg(long, env = "DTX_SCHEMA", global = true, hide_env_values = true)]
    pub schema: Option<String>,

    /// When to colour the output: on a terminal without `NO_COLOR` (auto), always or never.
    #[arg(long, value_enum, default_value_t = Colour::Auto, global = true)]
    pub color: Colour,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Colour {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// A command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply dtx's migrations, or show which are pending.
    #[command(subcommand)]
    Migrate(Migrate),
    /// One screen of health: the feed, the outbox, sagas, projections and the inbox.
    Status(Status),
    /// Sagas: list, show, retry, cancel, graph.
    #[command(subcommand)]
    Saga(Saga),
    /// The outbox: dead letters, requeue, purge.
    #[command(subcommand)]
    Outbox(Outbox),
    /// Projections: list, reset, skip, resume, rebuild.
    #[command(subcommand)]
    Projection(Projection),
    /// Events: a stream, or the global feed.
    #[command(subcommand)]
    Events(Events),
    /// The inbox: dead letters, requeue, discard.
    #[command(subcommand)]
    Inbox(Inbox),
    /// The feed's order after a logical restore: check, repair.
    #[command(subcommand)]
    Feed(Feed),
    /// Delete what is kept only for a while: finished sagas, published outbox copies, inbox
    /// records, expired idempotency keys.
    Purge(Purge),
    /// A stream's life: its state, close it (no more events), archive it.
    #[command(subcommand)]
    Stream(Stream),
    /// Forget a data subject: delete its key, so its personal values read as forgotten.
    Forget(Forget),
}

/// `dtx purge`.
#[derive(Debug, Args)]
#[command(
    after_help = "Kept by default: finished (completed, compensated or cancelled) sagas \
                        30 days after they finished, published outbox copies 7 days, inbox \
                        records 14 days, idempotency keys until they expire; failed sagas until \
                        --failed-sagas says. Each batch is one short statement that skips rows \
                        in use: safe while the services run."
)]
pub struct Purge {
    /// Count what is due, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One age for every kind instead of the defaults (idempotency keys: this long after
    /// they expired).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub older_than: Option<Duration>,
    /// Purge failed sagas too, this long after they failed (default: kept for a person).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub failed_sagas: Option<Duration>,
    /// Rows deleted per statement.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// `--json`.
    #[command(flatten)]
    pub json: Json,
}

/// `dtx stream`.
#[derive(Debug, Subcommand)]
pub enum Stream {
    /// Whether a stream is open, closed or archived, and its last version.
    Show {
        /// The stream's id, such as `Order-42`.
        stream: String,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// Close a stream: every later append to it is refused; its events stay readable.
    Close {
        /// The stream's id.
        stream: String,
    },
    /// Move a closed stream's events to the archive (the feed still yields them).
    Archive {
        /// The stream's id.
        stream: String,
        /// Close it first.
        #[arg(long)]
        close: bool,
    },
}

/// `dtx forget`.
#[derive(Debug, Args)]
pub struct Forget {
    /// The subject's id, as the events' `personal(subject = ..)` field holds it.
    pub subject: String,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `dtx feed`.
#[derive(Debug, Subcommand)]
pub enum Feed {
    /// Whether the feed's stored order is ahead of the database's transaction ids, as after a
    /// logical restore (`pg_dump`/`pg_restore`) into another cluster; exit status 1 when it is.
    Check(Json),
    /// Re-base the feed's order and its readers' checkpoints after such a restore, in one
    /// transaction (nothing changes when the feed is not ahead).
    Repair(Json),
}

/// `--json` for scripts.
#[derive(Debug, Clone, Copy, Args)]
pub struct Json {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dtx migrate`.
#[derive(Debug, Subcommand)]
pub enum Migrate {
    /// Every migration: applied (when), pending, or changed since it ran.
    Status(Json),
    /// Apply the pending migrations (nothing when none is pending).
    Run,
}

/// `dtx status`.
#[derive(Debug, Args)]
pub struct Status {
    /// Print JSON: the report and the problems found.
    #[arg(long)]
    pub json: bool,
    /// A transaction open longer than this holding the feed back is a problem (`off` to ignore).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = limit)]
    pub max_transaction_age: Limit,
    /// The oldest pending outbox message older than this is a problem.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = limit)]
    pub max_outbox_age: Limit,
    /// An unfinished saga whose lease expired longer ago than this is a problem.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = limit)]
    pub max_lease_expired: Limit,
    /// A projection more events behind the feed than this is a problem.
    #[arg(long, value_name = "EVENTS", default_value = "10000", value_parser = count_limit)]
    pub max_projection_lag: CountLimit,
    /// A projection whose first unapplied event is older than this is a problem.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = limit)]
    pub max_projection_age: Limit,
}

/// A duration limit, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

/// A count limit, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountLimit(pub Option<u64>);

fn limit(text: &str) -> Result<Limit, String> {
    if text == "off" {
        return Ok(Limit(None));
    }
    duration(text).map(|d| Limit(Some(d)))
}

fn count_limit(text: &str) -> Result<CountLimit, String> {
    if text == "off" {
        return Ok(CountLimit(None));
    }
    text.parse()
        .map(|n| CountLimit(Some(n)))
        .map_err(|_| format!("`{text}` is neither a number nor `off`"))
}

/// `500ms`, `30s`, `5m`, `2h` or `7d`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 30s, 5m, 2h or 7d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit is one of ms, s, m, h, d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// A saga status, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SagaStatusArg {
    /// Steps are running, or due.
    Running,
    /// Waiting for an external event.
    Waiting,
    /// Undoing completed steps.
    Compensating,
    /// Every step ran.
    Completed,
    /// Every completed step was undone.
    Compensated,
    /// A compensation kept failing.
    Failed,
}

impl From<SagaStatusArg> for dtx::saga::SagaStatus {
    fn from(status: SagaStatusArg) -> Self {
        use dtx::saga::SagaStatus as S;
        match status {
            SagaStatusArg::Running => S::Running,
            SagaStatusArg::Waiting => S::Waiting,
            SagaStatusArg::Compensating => S::Compensating,
            SagaStatusArg::Completed => S::Completed,
            SagaStatusArg::Compensated => S::Compensated,
            SagaStatusArg::Failed => S::Failed,
        }
    }
}

/// `dtx saga`.
#[derive(Debug, Subcommand)]
pub enum Saga {
    /// Sagas, oldest first: unfinished ones and failed ones unless `--status` says.
    List {
        /// Only sagas in these statuses (repeat it; default: every status but completed and
        /// compensated).
        #[arg(long, value_enum)]
        status: Vec<SagaStatusArg>,
        /// Only sagas of this name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many per status.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// A saga's timeline: its steps, attempts, errors, compensations and waits.
    Show {
        /// The saga's id.
        id: Uuid,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// Compensate a failed saga again (after fixing what made its compensation fail).
    Retry {
        /// The saga's id.
        id: Uuid,
    },
    /// Cancel a running or waiting saga: it compensates what it did, and keeps the decision.
    Cancel {
        /// The saga's id.
        id: Uuid,
        /// Why (kept in the saga's record).
        #[arg(long)]
        reason: String,
        /// Who decides (default: $USER).
        #[arg(long, env = "USER", hide_env_values = true)]
        by: Option<String>,
    },
    /// A registered saga's steps and compensations, as a Mermaid or DOT diagram.
    Graph {
        /// The saga's name (`dtx saga graph` with no name lists the registered sagas).
        name: Option<String>,
        /// The diagram's language.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
}

/// A diagram language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// A Mermaid flowchart (renders on GitHub and in most wikis).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `dtx outbox`.
#[derive(Debug, Subcommand)]
pub enum Outbox {
    /// Dead-lettered messages, oldest first, with their last error.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// Put dead messages back to pending: their keys resume, in order.
    Requeue {
        /// The message's id (see `dtx outbox dead`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead message.
        #[arg(long)]
        all: bool,
    },
    /// Delete published messages older than a duration.
    Purge {
        /// How old, such as 7d.
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        older_than: Duration,
        /// Rows deleted per statement.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

/// Which checkpoint of a projection.
#[derive(Debug, Clone, Args)]
pub struct ProjectionKey {
    /// The projection's name.
    pub name: String,
    /// Its version (default: the only one, or the newest).
    #[arg(long)]
    pub version: Option<u32>,
    /// The partition (default: every partition).
    #[arg(long)]
    pub partition: Option<u32>,
}

/// `dtx projection`.
#[derive(Debug, Subcommand)]
pub enum Projection {
    /// Every checkpoint: status, position, lag and failure.
    List(Json),
    /// Move a projection back to the start of the feed (its read model cleared).
    Reset {
        /// Which checkpoints.
        #[command(flatten)]
        key: ProjectionKey,
        /// Move the checkpoints only, without the projection's clear hook (the standalone
        /// `dtx` does not know it): for subscriptions, and read models whose handlers upsert.
        #[arg(long)]
        checkpoint_only: bool,
    },
    /// Move a failed projection past the event it stopped at (recorded with the reason).
    Skip {
        /// Which checkpoints.
        #[command(flatten)]
        key: ProjectionKey,
        /// Why (kept in the skip's record).
        #[arg(long)]
        reason: String,
    },
    /// Set a failed projection running again at the event it stopped at (after a fix).
    Resume {
        /// Which checkpoints.
        #[command(flatten)]
        key: ProjectionKey,
    },
    /// Reset a projection and apply the whole feed again, with progress and an ETA.
    Rebuild {
        /// The projection's name.
        name: String,
    },
}

/// `dtx events`.
#[derive(Debug, Subcommand)]
pub enum Events {
    /// A stream's events, as pretty JSON.
    Show {
        /// The stream's id, such as `Order-42`.
        stream: String,
        /// From this version.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// With each event's metadata (ids, correlation, causation, traceparent, time).
        #[arg(long)]
        metadata: bool,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// The global feed's latest events, then (with --follow) new ones as they commit.
    Tail {
        /// How many of the latest events first.
        #[arg(long, default_value_t = 10)]
        last: usize,
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only events of this type (repeat it).
        #[arg(long = "type")]
        types: Vec<String>,
        /// With each event's metadata.
        #[arg(long)]
        metadata: bool,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
}

/// `dtx inbox`.
#[derive(Debug, Subcommand)]
pub enum Inbox {
    /// Dead letters (waiting and requeued), oldest first.
    Dead {
        /// Only this consumer's.
        #[arg(long)]
        consumer: Option<String>,
        /// `--json`.
        #[command(flatten)]
        json: Json,
    },
    /// Requeue a dead letter: its consumer handles it again.
    Requeue {
        /// The consumer.
        consumer: String,
        /// The message's id.
        message_id: Uuid,
    },
    /// Delete a dead letter (the message stays recorded as received).
    Discard {
        /// The consumer.
        consumer: String,
        /// The message's id.
        message_id: Uuid,
    },
}
