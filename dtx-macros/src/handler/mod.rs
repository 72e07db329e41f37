//! `#[command_handler]` and `#[query_handler]`: parse, validate, expand.
//!
//! Both share the signature analysis in [`signature`]; [`Kind`] tells them apart.

mod command;
mod query;
mod signature;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Which bus a handler registers with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Query,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Query => "query",
        }
    }
}

pub(crate) fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    command::expand(args, item)
}

pub(crate) fn query_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    query::expand(args, item)
}

/// On error: the errors, and the user's item unchanged (minus dtx's helper attributes), so the
/// rest of the crate keeps compiling and the IDE keeps working.
fn fallback(item: TokenStream, errors: &darling::Error) -> TokenStream {
    let mut tokens = errors.clone().write_errors();
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(mut parsed) => {
            if let syn::Item::Impl(imp) = &mut parsed {
                for member in &mut imp.items {
                    if let syn::ImplItem::Fn(f) = member {
                        f.attrs.retain(|a| !a.path().is_ident("command"));
                    }
                }
            }
            parsed.to_tokens(&mut tokens);
        }
        Err(_) => tokens.extend(item),
    }
    tokens
}
