//! Parse: `#[projection(..)]`'s options and the `impl` block, as written. Malformed options are
//! reported here; the rules across them and the methods are checked in `validate`.

use crate::common::event_handlers::{self, Kind, Name};
use darling::FromMeta;
use darling::util::{Flag, SpannedValue};
use proc_macro2::TokenStream;

/// `#[projection(..)]`.
#[derive(FromMeta, Default)]
pub(super) struct Args {
    pub(super) name: Option<SpannedValue<Name>>,
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
    /// Which kind of event-handler block this is.
    pub(super) fn kind(&self) -> Kind {
        Kind::Projection {
            subscription: self.args.subscription.is_present(),
        }
    }

    /// The checkpoint name: `name = ".."`, else the type's name in snake case.
    pub(super) fn name(&self) -> String {
        event_handlers::resolved_name(self.args.name.as_ref(), &self.item)
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
    let kind = Kind::Projection {
        subscription: false,
    };
    event_handlers::parse(kind, args, item, errors).map(|(args, item)| Input { args, item })
}
