//! Validate: the rules across a projection's options and methods, every mistake reported at once
//! under its own tokens. Produces the model `expand` generates from. The handlers are checked as
//! every block of event handlers is (`common::event_handlers`).

use super::parse::{Input, clear_attribute};
use crate::common::event_handlers::{self, Extra, Handler, Kind};
use proc_macro2::Span;

/// What a suggested `#[clear]` method looks like after its name.
const CLEAR: &str = "(&self, uow: &mut dyn UnitOfWork) -> Result<(), MyError>";

/// A validated projection.
pub(super) struct Model {
    pub(super) krate: syn::Path,
    /// The `impl` block, its `#[clear]` attribute removed.
    pub(super) item: syn::ItemImpl,
    pub(super) name: String,
    pub(super) version: u32,
    pub(super) subscription: bool,
    pub(super) handlers: Vec<Handler>,
    pub(super) clear: Option<Clear>,
}

/// The `#[clear]` method.
pub(super) struct Clear {
    pub(super) ident: syn::Ident,
    /// Where an error about its result goes: the return type.
    pub(super) output: Span,
}

/// Checks every rule, reporting each broken one; the model is used only if none is.
pub(super) fn validate(input: Input, errors: &mut darling::error::Accumulator) -> Model {
    let kind = input.kind();
    event_handlers::check_block(kind, &input.item, errors);
    let name = input.name();
    event_handlers::check_name(kind, input.args.name.as_ref(), errors);
    let version = match &input.args.version {
        Some(version) if **version == 0 => {
            errors.push(
                darling::Error::custom(
                    "projection versions start at 1, the default: remove `version = 0` or write \
                     `version = 1` (bump it to rebuild the read model from the start)",
                )
                .with_span(&version.span()),
            );
            1
        }
        Some(version) => **version,
        None => 1,
    };
    let subscription = input.args.subscription.is_present();
    let mut clear: Option<Clear> = None;
    let handlers = event_handlers::handlers(kind, &input.item, errors, |f, errors| {
        let Some(attr) = clear_attribute(f) else {
            return false;
        };
        check_clear_attribute(attr, subscription, errors);
        if let Some(Clear { ident: first, .. }) = &clear {
            errors.push(
                darling::Error::custom(format!(
                    "`{first}` clears the read model already: a projection has one `#[clear]` \
                     method; do both in `{first}` and remove this `#[clear]`"
                ))
                .with_span(attr.path()),
            );
        }
        let checked = clear_method(kind, f, errors);
        clear.get_or_insert(checked);
        true
    });
    let Input { args, mut item } = input;
    crate::common::strip_method_attributes(&mut item, &["clear"]);
    Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        item,
        name,
        version,
        subscription,
        handlers,
        clear,
    }
}

/// `#[clear]` takes no options and belongs to read models.
fn check_clear_attribute(
    attr: &syn::Attribute,
    subscription: bool,
    errors: &mut darling::error::Accumulator,
) {
    if let Err(error) = attr.meta.require_path_only() {
        errors.push(
            darling::Error::custom("`#[clear]` takes no options: write `#[clear]`")
                .with_span(&error.span()),
        );
    }
    if subscription {
        errors.push(
            darling::Error::custom(
                "a subscription has no read model to clear: its effects leave the database, so \
                 a replay cannot undo them; remove `#[clear]`, or remove `subscription` if the \
                 handlers write a read model through a unit of work",
            )
            .with_span(attr.path()),
        );
    }
}

/// Checks a `#[clear]` method: `async fn name(&self, uow: &mut dyn UnitOfWork) -> Result<(), E>`.
fn clear_method(
    kind: Kind,
    f: &syn::ImplItemFn,
    errors: &mut darling::error::Accumulator,
) -> Clear {
    let sig = &f.sig;
    let name = &sig.ident;
    let subject = format!("the `#[clear]` method `{name}`");
    event_handlers::check_common(kind, sig, &subject, CLEAR, errors);
    let arguments = event_handlers::typed_arguments(sig);
    match arguments.as_slice() {
        [arg] if matches!(event_handlers::extra(&arg.ty), Some(Ok(Extra::UnitOfWork))) => {}
        [] => errors.push(
            darling::Error::custom(format!(
                "{subject} clears the read model through the unit of work that resets its \
                 checkpoint: write `async fn {name}{CLEAR}`"
            ))
            .with_span(&sig.paren_token.span.join()),
        ),
        [first, ..] => {
            let wrong = arguments
                .iter()
                .find(|arg| !matches!(event_handlers::extra(&arg.ty), Some(Ok(Extra::UnitOfWork))))
                .unwrap_or(first);
            errors.push(
                darling::Error::custom(format!(
                    "{subject} takes only the unit of work it clears the read model in: write \
                     `async fn {name}{CLEAR}`"
                ))
                .with_span(&event_handlers::anchor(&wrong.ty)),
            );
        }
    }
    Clear {
        ident: name.clone(),
        output: event_handlers::output_span(sig),
    }
}
