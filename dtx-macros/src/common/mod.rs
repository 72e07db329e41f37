//! Helpers shared by every macro: the runtime crate path, the generated-block wrapper and
//! name helpers; [`event_handlers`] for the macros on blocks of event handlers.

pub(crate) mod event_handlers;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::{ToTokens, quote};

/// The path generated code uses to reach the runtime: `::dtx` unless `crate = path` is given.
pub(crate) fn crate_path(custom: Option<&syn::Path>) -> syn::Path {
    custom.cloned().unwrap_or_else(|| syn::parse_quote!(::dtx))
}

/// `HTTPRequest` as `http_request`: the snake-case form of a Rust identifier, for names derived
/// from it (`r#` dropped).
pub(crate) fn snake_case(ident: &syn::Ident) -> String {
    use heck::ToSnakeCase as _;
    use syn::ext::IdentExt as _;
    ident.unraw().to_string().to_snake_case()
}

/// `HTTPRequest` as `HTTP_REQUEST`, for generated constant names.
pub(crate) fn shouty_snake_case(ident: &syn::Ident) -> String {
    use heck::ToShoutySnakeCase as _;
    use syn::ext::IdentExt as _;
    ident.unraw().to_string().to_shouty_snake_case()
}

/// The `key = value` options of a helper attribute (`#[aggregate(..)]`), read leniently for
/// the stand-ins emitted on error: whatever does not parse is skipped (it was reported).
pub(crate) fn lenient_options(attrs: &[syn::Attribute], helper: &str) -> Vec<syn::MetaNameValue> {
    use syn::punctuated::Punctuated;
    attrs
        .iter()
        .filter(|a| a.path().is_ident(helper))
        .filter_map(|a| {
            a.parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .filter_map(|meta| match meta {
            syn::Meta::NameValue(nv) => Some(nv),
            _ => None,
        })
        .collect()
}

/// The path given to option `key` among `options` (`event = OrderEvent`, `crate = ::dtx`).
pub(crate) fn lenient_path(options: &[syn::MetaNameValue], key: &str) -> Option<syn::Path> {
    options
        .iter()
        .filter(|nv| nv.path.is_ident(key))
        .find_map(|nv| syn::parse2(nv.value.to_token_stream()).ok())
}

/// The text given to option `key` among `options` (`name = "Order"`).
pub(crate) fn lenient_text(options: &[syn::MetaNameValue], key: &str) -> Option<String> {
    options
        .iter()
        .filter(|nv| nv.path.is_ident(key))
        .find_map(|nv| match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(text),
                ..
            }) => Some(text.value()),
            _ => None,
        })
}

/// The boolean given to option `key` among `options` (`payload_impl = false`).
pub(crate) fn lenient_bool(options: &[syn::MetaNameValue], key: &str) -> Option<bool> {
    options
        .iter()
        .filter(|nv| nv.path.is_ident(key))
        .find_map(|nv| match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Bool(value),
                ..
            }) => Some(value.value),
            _ => None,
        })
}

/// Tokens as a user writes them: `&'static str`, not `& 'static str`.
pub(crate) fn display(tokens: &impl ToTokens) -> String {
    let mut out = String::new();
    write_tokens(&mut out, tokens.to_token_stream());
    out.trim_end().to_owned()
}

fn write_tokens(out: &mut String, tokens: TokenStream) {
    let mut after_word = false;
    for token in tokens {
        let word = matches!(token, TokenTree::Ident(_) | TokenTree::Literal(_));
        match token {
            TokenTree::Ident(_) | TokenTree::Literal(_) => {
                if after_word {
                    out.push(' ');
                }
                out.push_str(&token.to_string());
            }
            TokenTree::Punct(punct) => match (punct.as_char(), punct.spacing()) {
                (',' | ';', _) => {
                    out.push(punct.as_char());
                    out.push(' ');
                }
                (':', Spacing::Alone) if !out.ends_with(':') => out.push_str(": "),
                ('+' | '=', _) => {
                    out.push(' ');
                    out.push(punct.as_char());
                    out.push(' ');
                }
                ('-', Spacing::Joint) => out.push_str(" -"),
                ('>', _) if out.ends_with('-') => out.push_str("> "),
                (c, _) => out.push(c),
            },
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(out, group.stream());
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push_str(close);
            }
        }
        after_word = word;
    }
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
    fallback_with(item, errors, helpers, None)
}

/// [`fallback`] plus `stubs`: stand-ins for the trait impls the macro would have generated, so
/// code that relies on them reports nothing more and the user sees the macro's errors alone.
pub(crate) fn fallback_with(
    item: TokenStream,
    errors: &darling::Error,
    helpers: &[&str],
    stubs: Option<TokenStream>,
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
    tokens.extend(stubs.map(|stubs| dummy_const(&stubs)));
    tokens
}

/// What a derive emits on error: the errors, each at its own span, and `stubs` standing in for
/// the impls it would have generated (the item itself stays, as for every derive).
pub(crate) fn derive_fallback(errors: darling::Error, stubs: Option<TokenStream>) -> TokenStream {
    let mut tokens = errors.write_errors();
    tokens.extend(stubs.map(|stubs| dummy_const(&stubs)));
    tokens
}

/// Parses an attribute macro's options (`#[macro(a = 1, b)]`) into `A`.
pub(crate) fn options<A: darling::FromMeta>(args: TokenStream) -> darling::Result<A> {
    darling::ast::NestedMeta::parse_meta_list(args)
        .map_err(darling::Error::from)
        .and_then(|list| A::from_list(&list))
}

/// The plain identifiers a signature binds, with their types (`self` excluded).
pub(crate) fn typed_arguments(sig: &syn::Signature) -> Vec<(syn::Ident, syn::Type)> {
    sig.inputs
        .iter()
        .filter_map(|input| match input {
            syn::FnArg::Typed(arg) => match &*arg.pat {
                syn::Pat::Ident(p) => Some((p.ident.clone(), (*arg.ty).clone())),
                _ => None,
            },
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The return type, when it can be written on a closure or a `let` (no `impl Trait`, `Self`
/// or borrowed lifetimes that elision would resolve differently there).
pub(crate) fn nameable(output: &syn::ReturnType) -> Option<&syn::Type> {
    fn plain(tokens: TokenStream) -> bool {
        tokens.into_iter().all(|token| match token {
            proc_macro2::TokenTree::Ident(i) => i != "impl" && i != "Self",
            proc_macro2::TokenTree::Punct(p) => p.as_char() != '&' && p.as_char() != '\'',
            proc_macro2::TokenTree::Group(g) => plain(g.stream()),
            proc_macro2::TokenTree::Literal(_) => true,
        })
    }
    match output {
        syn::ReturnType::Type(_, ty) if plain(ty.to_token_stream()) => Some(ty),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use quote::format_ident;

    #[test]
    fn names_keep_acronyms_whole() {
        let cases = [
            ("HTTPRequest", "http_request", "HTTP_REQUEST"),
            ("Order", "order", "ORDER"),
            ("OrderLine", "order_line", "ORDER_LINE"),
            ("place_order", "place_order", "PLACE_ORDER"),
            ("IOError2", "io_error2", "IO_ERROR2"),
        ];
        for (ident, snake, shouty) in cases {
            let ident = format_ident!("{ident}");
            assert_eq!(super::snake_case(&ident), snake);
            assert_eq!(super::shouty_snake_case(&ident), shouty);
        }
        assert_eq!(super::snake_case(&syn::parse_quote!(r#Type)), "type");
    }
}
