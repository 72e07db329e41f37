//! Validate: the rules across a projection's options and methods, every mistake reported at once
//! under its own tokens. Produces the model `expand` generates from.

use super::parse::{Input, clear_attribute};
use crate::common::display;
use proc_macro2::Span;
use std::collections::HashMap;
use syn::spanned::Spanned;

/// What a suggested handler looks like after its name.
const HANDLER: &str = "(&self, event: &OrderPlaced) -> Result<(), MyError>";
/// What a suggested `#[clear]` method looks like after its name.
const CLEAR: &str = "(&self, uow: &mut dyn UnitOfWork) -> Result<(), MyError>";
/// The parameters a handler may take after the event.
const EXTRAS: &str =
    "`meta: &RecordedEvent`, `uow: &mut dyn UnitOfWork` and `inv: &mut Invalidations`";

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

/// One handler method.
pub(super) struct Handler {
    pub(super) ident: syn::Ident,
    /// The payload type it handles (without the reference).
    pub(super) payload: syn::Type,
    /// Whether it takes the payload by reference.
    pub(super) by_ref: bool,
    /// What it takes after the event, in order.
    pub(super) extras: Vec<Extra>,
    /// Where an error about its result goes: the return type.
    pub(super) output: Span,
}

/// A parameter a handler may take after the event, recognised by its type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Extra {
    /// `&RecordedEvent`: the stored event's id, position, metadata.
    Meta,
    /// `&mut dyn UnitOfWork`: the read model's writes commit with the checkpoint.
    UnitOfWork,
    /// `&mut Invalidations`: query cache entries to drop after the commit.
    Invalidations,
}

impl Extra {
    /// The type as a handler takes it.
    fn written(self) -> &'static str {
        match self {
            Self::Meta => "&RecordedEvent",
            Self::UnitOfWork => "&mut dyn UnitOfWork",
            Self::Invalidations => "&mut Invalidations",
        }
    }
}

/// The `#[clear]` method.
pub(super) struct Clear {
    pub(super) ident: syn::Ident,
    /// Where an error about its result goes: the return type.
    pub(super) output: Span,
}

/// Checks every rule, reporting each broken one; the model is used only if none is.
pub(super) fn validate(input: Input, errors: &mut darling::error::Accumulator) -> Model {
    check_block(&input, errors);
    let name = input.name();
    check_name(&input, &name, errors);
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
    let mut handlers = Vec::new();
    let mut clear: Option<Clear> = None;
    for member in &input.item.items {
        let syn::ImplItem::Fn(f) = member else {
            continue;
        };
        if let Some(attr) = clear_attribute(f) {
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
            let checked = clear_method(f, errors);
            clear.get_or_insert(checked);
        } else if let Some(handler) = handler(f, subscription, errors) {
            handlers.push(handler);
        }
    }
    check_distinct(&handlers, errors);
    if handlers.is_empty() && !has_unchecked_methods(&input.item) {
        errors.push(no_handlers(&input.item));
    }
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

/// The block itself: an inherent, non-generic `impl` of a named type.
fn check_block(input: &Input, errors: &mut darling::error::Accumulator) {
    let item = &input.item;
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(
            darling::Error::custom(format!(
                "`#[projection]` goes on the projection's own `impl {ty} {{ .. }}` block, not on \
                 a trait impl: it implements `Projection` for you",
                ty = display(&item.self_ty),
            ))
            .with_span(path),
        );
    }
    if let Some(param) = item.generics.params.first() {
        errors.push(
            darling::Error::custom(
                "a projection cannot be generic: it is registered by its name as one concrete \
                 type; remove the type parameters, e.g. `impl OrderSummary { .. }`",
            )
            .with_span(param),
        );
    }
    if input.type_ident().is_none() {
        errors.push(
            darling::Error::custom(
                "expected the projection's type, e.g. `#[projection] impl OrderSummary { .. }`",
            )
            .with_span(&item.self_ty),
        );
    }
}

/// The checkpoint name: 1 to 255 characters without control characters.
fn check_name(input: &Input, name: &str, errors: &mut darling::error::Accumulator) {
    let Some(written) = &input.args.name else {
        return;
    };
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        errors.push(
            darling::Error::custom(
                "a projection name is the key of its checkpoint: 1 to 255 characters without \
                 control characters",
            )
            .with_span(&written.span()),
        );
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
fn clear_method(f: &syn::ImplItemFn, errors: &mut darling::error::Accumulator) -> Clear {
    let sig = &f.sig;
    let name = &sig.ident;
    let subject = format!("the `#[clear]` method `{name}`");
    check_common(sig, &subject, CLEAR, errors);
    let arguments = typed_arguments(sig);
    match arguments.as_slice() {
        [arg] if matches!(extra(&arg.ty), Some(Ok(Extra::UnitOfWork))) => {}
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
                .find(|arg| !matches!(extra(&arg.ty), Some(Ok(Extra::UnitOfWork))))
                .unwrap_or(first);
            errors.push(
                darling::Error::custom(format!(
                    "{subject} takes only the unit of work it clears the read model in: write \
                     `async fn {name}{CLEAR}`"
                ))
                .with_span(&anchor(&wrong.ty)),
            );
        }
    }
    Clear {
        ident: name.clone(),
        output: output_span(sig),
    }
}

/// Checks a handler: `async fn name(&self, event: &P, extras..) -> Result<(), E>`.
fn handler(
    f: &syn::ImplItemFn,
    subscription: bool,
    errors: &mut darling::error::Accumulator,
) -> Option<Handler> {
    let sig = &f.sig;
    let name = &sig.ident;
    let subject = format!("projection handler `{name}`");
    check_common(sig, &subject, HANDLER, errors);
    let arguments = typed_arguments(sig);
    let Some((first, rest)) = arguments.split_first() else {
        errors.push(
            darling::Error::custom(format!(
                "{subject} takes the event payload it handles after `&self`: write `async fn \
                 {name}{HANDLER}`; every method of a `#[projection]` block handles one event \
                 type, so move helper methods to another `impl` block"
            ))
            .with_span(&sig.paren_token.span.join()),
        );
        return None;
    };
    if extra(&first.ty).is_some() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} takes the event payload first, then any of {EXTRAS}: write `async fn \
                 {name}{HANDLER}`"
            ))
            .with_span(&anchor(&first.ty)),
        );
        return None;
    }
    let (payload, by_ref) = match &*first.ty {
        syn::Type::Reference(reference) => {
            if let Some(mutability) = reference.mutability {
                errors.push(
                    darling::Error::custom(format!(
                        "a handler does not change the event: take it as `&{}` or by value, not \
                         `&mut`",
                        display(&reference.elem),
                    ))
                    .with_span(&mutability),
                );
            }
            ((*reference.elem).clone(), true)
        }
        ty => (ty.clone(), false),
    };
    let mut extras: Vec<Extra> = Vec::new();
    for arg in rest {
        match extra(&arg.ty) {
            Some(Ok(Extra::UnitOfWork)) if subscription => errors.push(
                darling::Error::custom(format!(
                    "a subscription's handlers get no unit of work: their effects leave the \
                     database, so nothing would commit with the checkpoint and an event may be \
                     handled again; remove this parameter, and take `meta: &RecordedEvent` to use \
                     `meta.event_id` as an idempotency key (or remove `subscription` to write a \
                     read model in `{name}`)"
                ))
                .with_span(&anchor(&arg.ty)),
            ),
            Some(Ok(extra)) if extras.contains(&extra) => errors.push(
                darling::Error::custom(format!(
                    "{subject} takes `{}` twice: remove this parameter",
                    extra.written()
                ))
                .with_span(&anchor(&arg.ty)),
            ),
            Some(Ok(extra)) => extras.push(extra),
            Some(Err(extra)) => errors.push(
                darling::Error::custom(format!(
                    "{subject} takes this parameter as `{}`: write `{}: {}`",
                    extra.written(),
                    display(&arg.pat),
                    extra.written()
                ))
                .with_span(&arg.ty),
            ),
            None => errors.push(
                darling::Error::custom(format!(
                    "unsupported parameter `{}`: after the event, a projection handler takes \
                     only {EXTRAS}, in any order (keep services in the projection's fields)",
                    display(*arg),
                ))
                .with_span(&anchor(&arg.ty)),
            ),
        }
    }
    Some(Handler {
        ident: name.clone(),
        payload,
        by_ref,
        extras,
        output: output_span(sig),
    })
}

/// What handlers and `#[clear]` share: `async`, not generic, `&self`, a return type.
fn check_common(
    sig: &syn::Signature,
    subject: &str,
    example: &str,
    errors: &mut darling::error::Accumulator,
) {
    let name = &sig.ident;
    if sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} must be an `async fn`: write `async fn {name}{example}`"
            ))
            .with_span(&sig.fn_token),
        );
    }
    if let Some(param) = sig.generics.params.first() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} cannot be generic: it is called with one concrete event type; remove \
                 the type parameters"
            ))
            .with_span(param),
        );
    }
    match sig.inputs.first() {
        Some(syn::FnArg::Receiver(receiver)) => {
            let wrong = match (&receiver.reference, &receiver.mutability) {
                (Some(_), Some(mutability)) => Some(mutability.span),
                (None, _) => Some(receiver.self_token.span),
                (Some(_), None) => None,
            };
            if let Some(span) = wrong {
                errors.push(
                    darling::Error::custom(format!(
                        "{subject} takes `&self`: the runner shares the projection, and its \
                         state belongs in the read model; write `async fn {name}(&self, ..)`"
                    ))
                    .with_span(&span),
                );
            }
        }
        first => errors.push(
            darling::Error::custom(format!(
                "{subject} is a method of the projection: write `async fn {name}{example}`"
            ))
            .with_span(&first.map_or_else(|| name.span(), Spanned::span)),
        ),
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        errors.push(
            darling::Error::custom(format!(
                "{subject} returns `Result<(), E>`: write `async fn {name}(..) -> Result<(), \
                 MyError>`"
            ))
            .with_span(name),
        );
    }
}

/// Two handlers for one payload type, each named.
fn check_distinct(handlers: &[Handler], errors: &mut darling::error::Accumulator) {
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for handler in handlers {
        let key = display(&handler.payload);
        if let Some(first) = seen.insert(key.clone(), &handler.ident) {
            errors.push(
                darling::Error::custom(format!(
                    "`{first}` and `{second}` both handle `{key}`: a projection has one handler \
                     per event type; merge `{second}` into `{first}`",
                    second = handler.ident,
                ))
                .with_span(&handler.payload),
            );
        }
    }
}

/// Whether the block has methods whose checks failed before they counted as handlers: the
/// block is then not reported as empty.
fn has_unchecked_methods(item: &syn::ItemImpl) -> bool {
    item.items
        .iter()
        .any(|i| matches!(i, syn::ImplItem::Fn(f) if clear_attribute(f).is_none()))
}

/// A projection without handlers.
fn no_handlers(item: &syn::ItemImpl) -> darling::Error {
    darling::Error::custom(format!(
        "a projection handles at least one event type: add a method per event payload it \
         handles, e.g. `async fn on_placed{HANDLER}`"
    ))
    .with_span(&item.self_ty)
}

/// The typed parameters after the receiver.
fn typed_arguments(sig: &syn::Signature) -> Vec<&syn::PatType> {
    sig.inputs
        .iter()
        .filter_map(|input| match input {
            syn::FnArg::Typed(arg) => Some(arg),
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The parameter a type stands for after the event: `Some(Ok(..))` when written as expected,
/// `Some(Err(..))` when it names the type but takes it the wrong way (`RecordedEvent` by value),
/// `None` for any other type.
fn extra(ty: &syn::Type) -> Option<Result<Extra, Extra>> {
    let (mutable, ty) = match ty {
        syn::Type::Reference(r) => (Some(r.mutability.is_some()), &*r.elem),
        ty => (None, ty),
    };
    let extra = match ty {
        syn::Type::TraitObject(object) if names_unit_of_work(object) => Extra::UnitOfWork,
        syn::Type::Paren(paren) => match &*paren.elem {
            syn::Type::TraitObject(object) if names_unit_of_work(object) => Extra::UnitOfWork,
            _ => return None,
        },
        ty => match last_segment(ty)?.ident.to_string().as_str() {
            "RecordedEvent" => Extra::Meta,
            "Invalidations" => Extra::Invalidations,
            "UnitOfWork" => Extra::UnitOfWork,
            _ => return None,
        },
    };
    let expected = match extra {
        Extra::Meta => mutable == Some(false),
        Extra::UnitOfWork => {
            mutable == Some(true) && matches!(ty, syn::Type::TraitObject(_) | syn::Type::Paren(_))
        }
        Extra::Invalidations => mutable == Some(true),
    };
    Some(if expected { Ok(extra) } else { Err(extra) })
}

/// Whether a trait object is `dyn UnitOfWork` (with any lifetime bound).
fn names_unit_of_work(object: &syn::TypeTraitObject) -> bool {
    object.bounds.iter().any(|bound| match bound {
        syn::TypeParamBound::Trait(t) => t
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "UnitOfWork"),
        _ => false,
    })
}

fn last_segment(ty: &syn::Type) -> Option<&syn::PathSegment> {
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// The token an error about a type goes under: its name (`Db` in `&Db`, `UnitOfWork` in
/// `&mut dyn UnitOfWork`), since a diagnostic spans one token on stable Rust.
fn anchor(ty: &syn::Type) -> Span {
    match ty {
        syn::Type::Reference(reference) => anchor(&reference.elem),
        syn::Type::Paren(paren) => anchor(&paren.elem),
        syn::Type::TraitObject(object) => object.bounds.first().map_or_else(
            || ty.span(),
            |bound| match bound {
                syn::TypeParamBound::Trait(t) => t
                    .path
                    .segments
                    .last()
                    .map_or_else(|| t.span(), |s| s.ident.span()),
                other => other.span(),
            },
        ),
        ty => last_segment(ty).map_or_else(|| ty.span(), |segment| segment.ident.span()),
    }
}

/// The token an error about a method's result goes under: the return type.
fn output_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => sig.ident.span(),
    }
}
