//! # dtx-cli
//!
//! `dtx`, the operator's tool for a dtx database: migrations, one screen of health, sagas
//! (list, timeline, retry, cancel, diagram), the outbox's dead letters, projections (lag,
//! reset, skip, rebuild), events and the inbox's dead letters. Tables for people, `--json` for
//! scripts.
//!
//! ```sh
//! cargo install --path dtx-cli
//! DATABASE_URL=postgres://… dtx status
//! ```
//!
//! The standalone binary knows everything that lives in the database. Two commands need the
//! service's own code: `dtx saga graph` draws the sagas *registered* in the binary, and
//! `dtx projection rebuild` (and a `reset` that clears the read model) runs the projection's
//! handlers. A service links the same commands into a binary of its own, where its `#[saga]`s
//! and projections are known:
//!
//! ```no_run
//! // src/bin/ops.rs of a service: `cargo run --bin ops -- saga graph OrderFulfillment`
//! use dtx::projection::ProjectionRunner;
//!
//! fn main() -> std::process::ExitCode {
//!     dtx_cli::Operator::new()
//!         // the runner the service runs, for `projection rebuild` and `projection reset`
//!         .projections(|db: &dtx_cli::Database| {
//!             ProjectionRunner::new(db.events(), db.checkpoints())
//!             // .projection(OrderSummaries::postgres(db.pool().clone()))
//!         })
//!         .run()
//! }
//! ```
//!
//! (The entry point lives here rather than in `dtx` itself: `dtx` knows no backend, and these
//! commands read PostgreSQL through `dtx-postgres`.) Health checks are shared with the
//! orchestrators' endpoints: `dtx status` prints what [`dtx_postgres::health::HealthCheck`]
//! reads, and the same report answers `dtx_postgres::health::router` (feature `http`).

pub mod args;
mod commands;
mod graph;
mod output;

pub use args::{Cli, Colour};
pub use clap::Parser;

use dtx::SharedEventStore;
use dtx::projection::{ProjectionRunner, SharedCheckpointStore};
use dtx::saga::{SagaDefinition, SagaShape};
use dtx_postgres::{PgCheckpointStore, PgEventStore};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// Runs `dtx` with the process's arguments, printing to stdout, with the sagas and
/// projections registered in this binary: what the `dtx` binary's `main` does.
pub fn run() -> ExitCode {
    Operator::new().run()
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Neither `--database-url` nor `DATABASE_URL` names the database.
    #[error("no database: pass --database-url or set DATABASE_URL")]
    NoDatabase,
    /// The database could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// dtx refused or failed.
    #[error(transparent)]
    Dtx(#[from] dtx::Error),
    /// A saga operation was refused.
    #[error(transparent)]
    Saga(#[from] dtx::saga::SagaError),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command cannot do this here.
    #[error("{0}")]
    Refused(String),
    /// Printing failed.
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    fn storage(error: sqlx::Error) -> Self {
        Self::Dtx(dtx::Error::storage(error))
    }
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; all is well.
    Ok,
    /// Done, and something needs a person (`dtx status` found problems): exit status 1.
    NeedsAPerson,
}

impl Outcome {
    /// The process's exit status.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Self::Ok => ExitCode::SUCCESS,
            Self::NeedsAPerson => ExitCode::from(1),
        }
    }
}

/// The database a command works on, as the projection factory of
/// [`Operator::projections`] sees it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PgPool,
    schema: Option<String>,
}

impl Database {
    /// Connects (a small pool: the tool runs a query at a time).
    pub async fn connect(url: &str, schema: Option<String>) -> Result<Self, CliError> {
        if let Some(schema) = &schema {
            dtx_postgres::quote_identifier(schema)?;
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(CliError::Connect)?;
        Ok(Self { pool, schema })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The tenant's schema, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Applies the schema to a store's `with_schema`.
    fn scoped<T>(&self, store: T, with: impl FnOnce(T, &str) -> dtx::Result<T>) -> T
    where
        T: Clone,
    {
        match &self.schema {
            // The name was validated when connecting.
            Some(schema) => with(store.clone(), schema).unwrap_or(store),
            None => store,
        }
    }

    /// The event store.
    pub fn event_store(&self) -> PgEventStore {
        self.scoped(
            PgEventStore::new(self.pool.clone()),
            PgEventStore::with_schema,
        )
    }

    /// The event store, shared.
    pub fn events(&self) -> SharedEventStore {
        Arc::new(self.event_store())
    }

    /// The checkpoint store.
    pub fn checkpoint_store(&self) -> PgCheckpointStore {
        self.scoped(
            PgCheckpointStore::new(self.pool.clone()),
            PgCheckpointStore::with_schema,
        )
    }

    /// The checkpoint store, shared.
    pub fn checkpoints(&self) -> SharedCheckpointStore {
        Arc::new(self.checkpoint_store())
    }

    /// The saga store.
    pub fn sagas(&self) -> dtx_postgres::PgSagaStore {
        self.scoped(
            dtx_postgres::PgSagaStore::new(self.pool.clone()),
            dtx_postgres::PgSagaStore::with_schema,
        )
    }

    /// The outbox.
    pub fn outbox(&self) -> dtx_postgres::PgOutbox {
        self.scoped(
            dtx_postgres::PgOutbox::new(self.pool.clone()),
            dtx_postgres::PgOutbox::with_schema,
        )
    }

    /// The inbox.
    pub fn inbox(&self) -> dtx_postgres::PgInbox {
        self.scoped(
            dtx_postgres::PgInbox::new(self.pool.clone()),
            dtx_postgres::PgInbox::with_schema,
        )
    }

    /// The retention purger.
    pub fn purger(&self) -> dtx_postgres::retention::PgPurger {
        self.scoped(
            dtx_postgres::retention::PgPurger::new(self.pool.clone()),
            dtx_postgres::retention::PgPurger::with_schema,
        )
    }

    /// The health check.
    pub fn health(&self) -> dtx_postgres::health::HealthCheck {
        self.scoped(
            dtx_postgres::health::HealthCheck::new(self.pool.clone()),
            dtx_postgres::health::HealthCheck::with_schema,
        )
    }
}

/// Builds the projection runner of `projection rebuild` and `projection reset`.
type ProjectionsFactory = Arc<dyn Fn(&Database) -> ProjectionRunner + Send + Sync>;

/// The `dtx` commands with what a service's binary knows: its sagas (every `#[saga]` linked
/// into the binary, and those added with [`Operator::saga`]) and its projections (through
/// [`Operator::projections`]).
#[derive(Clone)]
pub struct Operator {
    sagas: Vec<SagaShape>,
    projections: Option<ProjectionsFactory>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field(
                "sagas",
                &self.sagas.iter().map(|s| s.name).collect::<Vec<_>>(),
            )
            .field("projections", &self.projections.is_some())
            .finish()
    }
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    /// The commands, knowing every `#[saga]` linked into this binary.
    pub fn new() -> Self {
        Self {
            sagas: dtx::saga::registered_shapes(),
            projections: None,
        }
    }

    /// Adds a saga built at run time ([`dtx::saga::SagaBuilder`]) for `saga graph`.
    #[must_use]
    pub fn saga<D>(mut self, definition: &SagaDefinition<D>) -> Self
    where
        D: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let shape = definition.shape();
        self.sagas.retain(|s| s.name != shape.name);
        self.sagas.push(shape);
        self.sagas.sort_by_key(|s| s.name);
        self
    }

    /// How to build the service's projection runner (with its projections added) on the
    /// database a command works on: `projection rebuild` runs it, and `projection reset` runs
    /// the projections' clear hooks through it.
    #[must_use]
    pub fn projections(
        mut self,
        runner: impl Fn(&Database) -> ProjectionRunner + Send + Sync + 'static,
    ) -> Self {
        self.projections = Some(Arc::new(runner));
        self
    }

    /// Parses the process's arguments and runs the command on a runtime of its own, printing
    /// to stdout and errors to stderr. (Inside an async `main`, use [`Operator::run_async`].)
    pub fn run(self) -> ExitCode {
        let cli = Cli::parse();
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.finish(cli)),
            Err(error) => {
                eprintln!("error: cannot start the runtime: {error}");
                ExitCode::from(2)
            }
        }
    }

    /// [`Operator::run`] on the caller's runtime.
    pub async fn run_async(self) -> ExitCode {
        self.finish(Cli::parse()).await
    }

    async fn finish(self, cli: Cli) -> ExitCode {
        let mut stdout = std::io::stdout().lock();
        match self.execute(cli, &mut stdout).await {
            Ok(outcome) => outcome.exit_code(),
            Err(error) => {
                let _ = stdout.flush();
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        }
    }

    /// Runs `cli`, printing to `out` (coloured when `--color` says so, or on a terminal stdout
    /// without `NO_COLOR` for `auto`).
    pub async fn execute(&self, cli: Cli, out: &mut dyn Write) -> Result<Outcome, CliError> {
        let colour = match cli.color {
            Colour::Always => true,
            Colour::Never => false,
            Colour::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        };
        let mut out = output::Out::new(out, colour);
        commands::run(self, cli, &mut out).await
    }

    /// Connects as `cli` says.
    async fn connect(cli_url: Option<&str>, schema: Option<String>) -> Result<Database, CliError> {
        let url = cli_url.ok_or(CliError::NoDatabase)?;
        Database::connect(url, schema).await
    }
}
