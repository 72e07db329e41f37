//! What the NATS inbox consumer tests share: the effect table, a consumer that writes one row
//! per message into it through the unit of work, and publishing dtx-shaped messages to
//! `JetStream`.

use async_nats::jetstream::{self, context::PublishAckFuture};
use dtx::inbox::{Consumer, InboundMessage};
use dtx::outbox::headers;
use dtx::projection::HandlerError;
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx_postgres::PgUnitOfWork;
use std::time::Duration;
use uuid::Uuid;

/// The effect table: one row per handler call that committed, duplicates included (no unique
/// key), so a message applied twice shows.
pub const EFFECTS: &str = "CREATE TABLE inbox_effects (
    n BIGSERIAL PRIMARY KEY,
    message_id UUID NOT NULL,
    key TEXT NOT NULL,
    seq BIGINT NOT NULL)";

/// The event type the tests publish.
pub const TICKED: &str = "Ticked";

/// The payload of a `Ticked` message: its place in its key's sequence.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ticked {
    /// 1, 2, 3, ... per key.
    pub seq: i64,
}

/// Writes one `inbox_effects` row per `Ticked` message, in the unit of work of its inbox
/// record; a payload that is not a `Ticked` is poison ([`HandlerError::Decode`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct EffectWriter;

impl Consumer for EffectWriter {
    const NAME: &'static str = "effects";

    fn event_types() -> &'static [&'static str] {
        &[TICKED]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ticked = decode(message)?;
            write_effect(uow, message, ticked).await
        })
    }
}

/// The `Ticked` payload of `message`, or a [`HandlerError::Decode`].
///
/// # Errors
/// When the payload is not a `Ticked`.
pub fn decode(message: &InboundMessage) -> Result<Ticked, HandlerError> {
    serde_json::from_slice(&message.payload).map_err(|e| {
        HandlerError::Decode(dtx::Error::InvalidMessage {
            message_id: message.message_id,
            event_type: message.event_type.clone(),
            source_name: message.source.clone(),
            reason: format!("the payload does not decode: {e}"),
        })
    })
}

/// Inserts the effect row of `message` in `uow`.
///
/// # Errors
/// The database's.
pub async fn write_effect(
    uow: &mut dyn UnitOfWork,
    message: &InboundMessage,
    ticked: Ticked,
) -> Result<(), HandlerError> {
    let conn = PgUnitOfWork::connection_of(uow)
        .await
        .map_err(HandlerError::failed)?;
    sqlx::query("INSERT INTO inbox_effects (message_id, key, seq) VALUES ($1, $2, $3)")
        .bind(message.message_id)
        .bind(message.key.as_deref().unwrap_or(""))
        .bind(ticked.seq)
        .execute(conn)
        .await
        .map_err(HandlerError::failed)?;
    Ok(())
}

/// Connects to the test NATS server (`NATS_URL`, default `127.0.0.1:4222`).
///
/// # Panics
/// When it cannot be reached: these tests need NATS with `JetStream` (`nats-server -js`).
pub async fn nats() -> async_nats::Client {
    let url = nats_url();
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("NATS with JetStream at {url} is needed for this test: {e}"),
        Err(e) => panic!("NATS with JetStream at {url} is needed for this test: {e}"),
    }
}

/// `NATS_URL`, or the local default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// A fresh `JetStream` stream of its own for one test: its name, and the subject prefix it
/// captures (`{prefix}.>`).
///
/// # Panics
/// When `JetStream` refuses it.
pub async fn fresh_stream(js: &jetstream::Context, what: &str) -> (String, String) {
    let name = format!("DTX_{what}_{}", Uuid::now_v7().simple());
    let prefix = name.to_lowercase();
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_mins(2),
        ..jetstream::stream::Config::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
    (name, prefix)
}

/// Every message of the stream `name` from its start, up to `max`, read by an ephemeral
/// consumer that waits at most `expires` for them (fewer when fewer arrive).
///
/// # Panics
/// When `JetStream` refuses the consumer or the fetch.
pub async fn read_all(
    js: &jetstream::Context,
    name: &str,
    max: usize,
    expires: Duration,
) -> Vec<jetstream::Message> {
    use futures_util::StreamExt as _;
    let consumer = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..jetstream::consumer::pull::Config::default()
        })
        .await
        .unwrap_or_else(|e| panic!("a consumer of {name}: {e}"));
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await
        .unwrap_or_else(|e| panic!("fetching from {name}: {e}"));
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        messages.push(message.unwrap_or_else(|e| panic!("a message of {name}: {e}")));
    }
    messages
}

/// Publishes a message as dtx's outbox would (headers `dtx-event-id`, `dtx-event-type`,
/// `dtx-stream-id`) to `{prefix}.{key}`, with `Nats-Msg-Id` = `nats_id` (so that a copy with
/// another `nats_id` is not dropped by the stream's duplicate window). Returns the ack to await.
///
/// # Panics
/// When the client cannot send it.
pub async fn publish(
    js: &jetstream::Context,
    prefix: &str,
    key: &str,
    event_id: Uuid,
    nats_id: Uuid,
    payload: Vec<u8>,
) -> PublishAckFuture {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::EVENT_ID, event_id.to_string().as_str());
    h.insert(headers::EVENT_TYPE, TICKED);
    h.insert(headers::STREAM_ID, key);
    publish_raw(js, format!("{prefix}.{key}"), h, nats_id, payload).await
}

/// Publishes `payload` with exactly the headers `h` (and `Nats-Msg-Id` = `nats_id`).
///
/// # Panics
/// When the client cannot send it.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: String,
    h: async_nats::HeaderMap,
    nats_id: Uuid,
    payload: Vec<u8>,
) -> PublishAckFuture {
    let message = jetstream::message::PublishMessage::build()
        .payload(payload.into())
        .headers(h)
        .message_id(nats_id.to_string());
    js.send_publish(subject, message)
        .await
        .unwrap_or_else(|e| panic!("publishing: {e}"))
}

/// The payload of the `seq`-th message of a key.
pub fn ticked(seq: i64) -> Vec<u8> {
    serde_json::to_vec(&Ticked { seq }).unwrap_or_default()
}
