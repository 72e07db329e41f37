//! `dtx stream show|close|archive`.

use crate::args::Stream;
use crate::output::Out;
use crate::{CliError, Database, Outcome};
use dtx::{EventStore as _, StreamId, StreamState};

pub(crate) async fn run(
    db: &Database,
    command: Stream,
    out: &mut Out<'_>,
) -> Result<Outcome, CliError> {
    let store = db.event_store();
    match command {
        Stream::Show { stream, json } => {
            let stream = StreamId::new(stream)?;
            let state = store.stream_state(&stream).await?;
            if json.json {
                out.json(&serde_json::json!({ "stream": stream.as_str(), "state": state }))?;
            } else {
                let text = match state {
                    StreamState::Open => format!(
                        "{stream}: open at version {}",
                        store.stream_version(&stream).await?
                    ),
                    StreamState::Closed { version } => {
                        format!("{stream}: closed at version {version}")
                    }
                    StreamState::Archived { version } => {
                        format!("{stream}: archived at version {version}")
                    }
                };
                out.line(text)?;
            }
        }
        Stream::Close { stream } => {
            let stream = StreamId::new(stream)?;
            let version = store.close_stream(&stream).await?;
            out.line(format!(
                "{stream} is closed at version {version}: appends to it are refused"
            ))?;
        }
        Stream::Archive { stream, close } => {
            let stream = StreamId::new(stream)?;
            if close {
                store.close_stream(&stream).await?;
            }
            let moved = store.archive_stream(&stream).await?;
            out.line(format!(
                "{stream} is archived: {moved} events moved to the archive"
            ))?;
        }
    }
    Ok(Outcome::Ok)
}
