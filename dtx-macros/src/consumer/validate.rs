//! Validate: the rules across a consumer's options and methods, every mistake reported at once
//! under its own tokens. Produces the model `expand` generates from.

use super::parse::Input;
use crate::common::event_handlers::{self, Handler, Kind};

/// A validated consumer.
pub(super) struct Model {
    pub(super) krate: syn::Path,
    /// The `impl` block.
    pub(super) item: syn::ItemImpl,
    pub(super) name: String,
    pub(super) handlers: Vec<Handler>,
}

/// Checks every rule, reporting each broken one; the model is used only if none is.
pub(super) fn validate(input: Input, errors: &mut darling::error::Accumulator) -> Model {
    let kind = Kind::Consumer;
    event_handlers::check_block(kind, &input.item, errors);
    let name = input.name();
    event_handlers::check_name(kind, input.args.name.as_ref(), errors);
    if let Some(subscription) = &input.args.subscription {
        errors.push(
            darling::Error::custom(
                "a consumer has no `subscription` option: every handler runs in the unit of work \
                 that records the message in the inbox, which skips redeliveries; remove \
                 `subscription` (for effects outside the database, take `message: \
                 &InboundMessage` and use `message.message_id` as an idempotency key)",
            )
            .with_span(subscription),
        );
    }
    if let Some(version) = &input.args.version {
        errors.push(
            darling::Error::custom(
                "a consumer has no `version`: it handles each message once, as it arrives, and \
                 is never rebuilt from the start like a projection; remove it (a payload's \
                 schema version is the event's: `#[event(version = N)]` on its variant)",
            )
            .with_span(version),
        );
    }
    let handlers = event_handlers::handlers(kind, &input.item, errors, |f, errors| {
        let Some(clear) = f.attrs.iter().find(|a| a.path().is_ident("clear")) else {
            return false;
        };
        errors.push(
            darling::Error::custom(format!(
                "a consumer has no read model to clear: `#[clear]` belongs to a `#[projection]`, \
                 which is rebuilt from the first event; remove `#[clear]` and move `{}` to \
                 another `impl` block",
                f.sig.ident
            ))
            .with_span(clear.path()),
        );
        true
    });
    let Input { args, item } = input;
    Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        item,
        name,
        handlers,
    }
}
