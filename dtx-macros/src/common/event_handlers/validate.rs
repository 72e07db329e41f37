//! Parse and validate a block of event handlers: the `impl` block itself, its name, and each
//! handler's signature, every mistake reported at once under its own tokens.

use super::{Extra, Kind};
use crate::common::display;
use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::{Span, TokenStream};
use std::collections::HashMap;
use syn::spanned::Spanned;

/// One handler method.
pub(crate) struct Handler {
    pub(crate) ident: syn::Ident,
    /// The payload type it handles (without the reference).
    pub(crate) payload: syn::Type,
    /// Whether it takes the payload by reference.
    pub(crate) by_ref: bool,
    /// What it takes after the event, in order.
    pub(crate) extras: Vec<Extra>,
    /// Where an error about its result goes: the return type.
    pub(crate) output: Span,
}

/// The `name = ".."` option, with a message saying how to write it when it is not a string.
pub(crate) struct Name(pub(crate) String);

impl FromMeta for Name {
    fn from_word() -> darling::Result<Self> {
        Err(darling::Error::custom(
            "`name` needs a value: write `name = \"..\"`, or remove `name` to use the type's name \
             in snake case",
        ))
    }

    fn from_string(value: &str) -> darling::Result<Self> {
        Ok(Self(value.to_owned()))
    }

    fn from_value(value: &syn::Lit) -> darling::Result<Self> {
        match value {
            syn::Lit::Str(text) => Self::from_string(&text.value()),
            other => Err(darling::Error::custom(format!(
                "`name` is text: write `name = \"{}\"`",
                display(other).trim_matches('"')
            ))
            .with_span(other)),
        }
    }
}

/// Parses the options and the item; `None` if the item is not an `impl` block (reported).
pub(crate) fn parse<A: FromMeta + Default>(
    kind: Kind,
    args: TokenStream,
    item: TokenStream,
    errors: &mut darling::error::Accumulator,
) -> Option<(A, syn::ItemImpl)> {
    let args = errors
        .handle(crate::common::options::<A>(args))
        .unwrap_or_default();
    match errors.handle(syn::parse2::<syn::Item>(item).map_err(darling::Error::from))? {
        syn::Item::Impl(item) => Some((args, item)),
        other => {
            errors.push(not_an_impl(kind, &other));
            None
        }
    }
}

/// The attribute on something other than an `impl` block.
fn not_an_impl(kind: Kind, item: &syn::Item) -> darling::Error {
    let example = kind.example_type().to_owned();
    let (what, ty, span) = match item {
        syn::Item::Struct(s) => ("the struct", s.ident.to_string(), s.struct_token.span),
        syn::Item::Enum(e) => ("the enum", e.ident.to_string(), e.enum_token.span),
        syn::Item::Fn(f) => ("a function", example, f.sig.fn_token.span),
        other => ("this item", example, other.span()),
    };
    darling::Error::custom(format!(
        "`#[{attribute}]` goes on the `impl` block of the {attribute}'s type, not on {what}: \
         write `#[{attribute}] impl {ty} {{ async fn on_placed{handler} {{ .. }} }}`, one method \
         per event type",
        attribute = kind.attribute(),
        handler = kind.handler_example(),
    ))
    .with_span(&span)
}

/// The type's name, `OrderSummary` in `impl OrderSummary`; `None` for a type that is not a plain
/// path (reported by [`check_block`]).
pub(crate) fn type_ident(item: &syn::ItemImpl) -> Option<&syn::Ident> {
    match &*item.self_ty {
        syn::Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|s| &s.ident)
        }
        _ => None,
    }
}

/// The name: `name = ".."`, else the type's name in snake case.
pub(crate) fn resolved_name(written: Option<&SpannedValue<Name>>, item: &syn::ItemImpl) -> String {
    match written {
        Some(name) => name.0.clone(),
        None => type_ident(item)
            .map(crate::common::snake_case)
            .unwrap_or_default(),
    }
}

/// The block itself: an inherent, non-generic `impl` of a named type.
pub(crate) fn check_block(
    kind: Kind,
    item: &syn::ItemImpl,
    errors: &mut darling::error::Accumulator,
) {
    let (attribute, example) = (kind.attribute(), kind.example_type());
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(
            darling::Error::custom(format!(
                "`#[{attribute}]` goes on the {attribute}'s own `impl {ty} {{ .. }}` block, not \
                 on a trait impl: it implements `{trait_name}` for you",
                ty = display(&item.self_ty),
                trait_name = kind.trait_name(),
            ))
            .with_span(path),
        );
    }
    if let Some(param) = item.generics.params.first() {
        errors.push(
            darling::Error::custom(format!(
                "a {attribute} cannot be generic: it is registered by its name as one concrete \
                 type; remove the type parameters, e.g. `impl {example} {{ .. }}`"
            ))
            .with_span(param),
        );
    }
    if type_ident(item).is_none() {
        errors.push(
            darling::Error::custom(format!(
                "expected the {attribute}'s type, e.g. `#[{attribute}] impl {example} {{ .. }}`"
            ))
            .with_span(&item.self_ty),
        );
    }
}

/// A written name: 1 to 255 characters without control characters.
pub(crate) fn check_name(
    kind: Kind,
    written: Option<&SpannedValue<Name>>,
    errors: &mut darling::error::Accumulator,
) {
    let Some(written) = written else {
        return;
    };
    let name = &written.0;
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        errors.push(
            darling::Error::custom(format!(
                "{}: 1 to 255 characters without control characters",
                kind.name_key()
            ))
            .with_span(&written.span()),
        );
    }
}

/// Checks every method of the block as a handler, except those `other` takes (it checks them
/// itself and returns `true`); then that no two handle one payload type and that there is one.
pub(crate) fn handlers(
    kind: Kind,
    item: &syn::ItemImpl,
    errors: &mut darling::error::Accumulator,
    mut other: impl FnMut(&syn::ImplItemFn, &mut darling::error::Accumulator) -> bool,
) -> Vec<Handler> {
    let mut handlers = Vec::new();
    let mut candidates = 0;
    for member in &item.items {
        let syn::ImplItem::Fn(f) = member else {
            continue;
        };
        if other(f, errors) {
            continue;
        }
        candidates += 1;
        if let Some(handler) = handler(kind, f, errors) {
            handlers.push(handler);
        }
    }
    check_distinct(kind, &handlers, errors);
    // Methods whose checks failed before they counted as handlers: the block is not empty.
    if candidates == 0 {
        errors.push(
            darling::Error::custom(format!(
                "a {} handles at least one event type: add a method per event payload it \
                 handles, e.g. `async fn on_placed{}`",
                kind.attribute(),
                kind.handler_example(),
            ))
            .with_span(&item.self_ty),
        );
    }
    handlers
}

/// Checks a handler: `async fn name(&self, event: &P, extras..) -> Result<(), E>`.
fn handler(
    kind: Kind,
    f: &syn::ImplItemFn,
    errors: &mut darling::error::Accumulator,
) -> Option<Handler> {
    let sig = &f.sig;
    let name = &sig.ident;
    let (attribute, example, extras_text) =
        (kind.attribute(), kind.handler_example(), kind.extras());
    let subject = format!("{attribute} handler `{name}`");
    check_common(kind, sig, &subject, example, errors);
    let arguments = typed_arguments(sig);
    let Some((first, rest)) = arguments.split_first() else {
        errors.push(
            darling::Error::custom(format!(
                "{subject} takes the event payload it handles after `&self`: write `async fn \
                 {name}{example}`; every method of a `#[{attribute}]` block handles one event \
                 type, so move helper methods to another `impl` block"
            ))
            .with_span(&sig.paren_token.span.join()),
        );
        return None;
    };
    if extra(&first.ty).is_some() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} takes the event payload first, then any of {extras_text}: write `async \
                 fn {name}{example}`"
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
            Some(Ok(extra)) => match kind.admits(extra, name) {
                Err(why) => errors.push(darling::Error::custom(why).with_span(&anchor(&arg.ty))),
                Ok(()) if extras.contains(&extra) => errors.push(
                    darling::Error::custom(format!(
                        "{subject} takes `{}` twice: remove this parameter",
                        extra.written()
                    ))
                    .with_span(&anchor(&arg.ty)),
                ),
                Ok(()) => extras.push(extra),
            },
            Some(Err(extra)) => errors.push(
                darling::Error::custom(match kind.admits(extra, name) {
                    Ok(()) => format!(
                        "{subject} takes this parameter as `{}`: write `{}: {}`",
                        extra.written(),
                        display(&arg.pat),
                        extra.written()
                    ),
                    Err(why) => why,
                })
                .with_span(&arg.ty),
            ),
            None => errors.push(
                darling::Error::custom(format!(
                    "unsupported parameter `{}`: after the event, a {attribute} handler takes \
                     only {extras_text}, in any order (keep services in the {attribute}'s fields)",
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

/// What every method of the block shares: `async`, not generic, `&self`, a return type.
/// `subject` names the method in messages; `example` is a signature to suggest after its name.
pub(crate) fn check_common(
    kind: Kind,
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
                        "{subject} takes `&self`: {}; write `async fn {name}(&self, ..)`",
                        kind.shared()
                    ))
                    .with_span(&span),
                );
            }
        }
        first => errors.push(
            darling::Error::custom(format!(
                "{subject} is a method of the {}: write `async fn {name}{example}`",
                kind.attribute()
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
fn check_distinct(kind: Kind, handlers: &[Handler], errors: &mut darling::error::Accumulator) {
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for handler in handlers {
        let key = display(&handler.payload);
        if let Some(first) = seen.insert(key.clone(), &handler.ident) {
            errors.push(
                darling::Error::custom(format!(
                    "`{first}` and `{second}` both handle `{key}`: a {attribute} has one handler \
                     per event type; merge `{second}` into `{first}`",
                    second = handler.ident,
                    attribute = kind.attribute(),
                ))
                .with_span(&handler.payload),
            );
        }
    }
}

/// The typed parameters after the receiver.
pub(crate) fn typed_arguments(sig: &syn::Signature) -> Vec<&syn::PatType> {
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
pub(crate) fn extra(ty: &syn::Type) -> Option<Result<Extra, Extra>> {
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
            "RecordedEvent" => Extra::Recorded,
            "InboundMessage" => Extra::Message,
            "Invalidations" => Extra::Invalidations,
            "UnitOfWork" => Extra::UnitOfWork,
            _ => return None,
        },
    };
    let expected = match extra {
        Extra::Recorded | Extra::Message => mutable == Some(false),
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
pub(crate) fn anchor(ty: &syn::Type) -> Span {
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
pub(crate) fn output_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => sig.ident.span(),
    }
}
