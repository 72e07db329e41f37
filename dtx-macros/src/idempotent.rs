//! `#[idempotent]` on an async fn: parse, validate, expand.
//!
//! The function keeps its signature; its body runs inside `dtx::__private::idempotent`, which
//! claims the key, replays a stored result, or runs the body and stores its `Ok` value.

use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use std::collections::BTreeSet;
use syn::spanned::Spanned;

/// `#[idempotent(..)]`'s options.
#[derive(FromMeta)]
struct Args {
    key: Option<syn::Expr>,
    ttl_secs: Option<SpannedValue<u64>>,
    lock_timeout_secs: Option<SpannedValue<u64>>,
    store: Option<syn::Expr>,
    scope: Option<syn::Expr>,
    fingerprint: Option<syn::Expr>,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

/// The validated model the expansion is built from.
struct Model {
    krate: syn::Path,
    f: syn::ItemFn,
    key: syn::Expr,
    output: syn::Type,
    ttl_secs: Option<u64>,
    lock_timeout_secs: Option<u64>,
    store: Option<syn::Expr>,
    scope: Option<syn::Expr>,
    fingerprint: Option<syn::Expr>,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(model) => generate(&model),
        Err(errors) => fallback(item, &errors),
    }
}

/// On error: the errors, and the user's function unchanged, so its callers keep compiling.
fn fallback(item: TokenStream, errors: &darling::Error) -> TokenStream {
    crate::common::fallback(item, errors, &[])
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<Model> {
    let mut errors = darling::Error::accumulator();
    let args = errors.handle(crate::common::options::<Args>(args));
    let Ok(f) = syn::parse2::<syn::ItemFn>(item.clone()) else {
        let span = syn::parse2::<syn::Item>(item).map_or_else(|_| Span::call_site(), |i| i.span());
        errors.push(
            darling::Error::custom(
                "`#[idempotent]` goes on an `async fn` whose result is stored and replayed",
            )
            .with_span(&span),
        );
        return Err(errors.finish().expect_err("an error was pushed"));
    };
    let Some(args) = args else {
        return Err(errors.finish().expect_err("argument errors were reported"));
    };
    let (key, output) = validate(&args, &f, &mut errors);
    errors.finish()?;
    Ok(Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        key: key.expect("key errors were reported"),
        output: output.expect("return type errors were reported"),
        ttl_secs: args.ttl_secs.map(|v| *v),
        lock_timeout_secs: args.lock_timeout_secs.map(|v| *v),
        store: args.store,
        scope: args.scope,
        fingerprint: args.fingerprint,
        f,
    })
}

/// Cross-option rules, every broken one reported.
fn validate(
    args: &Args,
    f: &syn::ItemFn,
    errors: &mut darling::error::Accumulator,
) -> (Option<syn::Expr>, Option<syn::Type>) {
    if f.sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(
                "`#[idempotent]` needs an `async fn`: claiming the key and storing the result are \
                 asynchronous, and a duplicate call waits for the first; write `async fn ..`",
            )
            .with_span(&f.sig.fn_token),
        );
    }
    for (name, value) in [
        ("ttl_secs", &args.ttl_secs),
        ("lock_timeout_secs", &args.lock_timeout_secs),
    ] {
        if let Some(value) = value
            && **value == 0
        {
            errors.push(
                darling::Error::custom(format!(
                    "`{name} = 0` would expire every record at once; use at least 1"
                ))
                .with_span(&value.span()),
            );
        }
    }
    let arguments = argument_names(&f.sig);
    let listed = || {
        if arguments.is_empty() {
            "the function has no arguments".to_owned()
        } else {
            let names: Vec<String> = arguments.iter().map(|a| format!("`{a}`")).collect();
            format!("its arguments are {}", names.join(", "))
        }
    };
    let key = match &args.key {
        None => {
            errors.push(darling::Error::custom(format!(
                "`#[idempotent]` needs `key = <expression over the arguments>`, e.g. \
                 `#[idempotent(key = order.id)]`; {}",
                listed()
            )));
            None
        }
        Some(key) => {
            if !names_any(key.to_token_stream(), &arguments) {
                errors.push(
                    darling::Error::custom(format!(
                        "the key names none of the function's arguments ({}): a key that does not \
                         depend on them makes every call after the first return the first call's result",
                        listed()
                    ))
                    .with_span(key),
                );
            }
            Some(key.clone())
        }
    };
    let output = match &f.sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            errors.push(
                darling::Error::custom(
                    "an idempotent function returns `Result<T, E>`: its `Ok` value is stored and \
                     replayed; add the return type",
                )
                .with_span(&f.sig.ident),
            );
            None
        }
    };
    (key, output)
}

/// The names an argument list binds, `self` included.
fn argument_names(sig: &syn::Signature) -> BTreeSet<String> {
    fn walk(pat: &syn::Pat, names: &mut BTreeSet<String>) {
        match pat {
            syn::Pat::Ident(p) => {
                names.insert(p.ident.to_string());
                if let Some((_, sub)) = &p.subpat {
                    walk(sub, names);
                }
            }
            syn::Pat::Reference(p) => walk(&p.pat, names),
            syn::Pat::Tuple(p) => p.elems.iter().for_each(|p| walk(p, names)),
            syn::Pat::TupleStruct(p) => p.elems.iter().for_each(|p| walk(p, names)),
            syn::Pat::Struct(p) => p.fields.iter().for_each(|f| walk(&f.pat, names)),
            syn::Pat::Slice(p) => p.elems.iter().for_each(|p| walk(p, names)),
            syn::Pat::Type(p) => walk(&p.pat, names),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(_) => {
                names.insert("self".to_owned());
            }
            syn::FnArg::Typed(arg) => walk(&arg.pat, &mut names),
        }
    }
    names
}

/// Whether any identifier in `tokens` (groups, macro arguments and inline format arguments
/// such as `format!("{id}")` included) is an argument.
fn names_any(tokens: TokenStream, arguments: &BTreeSet<String>) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => arguments.contains(&ident.to_string()),
        TokenTree::Group(group) => names_any(group.stream(), arguments),
        TokenTree::Literal(literal) => {
            let text = literal.to_string();
            text.starts_with('"')
                && arguments.iter().any(|name| {
                    text.contains(&format!("{{{name}}}")) || text.contains(&format!("{{{name}:"))
                })
        }
        TokenTree::Punct(_) => false,
    })
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        krate,
        f,
        key,
        output,
        ..
    } = model;
    let name = f.sig.ident.to_string();
    let call = syn::Ident::new("__dtx_call", Span::mixed_site());
    let store = model.store.as_ref().map_or_else(
        || quote!(#krate::__private::default_idempotency_store()),
        |store| quote_spanned!(store.span()=> #krate::__private::idempotency_store(&(#store))),
    );
    let optional = |value: Option<TokenStream>| {
        value.map_or_else(
            || quote!(::core::option::Option::None),
            |value| quote!(::core::option::Option::Some(#value)),
        )
    };
    let scope = optional(
        model
            .scope
            .as_ref()
            .map(|s| quote_spanned!(s.span()=> #krate::__private::idempotency_text(&(#s)))),
    );
    let fingerprint = model.fingerprint.as_ref().map_or_else(
        || quote!(::core::option::Option::None),
        |e| quote_spanned!(e.span()=> #krate::__private::idempotency_fingerprint(&(#e))),
    );
    let ttl = optional(
        model
            .ttl_secs
            .map(|s| quote!(::core::time::Duration::from_secs(#s))),
    );
    let lock_timeout = optional(
        model
            .lock_timeout_secs
            .map(|s| quote!(::core::time::Duration::from_secs(#s))),
    );
    let key_text = quote_spanned!(key.span()=> #krate::__private::idempotency_text(&(#key)));
    let block = &f.block;
    // The runner checks the return type, under its span: a type that cannot be stored is
    // reported there, once.
    let runner =
        quote_spanned!(output.span()=> #krate::__private::idempotent_runner::<#output, _, _>().run);
    let run = quote! {
        #runner(#store, #call, async move #block).await
    };
    let body = quote! {
        {
            let #call = #krate::__private::IdempotentCall {
                function: ::core::concat!(::core::module_path!(), "::", #name),
                scope: #scope,
                key: #key_text,
                fingerprint: #fingerprint,
                ttl: #ttl,
                lock_timeout: #lock_timeout,
            };
            #run
        }
    };
    let syn::ItemFn {
        attrs, vis, sig, ..
    } = f;
    quote! {
        #(#attrs)*
        #vis #sig #body
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
    }

    #[test]
    fn expansion() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(key = order.id, ttl_secs = 3600),
            quote! {
                pub async fn charge(order: &Order, amount: u64) -> Result<Receipt, PaymentError> {
                    payments.charge(order, amount).await
                }
            },
        )));
    }

    #[test]
    fn expansion_with_every_option() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(
                key = cmd.request_id,
                scope = cmd.tenant,
                fingerprint = (&cmd.items, cmd.total),
                store = self.idempotency,
                lock_timeout_secs = 30,
                crate = ::my_dtx,
            ),
            quote! {
                async fn place(&self, cmd: PlaceOrder) -> Result<OrderId, OrderError> {
                    self.orders.place(cmd).await
                }
            },
        )));
    }
}
