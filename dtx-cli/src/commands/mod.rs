//! One module per command family; [`run`] dispatches.

mod events;
mod feed;
mod forget;
mod inbox;
mod migrate;
mod outbox;
mod projection;
mod purge;
mod saga;
mod status;
mod stream;

use crate::args::{Cli, Command, Saga};
use crate::output::Out;
use crate::{CliError, Operator, Outcome};

pub(crate) async fn run(op: &Operator, cli: Cli, out: &mut Out<'_>) -> Result<Outcome, CliError> {
    // A diagram needs no database.
    if let Command::Saga(Saga::Graph { name, format }) = &cli.command {
        return saga::graph(op, name.as_deref(), *format, out);
    }
    let db = Operator::connect(cli.database_url.as_deref(), cli.schema).await?;
    match cli.command {
        Command::Migrate(command) => migrate::run(&db, command, out).await,
        Command::Status(command) => status::run(&db, &command, out).await,
        Command::Saga(command) => saga::run(op, &db, command, out).await,
        Command::Outbox(command) => outbox::run(&db, command, out).await,
        Command::Projection(command) => projection::run(op, &db, command, out).await,
        Command::Events(command) => events::run(&db, command, out).await,
        Command::Inbox(command) => inbox::run(&db, command, out).await,
        Command::Feed(command) => feed::run(&db, command, out).await,
        Command::Purge(command) => purge::run(&db, &command, out).await,
        Command::Stream(command) => stream::run(&db, command, out).await,
        Command::Forget(command) => forget::run(&db, command, out).await,
    }
}
