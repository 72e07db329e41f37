//! The bus's `tracing` spans: dispatch and handling, with command type, aggregate id and
//! outcome.
//!
//! A test binary of its own: `tracing` caches per-callsite interest process-wide, and tests
//! running at the same time without a subscriber would race with the one installed here.

#![allow(clippy::unwrap_used, reason = "tests")]

use dtx::cqrs::{CommandBus, Committed};
use examples::order::{AddLine, Line, OrderId, PlaceOrder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Closed = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

/// Records every closed span with its fields.
struct Recorder(Closed);

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &tracing::Id, ctx: Context<'_, S>) {
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &tracing::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        values.record(extensions.get_mut::<Fields>().unwrap());
    }

    fn on_close(&self, id: tracing::Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions_mut().remove::<Fields>().unwrap();
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), fields.0));
    }
}

#[tokio::test]
async fn dispatch_and_handling_are_traced() {
    let closed = Closed::default();
    let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&closed)));
    let _guard = tracing::subscriber::set_default(subscriber);

    let bus = CommandBus::builder().registry().build().unwrap();
    let order_id = OrderId::new();
    let line = Line {
        sku: "s".into(),
        quantity: 1,
        unit_price_cents: 1,
    };
    let _: Committed = bus
        .execute(PlaceOrder {
            order_id,
            customer: "c".into(),
        })
        .await
        .unwrap();
    let _: Committed = bus
        .execute(AddLine {
            order_id,
            line: line.clone(),
        })
        .await
        .unwrap();
    let missing = OrderId::new();
    let _ = bus
        .execute(AddLine {
            order_id: missing,
            line,
        })
        .await;

    let closed = closed.lock().unwrap();
    let dispatch: Vec<_> = closed
        .iter()
        .filter(|(name, _)| name == "dtx.command")
        .map(|(_, f)| f)
        .collect();
    assert_eq!(dispatch.len(), 3, "{closed:?}");
    assert!(dispatch[1]["command"].ends_with("AddLine"));
    assert_eq!(dispatch[1]["outcome"], "ok");
    assert_eq!(dispatch[2]["outcome"], "not_applicable");
    assert!(
        dispatch
            .iter()
            .all(|f| f.contains_key("command_id") && f.contains_key("correlation_id"))
    );
    let handle: Vec<_> = closed
        .iter()
        .filter(|(name, _)| name == "dtx.command.handle")
        .map(|(_, f)| f)
        .collect();
    assert!(!handle.is_empty(), "{closed:?}");
    assert!(
        handle.iter().any(|f| f["aggregate"] == "Order"
            && f["aggregate_id"] == order_id.to_string()
            && f["attempt"] == "1"),
        "{handle:?}"
    );
}
