//! Parse: `#[consumer(..)]`'s options and the `impl` block, as written. Malformed options are
//! reported here; the rules across them and the methods are checked in `validate`.

use crate::common::event_handlers::{self, Kind, Name};
use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::TokenStream;

/// `#[consumer(..)]`.
#[derive(FromMeta, Default)]
pub(super) struct Args {
    pub(super) name: Option<SpannedValue<Name>>,
    #[darling(rename = "crate")]
    pub(super) krate: Option<syn::Path>,
    /// A projection's option, read only to say that a consumer has none.
    pub(super) subscription: Option<syn::Meta>,
    /// A projection's option, read only to say that a consumer has none.
    pub(super) version: Option<syn::Meta>,
}

/// The parsed input: the options and the `impl` block as written.
pub(super) struct Input {
    pub(super) args: Args,
    pub(super) item: syn::ItemImpl,
}

impl Input {
    /// The consumer's name: `name = ".."`, else the type's name in snake case.
    pub(super) fn name(&self) -> String {
        event_handlers::resolved_name(self.args.name.as_ref(), &self.item)
    }
}

/// Parses the options and the item; `None` if the item is not an `impl` block (reported).
pub(super) fn parse(
    args: TokenStream,
    item: TokenStream,
    errors: &mut darling::error::Accumulator,
) -> Option<Input> {
    event_handlers::parse(Kind::Consumer, args, item, errors)
        .map(|(args, item)| Input { args, item })
}
