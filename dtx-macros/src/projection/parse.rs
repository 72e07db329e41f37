//! Parse: `#[projection(..)]`'s options and the `impl` block, as written. Malformed options are
//! reported here; the rules across them and the methods are checked in `validate`.

use darling::FromMeta;
use darling::util::{Flag, SpannedValue};
use proc_macro2::TokenStream;
use syn::spanned::Spanned;

/// `#[projection(..)]`.
#[derive(FromMeta, Default)]
pub(super) struct Args {
    pub(super) name: Option<SpannedValue<String>>,
    pub(super) version: Option<SpannedValue<u32>>,
    pub(super) subscription: Flag,
    #[darling(rename = "crate")]
    pub(super) krate: Option<syn::Path>,
}

/// The parsed input: the options and the `impl` block, its `#[clear]` attribute still on.
pub(super) struct Input {
    pub(super) args: Args,
    pub(super) item: syn::ItemImpl,
}

impl Input {
    /// The projection's type name, `OrderSummary` in `impl OrderSummary`; `None` for a type that
    /// is not a plain path (reported by `validate`).
    pub(super) fn type_ident(&self) -> Option<&syn::Ident> {
        match &*self.item.self_ty {
            syn::Type::Path(path) if path.qself.is_none() => {
                path.path.segments.last().map(|s| &s.ident)
            }
            _ => None,
        }
    }

    /// The checkpoint name: `name = ".."`, else the type's name in snake case.
    pub(super) fn name(&self) -> String {
        match &self.args.name {
            Some(name) => (**name).clone(),
            None => self
                .type_ident()
                .map(crate::common::snake_case)
                .unwrap_or_default(),
        }
    }
}

/// Whether a method is marked `#[clear]`.
pub(super) fn clear_attribute(f: &syn::ImplItemFn) -> Option<&syn::Attribute> {
    f.attrs.iter().find(|a| a.path().is_ident("clear"))
}

/// Parses the options and the item; `None` if the item is not an `impl` block (reported).
pub(super) fn parse(
    args: TokenStream,
    item: TokenStream,
    errors: &mut darling::error::Accumulator,
) -> Option<Input> {
    let args = errors
        .handle(crate::common::options::<Args>(args))
        .unwrap_or_default();
    match errors.handle(syn::parse2::<syn::Item>(item).map_err(darling::Error::from))? {
        syn::Item::Impl(item) => Some(Input { args, item }),
        other => {
            errors.push(not_an_impl(&other));
            None
        }
    }
}

/// `#[projection]` on something other than an `impl` block.
fn not_an_impl(item: &syn::Item) -> darling::Error {
    let (what, ty, span) = match item {
        syn::Item::Struct(s) => ("the struct", s.ident.to_string(), s.struct_token.span),
        syn::Item::Enum(e) => ("the enum", e.ident.to_string(), e.enum_token.span),
        syn::Item::Fn(f) => ("a function", "OrderSummary".to_owned(), f.sig.fn_token.span),
        other => ("this item", "OrderSummary".to_owned(), other.span()),
    };
    darling::Error::custom(format!(
        "`#[projection]` goes on the `impl` block of the projection's type, not on {what}: write \
         `#[projection] impl {ty} {{ async fn on_placed(&self, event: &OrderPlaced) -> \
         Result<(), MyError> {{ .. }} }}`, one method per event type"
    ))
    .with_span(&span)
}
