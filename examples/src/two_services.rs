//! The two services of `cargo run --example two_services`: an order service and a payment
//! service, each with its own database, talking through NATS `JetStream`. The example runs each
//! in a process of its own; the `two_services_roundtrip` benchmark runs both in one.
//!
//! - The **order service** takes `POST /orders` behind the `Idempotency-Key` layer, places the
//!   order through the command bus and starts the fulfilment saga in the request's one unit of
//!   work. The saga reserves stock, asks the payment service for the money (an outbox message)
//!   and waits for the answer; its inbox consumer delivers the payment service's
//!   `PaymentSettled` event to the saga, matched by correlation id. A refused payment
//!   compensates: the stock is released.
//! - The **payment service** consumes `PaymentRequested` through its inbox (exactly once),
//!   charges through its own `Payment` aggregate and publishes `PaymentSettled` through its
//!   outbox.
//!
//! One request's trace spans both services: the `traceparent` travels in the messages'
//! headers, and each service prints the trace id of what it does.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use dtx::cqrs::{CommandBus, CommandMetadata};
use dtx::idempotency::Scope;
use dtx::idempotency::http::{IdempotencyLayer, RequestUnitOfWork};
use dtx::inbox::{Consumer, InboundMessage, Inbox};
use dtx::money::{Currency, Money};
use dtx::outbox::{NewOutboxMessage, Outbox, RelayOptions, headers};
use dtx::projection::HandlerError;
use dtx::saga::{SagaOrchestrator, StepContext, StepError, WorkerOptions};
use dtx::uow::{BoxFuture, UnitOfWork};
use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use dtx_postgres::OutboxRelay;
use dtx_postgres::kafka::{KafkaConsumer, KafkaPublisher};
use dtx_postgres::nats::{NatsConsumer, NatsConsumerConfig, NatsPublisher};
use dtx_postgres::{
    PgEventStore, PgIdempotencyStore, PgInbox, PgOutbox, PgSagaStore, PgUnitOfWork,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the services print what they do (the benchmark turns it off).
pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, std::sync::atomic::Ordering::Relaxed);
}

macro_rules! say {
    ($($arg:tt)*) => {
        if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
            println!($($arg)*);
        }
    };
}

/// The currency of the orders.
pub const CURRENCY: Currency = Currency::EUR;
/// Orders above this amount are refused by the payment service.
pub const CARD_LIMIT: Money = Money::from_minor(100_000, CURRENCY);
/// The subjects of the order service's outbox.
pub const ORDER_SUBJECTS: &str = "two-services.orders";
/// The subjects of the payment service's outbox.
pub const PAYMENT_SUBJECTS: &str = "two-services.payments";

// ---- the messages between the services (in a real system: a shared contract crate) ----

/// The order service asks for a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequested {
    /// The order.
    pub order_id: Uuid,
    /// How much: `{"amount":"42.00","currency":"EUR"}`.
    pub amount: Money,
}

/// The payment service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentSettled {
    /// The order.
    pub order_id: Uuid,
    /// Whether the money was taken.
    pub accepted: bool,
    /// Why not, when refused.
    pub reason: Option<String>,
}

/// What the order service sends (decoded by the payment service's consumer).
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum OrderMessage {
    /// A payment is requested.
    #[event(name = "PaymentRequested", version = 1)]
    PaymentRequested(PaymentRequested),
}

// ---- the payment service's aggregate ----

/// The payment service's events (published through its outbox).
#[derive(Debug, Clone, PartialEq, DomainEvent)]
pub enum PaymentEvent {
    /// The payment was decided.
    #[event(name = "PaymentSettled", version = 1)]
    Settled(PaymentSettled),
}

/// A payment, one per order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(event = PaymentEvent)]
pub struct Payment {
    id: Id<Payment>,
    /// Whether it was accepted.
    pub accepted: bool,
}

impl Apply<PaymentSettled> for Payment {
    fn apply(&mut self, event: &PaymentSettled) {
        self.accepted = event.accepted;
    }
}

/// Charge an order's payment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    /// The payment (the order's id).
    pub payment_id: Id<Payment>,
    /// The order.
    pub order_id: Uuid,
    /// How much.
    pub amount: Money,
}

/// The payment service's refusals are answers, not errors.
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[command_handler]
impl Payment {
    /// Decides a payment: accepted up to the card limit.
    pub fn charge(cmd: Charge) -> Result<PaymentSettled, Never> {
        let reason = match cmd.amount.try_cmp(CARD_LIMIT) {
            Ok(std::cmp::Ordering::Greater) => Some(format!(
                "{} exceeds the card limit of {CARD_LIMIT}",
                cmd.amount
            )),
            Ok(_) => None,
            // Another currency than the card's.
            Err(e) => Some(e.to_string()),
        };
        Ok(PaymentSettled {
            order_id: cmd.order_id,
            accepted: reason.is_none(),
            reason,
        })
    }
}

/// The trace id of the current span, for the log lines.
fn trace_id() -> String {
    dtx::telemetry::current_traceparent()
        .and_then(|t| t.split('-').nth(1).map(|id| id[..12].to_owned()))
        .unwrap_or_else(|| "-".to_owned())
}

/// The payment service's consumer of the order service's messages.
struct PaymentRequests {
    commands: CommandBus,
}

impl Consumer for PaymentRequests {
    const NAME: &'static str = "payments";

    fn event_types() -> &'static [&'static str] {
        &["PaymentRequested"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request: PaymentRequested = dtx::inbox::decode(message)?;
            say!(
                "  [payments] PaymentRequested for order {} ({}), delivery {}, trace {}",
                short(request.order_id),
                request.amount,
                message.delivery,
                trace_id()
            );
            let mut metadata =
                CommandMetadata::correlated(message.correlation_id.unwrap_or(request.order_id))
                    .caused_by(message.message_id);
            metadata.traceparent = dtx::telemetry::current_traceparent();
            let charge = Charge {
                payment_id: Id::from_uuid(request.order_id),
                order_id: request.order_id,
                amount: request.amount,
            };
            self.commands
                .execute_in_with(uow, charge, metadata)
                .await
                .map_err(HandlerError::failed)?;
            Ok(())
        })
    }
}

// ---- the order service's saga and consumer ----

/// The fulfilment of one order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fulfilment {
    /// The order.
    pub order_id: Uuid,
    /// How much.
    pub amount: Money,
    /// Stock reserved.
    pub reserved: bool,
    /// The shipment, once made.
    pub shipment: Option<String>,
}

#[allow(clippy::unused_async, reason = "the local steps answer synchronously")]
#[dtx::saga(name = "Fulfilment")]
impl Fulfilment {
    #[step(compensate = release_stock)]
    async fn reserve_stock(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        say!(
            "  [orders]   saga: stock reserved for order {}",
            short(self.order_id)
        );
        self.reserved = true;
        Ok(())
    }

    async fn release_stock(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        say!(
            "  [orders]   saga: compensating, stock released for order {}",
            short(self.order_id)
        );
        self.reserved = false;
        Ok(())
    }

    /// Asks the payment service, through the outbox, and waits for `PaymentSettled`. A retry
    /// sends the same message id (from the step's idempotency key): the payment service's
    /// inbox takes it once.
    #[step(await_event = "PaymentSettled", await_timeout_secs = 120)]
    async fn request_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let outbox = ctx
            .state::<PgOutbox>()
            .ok_or_else(|| StepError::permanent("no outbox"))?;
        let mut message = NewOutboxMessage::new(
            self.order_id.to_string(),
            "PaymentRequested",
            &PaymentRequested {
                order_id: self.order_id,
                amount: self.amount,
            },
        )
        .map_err(StepError::permanent)?
        .with_header(headers::CORRELATION_ID, self.order_id.to_string())
        .map_err(StepError::permanent)?;
        if let Some(traceparent) = dtx::telemetry::current_traceparent() {
            message = message
                .with_header(headers::TRACEPARENT, traceparent)
                .map_err(StepError::permanent)?;
        }
        message.message_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, ctx.idempotency_key().as_bytes());
        let mut uow = PgUnitOfWork::begin(outbox.pool())
            .await
            .map_err(StepError::transient)?;
        outbox
            .enqueue_in(&mut uow, vec![message])
            .await
            .map_err(StepError::transient)?;
        uow.commit().await.map_err(StepError::transient)?;
        say!(
            "  [orders]   saga: payment of {} requested for order {}, waiting (trace {})",
            self.amount,
            short(self.order_id),
            trace_id()
        );
        Ok(())
    }

    #[step]
    async fn confirm_payment(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        let settled: PaymentSettled = ctx
            .event("PaymentSettled")
            .ok_or_else(|| StepError::permanent("no PaymentSettled"))?
            .map_err(StepError::permanent)?;
        if !settled.accepted {
            let reason = settled.reason.unwrap_or_else(|| "refused".to_owned());
            say!(
                "  [orders]   saga: payment refused for order {}: {reason}",
                short(self.order_id)
            );
            return Err(StepError::permanent(format!("payment refused: {reason}")));
        }
        say!(
            "  [orders]   saga: payment accepted for order {}",
            short(self.order_id)
        );
        Ok(())
    }

    #[step]
    async fn ship(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        let shipment = format!("SHIP-{}", short(self.order_id));
        say!(
            "  [orders]   saga: shipped order {} as {shipment}",
            short(self.order_id)
        );
        self.shipment = Some(shipment);
        Ok(())
    }
}

/// The order service's consumer of the payment service's events: delivers them to the saga
/// that waits for them, matched by correlation id, in the inbox's unit of work.
struct PaymentAnswers {
    sagas: SagaOrchestrator,
}

impl Consumer for PaymentAnswers {
    const NAME: &'static str = "order-payments";

    fn event_types() -> &'static [&'static str] {
        &["PaymentSettled"]
    }

    fn handle<'a>(
        &'a self,
        message: &'a InboundMessage,
        uow: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let settled: PaymentSettled = dtx::inbox::decode(message)?;
            say!(
                "  [orders]   inbox: PaymentSettled for order {} (accepted: {}), trace {}",
                short(settled.order_id),
                settled.accepted,
                trace_id()
            );
            match self.sagas.deliver_message_in(uow, message).await {
                Ok(_) => Ok(()),
                // `SagaError::NotWaiting`: it came before the saga waits for it; like any
                // other failure, the consumer retries it with backoff.
                Err(e) => Err(HandlerError::failed(e)),
            }
        })
    }
}

// ---- the order service's HTTP API ----

/// `POST /orders`.
#[derive(Debug, Deserialize)]
struct PlaceOrder {
    customer: String,
    amount_cents: u64,
}

#[derive(Clone)]
struct OrderApi {
    commands: CommandBus,
    sagas: SagaOrchestrator,
}

async fn place(
    State(api): State<OrderApi>,
    Extension(uow): Extension<RequestUnitOfWork>,
    Json(request): Json<PlaceOrder>,
) -> Response {
    let order_id = Uuid::now_v7();
    let Ok(amount) = i64::try_from(request.amount_cents).map(|c| Money::from_minor(c, CURRENCY))
    else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_cents is too large",
        )
            .into_response();
    };
    let mut uow = match uow.lock().await {
        Ok(uow) => uow,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let metadata = CommandMetadata::correlated(order_id);
    let placed = api
        .commands
        .execute_in_with(
            &mut *uow,
            crate::order::PlaceOrder {
                order_id: Id::from_uuid(order_id),
                customer: request.customer.clone(),
            },
            metadata,
        )
        .await;
    if let Err(e) = placed {
        return (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response();
    }
    let saga = Fulfilment {
        order_id,
        amount,
        reserved: false,
        shipment: None,
    };
    let saga_id = match api
        .sagas
        .start_correlated_in(&mut *uow, saga, Some(order_id))
        .await
    {
        Ok(id) => id,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    say!(
        "  [orders]   POST /orders: order {} placed for {} ({}), saga started, trace {}",
        short(order_id),
        request.customer,
        amount,
        trace_id()
    );
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "order_id": order_id, "saga_id": saga_id })),
    )
        .into_response()
}

async fn saga_status(State(api): State<OrderApi>, Path(id): Path<Uuid>) -> Response {
    match api.sagas.status(id).await {
        Ok(record) => Json(serde_json::json!({
            "status": record.status.to_string(),
            "last_error": record.last_error,
            "data": record.data,
        }))
        .into_response(),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

// ---- the services ----

/// What the services and the driver fail with.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The NATS server: `NATS_URL`, or 127.0.0.1:4222.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// The database `name` on the server of `DATABASE_URL` (or 127.0.0.1:5432).
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let server = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(server, _)| server);
    format!("{server}/{name}")
}

async fn connect_database(url: &str) -> Result<PgPool, Failure> {
    let pool = dtx_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await?;
    dtx_postgres::migrate(&pool).await?;
    Ok(pool)
}

/// The signal every task of a service stops on.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal, and what triggers it (`send(true)`, or dropping it).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Completes once triggered.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Runs the order service on `listener` until `shutdown`: the HTTP API, the saga worker, the
/// outbox relay and the inbox consumer of the payment service's events.
pub async fn order_service(
    database_url: &str,
    transport: &Transport,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Failure> {
    let pool = connect_database(database_url).await?;
    let events = Arc::new(PgEventStore::new(pool.clone()));
    let outbox = PgOutbox::new(pool.clone());
    let commands = CommandBus::builder()
        .store(events.clone())
        .registry()
        .require::<crate::order::PlaceOrder>()
        .build()?;
    let sagas = SagaOrchestrator::builder(Arc::new(PgSagaStore::new(pool.clone())))
        .events(events.clone())
        .state(outbox.clone())
        .registry()
        .build()?;
    let worker = sagas.worker(WorkerOptions {
        poll_interval: Duration::from_millis(50),
        ..WorkerOptions::default()
    });
    let relay = transport.relay(&outbox, Side::Orders).await?;
    let consumer = transport
        .consumer(
            Side::Payments,
            Inbox::new(PgInbox::new(pool.clone())),
            PaymentAnswers {
                sagas: sagas.clone(),
            },
        )
        .await?;
    let api = OrderApi { commands, sagas };
    let idempotency = IdempotencyLayer::new(PgIdempotencyStore::new(pool.clone()), |_| {
        Scope::new("two-services-demo").ok()
    });
    let router = Router::new()
        .route("/orders", post(traced_place))
        .route("/sagas/{id}", get(saga_status))
        .route("/health", get(|| async { "ok" }))
        .with_state(api)
        .layer(idempotency);
    say!("  [orders]   listening on {}", listener.local_addr()?);
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().wait());
    let (server_end, worker_end, relay_end, consumer_end) = tokio::join!(
        server.into_future(),
        worker.run(shutdown.clone().wait()),
        relay.run(shutdown.clone().wait()),
        consumer.run(shutdown.clone()),
    );
    server_end?;
    worker_end?;
    relay_end?;
    consumer_end?;
    Ok(())
}

async fn traced_place(
    state: State<OrderApi>,
    uow: Extension<RequestUnitOfWork>,
    request: Json<PlaceOrder>,
) -> Response {
    use tracing::Instrument as _;
    place(state, uow, request)
        .instrument(tracing::info_span!("POST /orders"))
        .await
}

/// Runs the payment service until `shutdown`: the inbox consumer of the order service's
/// messages and the outbox relay of its own events.
pub async fn payment_service(
    database_url: &str,
    transport: &Transport,
    shutdown: Shutdown,
) -> Result<(), Failure> {
    let pool = connect_database(database_url).await?;
    // Every append also publishes its events (the event rows are their own outbox records).
    let events = Arc::new(PgEventStore::new(pool.clone()).with_outbox(true));
    let commands = CommandBus::builder()
        .store(events)
        .registry()
        .require::<Charge>()
        .build()?;
    let relay = transport
        .relay(&PgOutbox::new(pool.clone()), Side::Payments)
        .await?;
    let consumer = transport
        .consumer(
            Side::Orders,
            Inbox::new(PgInbox::new(pool)),
            PaymentRequests { commands },
        )
        .await?;
    say!("  [payments] consuming the order service's messages ({transport})");
    let (relay_end, consumer_end) = tokio::join!(
        relay.run(shutdown.clone().wait()),
        consumer.run(shutdown.clone())
    );
    relay_end?;
    consumer_end?;
    Ok(())
}

/// Fresh databases for both services (`{prefix}_orders`, `{prefix}_payments`), and fresh
/// streams (NATS) or topics (Kafka, when `kafka`) for both outboxes; returns the two databases'
/// URLs and the transport.
pub async fn prepare(prefix: &str, kafka: bool) -> Result<(String, String, Transport), Failure> {
    let admin = PgPool::connect(&database_url("postgres")).await?;
    let names = [format!("{prefix}_orders"), format!("{prefix}_payments")];
    for name in &names {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
    }
    let transport = if kafka {
        let brokers = kafka_brokers();
        let client = dtx_postgres::rskafka::client::ClientBuilder::new(vec![brokers.clone()])
            .build()
            .await?;
        let run = &Uuid::now_v7().simple().to_string()[20..];
        let topics = [
            format!("two-services-orders-{run}"),
            format!("two-services-payments-{run}"),
        ];
        for topic in &topics {
            client
                .controller_client()?
                .create_topic(topic.clone(), 2, 1, 5_000)
                .await?;
        }
        let [orders_topic, payments_topic] = topics;
        Transport::Kafka {
            brokers,
            orders_topic,
            payments_topic,
        }
    } else {
        let jetstream = dtx_postgres::async_nats::jetstream::new(
            dtx_postgres::async_nats::connect(nats_url()).await?,
        );
        for (stream, subjects) in [
            ("TWO_SERVICES_ORDERS", ORDER_SUBJECTS),
            ("TWO_SERVICES_PAYMENTS", PAYMENT_SUBJECTS),
        ] {
            let _ = jetstream.delete_stream(stream).await;
            jetstream
                .create_stream(dtx_postgres::async_nats::jetstream::stream::Config {
                    name: stream.to_owned(),
                    subjects: vec![format!("{subjects}.>")],
                    duplicate_window: Duration::from_mins(2),
                    ..Default::default()
                })
                .await?;
        }
        Transport::Nats
    };
    Ok((database_url(&names[0]), database_url(&names[1]), transport))
}

/// The Kafka brokers: `KAFKA_BROKERS`, or 127.0.0.1:9092.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Which service's outbox a stream or topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The order service's messages (`PaymentRequested`).
    Orders,
    /// The payment service's events (`PaymentSettled`).
    Payments,
}

/// How the services exchange messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// NATS `JetStream` (`NATS_URL` or 127.0.0.1:4222): a stream per service's outbox.
    Nats,
    /// Kafka: the bootstrap brokers and a topic per service's outbox.
    Kafka {
        /// The bootstrap brokers.
        brokers: String,
        /// The order service's topic.
        orders_topic: String,
        /// The payment service's topic.
        payments_topic: String,
    },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nats => f.write_str("NATS JetStream"),
            Self::Kafka { brokers, .. } => write!(f, "Kafka at {brokers}"),
        }
    }
}

impl Transport {
    /// As command-line arguments of a service process ([`Transport::from_args`] reads them).
    pub fn args(&self) -> Vec<String> {
        match self {
            Self::Nats => vec!["nats".to_owned()],
            Self::Kafka {
                brokers,
                orders_topic,
                payments_topic,
            } => vec![
                "kafka".to_owned(),
                brokers.clone(),
                orders_topic.clone(),
                payments_topic.clone(),
            ],
        }
    }

    /// Reads what [`Transport::args`] wrote.
    pub fn from_args(args: &[String]) -> Option<Self> {
        match args {
            [nats] if nats == "nats" => Some(Self::Nats),
            [kafka, brokers, orders_topic, payments_topic] if kafka == "kafka" => {
                Some(Self::Kafka {
                    brokers: brokers.clone(),
                    orders_topic: orders_topic.clone(),
                    payments_topic: payments_topic.clone(),
                })
            }
            _ => None,
        }
    }

    /// The relay of `side`'s outbox.
    async fn relay(&self, outbox: &PgOutbox, side: Side) -> Result<OutboxRelay, Failure> {
        Ok(match self {
            Self::Nats => {
                let client = dtx_postgres::async_nats::connect(nats_url()).await?;
                let subjects = match side {
                    Side::Orders => ORDER_SUBJECTS,
                    Side::Payments => PAYMENT_SUBJECTS,
                };
                outbox.relay(
                    NatsPublisher::new(client, subjects),
                    RelayOptions::default(),
                )
            }
            Self::Kafka { brokers, .. } => {
                let publisher =
                    KafkaPublisher::connect([brokers.clone()], self.topic(side)).await?;
                outbox.relay(publisher, RelayOptions::default())
            }
        })
    }

    fn topic(&self, side: Side) -> String {
        match (self, side) {
            (Self::Kafka { orders_topic, .. }, Side::Orders) => orders_topic.clone(),
            (Self::Kafka { payments_topic, .. }, Side::Payments) => payments_topic.clone(),
            (Self::Nats, _) => String::new(),
        }
    }

    /// The inbox consumer `consumer` of `side`'s messages.
    async fn consumer<C: Consumer>(
        &self,
        side: Side,
        inbox: Inbox,
        consumer: C,
    ) -> Result<BrokerConsumer<C>, Failure> {
        Ok(match self {
            Self::Nats => {
                let (stream, subjects) = match side {
                    Side::Orders => ("TWO_SERVICES_ORDERS", ORDER_SUBJECTS),
                    Side::Payments => ("TWO_SERVICES_PAYMENTS", PAYMENT_SUBJECTS),
                };
                let client = dtx_postgres::async_nats::connect(nats_url()).await?;
                let consumer = NatsConsumer::new(
                    client,
                    inbox,
                    consumer,
                    NatsConsumerConfig::new(stream, C::NAME)
                        .filter_subject(format!("{subjects}.>")),
                );
                consumer.ensure().await?;
                BrokerConsumer::Nats(Box::new(consumer))
            }
            Self::Kafka { brokers, .. } => BrokerConsumer::Kafka(
                KafkaConsumer::connect([brokers.clone()], self.topic(side), inbox, consumer)
                    .await?,
            ),
        })
    }
}

/// A consumer on either broker.
enum BrokerConsumer<C: Consumer> {
    Nats(Box<NatsConsumer<C>>),
    Kafka(KafkaConsumer<C>),
}

impl<C: Consumer> BrokerConsumer<C> {
    async fn run(&self, shutdown: Shutdown) -> Result<(), Failure> {
        match self {
            Self::Nats(consumer) => consumer.run(shutdown.wait()).await?,
            Self::Kafka(consumer) => consumer.run(shutdown.wait()).await?,
        }
        Ok(())
    }
}

// ---- a client of the order service ----

/// An HTTP/1.1 client of the order service.
#[derive(Clone)]
pub struct OrderClient {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    base: String,
}

impl std::fmt::Debug for OrderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What `POST /orders` answered.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The status.
    pub status: StatusCode,
    /// Whether it was replayed by the idempotency layer.
    pub replayed: bool,
    /// The body (`order_id`, `saga_id`).
    pub body: serde_json::Value,
}

impl OrderClient {
    /// A client of the service on `port` of 127.0.0.1.
    pub fn new(port: u16) -> Self {
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn send(
        &self,
        request: axum::http::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Result<(StatusCode, axum::http::HeaderMap, serde_json::Value), Failure> {
        use http_body_util::BodyExt as _;
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        Ok((parts.status, parts.headers, json))
    }

    /// `POST /orders` with `key` as its `Idempotency-Key`.
    pub async fn place(
        &self,
        key: &str,
        customer: &str,
        amount_cents: u64,
    ) -> Result<Placed, Failure> {
        let body = serde_json::json!({ "customer": customer, "amount_cents": amount_cents });
        let request = axum::http::Request::post(format!("{}/orders", self.base))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))?;
        let (status, headers, body) = self.send(request).await?;
        let replayed = headers
            .get(dtx::idempotency::http::IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v == "true");
        Ok(Placed {
            status,
            replayed,
            body,
        })
    }

    /// `GET /sagas/{id}`.
    pub async fn saga(&self, id: &str) -> Result<serde_json::Value, Failure> {
        let request = axum::http::Request::get(format!("{}/sagas/{id}", self.base))
            .body(http_body_util::Full::default())?;
        Ok(self.send(request).await?.2)
    }

    /// Whether the service answers `GET /health`.
    pub async fn ready(&self) -> bool {
        let Ok(request) = axum::http::Request::get(format!("{}/health", self.base))
            .body(http_body_util::Full::default())
        else {
            return false;
        };
        matches!(self.send(request).await, Ok((StatusCode::OK, _, _)))
    }

    /// Waits until saga `id` has finished (polling every `poll`, for at most `limit`); its
    /// final record.
    pub async fn finished(
        &self,
        id: &str,
        poll: Duration,
        limit: Duration,
    ) -> Result<serde_json::Value, Failure> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let saga = self.saga(id).await?;
            let status = saga["status"].as_str().unwrap_or_default().to_owned();
            if ["completed", "compensated", "failed"].contains(&status.as_str()) {
                return Ok(saga);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("saga {id} is still {status} after {limit:?}").into());
            }
            tokio::time::sleep(poll).await;
        }
    }
}
