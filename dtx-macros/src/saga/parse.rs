//! Parse: `#[saga(..)]`'s options and the `impl` block with its `#[step(..)]` methods, as
//! written. Malformed options are reported here; rules across them are checked in `validate`.

use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::TokenStream;
use syn::spanned::Spanned;

/// `#[saga(..)]`.
#[derive(FromMeta, Default)]
pub(super) struct Args {
    pub(super) name: Option<SpannedValue<String>>,
    pub(super) version: Option<SpannedValue<u32>>,
    pub(super) max_retries: Option<u32>,
    pub(super) step_timeout_secs: Option<u64>,
    pub(super) deadline_secs: Option<u64>,
    #[darling(rename = "crate")]
    pub(super) krate: Option<syn::Path>,
}

/// `#[step(..)]` on a method.
#[derive(FromMeta, Default)]
pub(super) struct StepArgs {
    pub(super) name: Option<SpannedValue<String>>,
    pub(super) compensate: Option<syn::Ident>,
    pub(super) retries: Option<u32>,
    pub(super) await_event: Option<SpannedValue<String>>,
    pub(super) await_timeout_secs: Option<SpannedValue<u64>>,
}

/// The parsed input: the `impl` block as written, and its steps in order.
pub(super) struct Input {
    pub(super) args: Args,
    /// The block, with its `#[step]` attributes still on.
    pub(super) item: syn::ItemImpl,
    pub(super) steps: Vec<RawStep>,
}

/// A method marked `#[step]`, with its options.
pub(super) struct RawStep {
    /// The method's index among the block's items.
    pub(super) index: usize,
    /// `None` if they did not parse (reported): the step's other rules are not checked then.
    pub(super) args: Option<StepArgs>,
}

impl Input {
    /// The step method at `index` among the block's items.
    pub(super) fn method(&self, index: usize) -> &syn::ImplItemFn {
        match &self.item.items[index] {
            syn::ImplItem::Fn(f) => f,
            _ => unreachable!("steps index methods"),
        }
    }

    /// The method named `name`, if the block has one.
    pub(super) fn find(&self, name: &syn::Ident) -> Option<&syn::ImplItemFn> {
        self.item.items.iter().find_map(|i| match i {
            syn::ImplItem::Fn(f) if f.sig.ident == *name => Some(f),
            _ => None,
        })
    }

    /// The name workers resume the saga by: `name = ".."`, else the data type's name.
    pub(super) fn name(&self) -> String {
        match &self.args.name {
            Some(name) => (**name).clone(),
            None => match &*self.item.self_ty {
                syn::Type::Path(p) => p
                    .path
                    .segments
                    .last()
                    .map(|s| s.ident.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            },
        }
    }
}

/// Whether a method is marked `#[step]`.
pub(super) fn is_step(f: &syn::ImplItemFn) -> bool {
    f.attrs.iter().any(|a| a.path().is_ident("step"))
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
    let item = match errors.handle(syn::parse2::<syn::Item>(item).map_err(darling::Error::from))? {
        syn::Item::Impl(imp) => imp,
        other => {
            errors.push(not_an_impl(&other));
            return None;
        }
    };
    let mut steps = Vec::new();
    for (index, member) in item.items.iter().enumerate() {
        let syn::ImplItem::Fn(f) = member else {
            continue;
        };
        let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("step")) else {
            continue;
        };
        let args = match &attr.meta {
            syn::Meta::Path(_) => Some(StepArgs::default()),
            meta => errors.handle(meta.require_list().map_err(darling::Error::from).and_then(
                |l| StepArgs::from_list(&NestedMeta::parse_meta_list(l.tokens.clone())?),
            )),
        };
        steps.push(RawStep { index, args });
    }
    Some(Input { args, item, steps })
}

/// `#[saga]` on something other than an `impl` block.
fn not_an_impl(item: &syn::Item) -> darling::Error {
    let (what, data, span) = match item {
        syn::Item::Struct(s) => ("the struct", s.ident.to_string(), s.struct_token.span),
        syn::Item::Enum(e) => ("the enum", e.ident.to_string(), e.enum_token.span),
        syn::Item::Fn(f) => ("a function", "Data".to_owned(), f.sig.fn_token.span),
        other => ("this item", "Data".to_owned(), other.span()),
    };
    darling::Error::custom(format!(
        "`#[saga]` goes on the `impl` block of the saga's data, not on {what}: write `#[saga] \
         impl {data} {{ #[step] async fn first_step(&mut self, ..) .. }}`"
    ))
    .with_span(&span)
}
