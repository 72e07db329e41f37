//! Helpers shared by every macro: the runtime crate path, the generated-block wrapper and
//! name helpers.

use proc_macro2::TokenStream;
use quote::quote;

/// The path generated code uses to reach the runtime: `::dtx` unless `crate = path` is given.
pub(crate) fn crate_path(custom: Option<&syn::Path>) -> syn::Path {
    custom.cloned().unwrap_or_else(|| syn::parse_quote!(::dtx))
}

/// Wraps generated items in one hidden `const _: () = { .. };` block.
pub(crate) fn dummy_const(items: &TokenStream) -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(
            non_upper_case_globals,
            unused_attributes,
            unused_qualifications,
            clippy::absolute_paths,
            clippy::used_underscore_binding,
        )]
        const _: () = {
            #items
        };
    }
}

/// Turns accumulated errors into `compile_error!` invocations, each at its own span.
pub(crate) fn errors(error: darling::Error) -> TokenStream {
    error.write_errors()
}

/// A stable 64-bit FNV-1a hash, used for state-schema fingerprints.
pub(crate) fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Gives every token the span `span`, so rustc attributes them to the user's code rather than
/// to the derive (used where a derive-spanned token would make rustc suggest implementing a
/// hidden trait by hand).
pub(crate) fn respan(tokens: impl quote::ToTokens, span: proc_macro2::Span) -> TokenStream {
    use proc_macro2::{Group, TokenTree};
    tokens
        .into_token_stream()
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// Removes dtx's helper attributes (`#[command]`, `#[step]`, ...) from the methods of an `impl`.
pub(crate) fn strip_method_attributes(imp: &mut syn::ItemImpl, helpers: &[&str]) {
    for member in &mut imp.items {
        if let syn::ImplItem::Fn(f) = member {
            f.attrs
                .retain(|a| !helpers.iter().any(|h| a.path().is_ident(h)));
        }
    }
}

/// What an attribute macro emits on error: the errors, each at its own span, and the user's
/// item unchanged (minus dtx's helper attributes on its methods), so the rest of the crate keeps
/// compiling and the IDE keeps working.
pub(crate) fn fallback(
    item: TokenStream,
    errors: &darling::Error,
    helpers: &[&str],
) -> TokenStream {
    use quote::ToTokens;
    let mut tokens = errors.clone().write_errors();
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(mut parsed) => {
            if let syn::Item::Impl(imp) = &mut parsed {
                strip_method_attributes(imp, helpers);
            }
            parsed.to_tokens(&mut tokens);
        }
        Err(_) => tokens.extend(item),
    }
    tokens
}
