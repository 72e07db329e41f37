//! `#[query_handler]` on an async fn, with an optional result cache.

use super::signature::{self, Signature};
use super::{Kind, fallback};
use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

#[derive(FromMeta, Default)]
struct Args {
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
    cache: Option<SpannedValue<CacheArgs>>,
}

/// `cache(ttl_secs = .., ttl_ms = .., capacity = ..)`.
#[derive(FromMeta, Default)]
struct CacheArgs {
    ttl_secs: Option<u64>,
    ttl_ms: Option<u64>,
    capacity: Option<u64>,
}

pub(super) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(tokens) => tokens,
        Err(errors) => fallback(item, &errors),
    }
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<TokenStream> {
    let args = Args::from_list(&NestedMeta::parse_meta_list(args)?)?;
    let krate = crate::common::crate_path(args.krate.as_ref());
    let f = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Fn(f) => f,
        other => {
            return Err(darling::Error::custom(
                "`#[query_handler]` goes on an `async fn` answering one query",
            )
            .with_span(&other));
        }
    };
    let mut errors = darling::Error::accumulator();
    if f.sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom("a query handler must be `async fn`; write `async fn ..`")
                .with_span(&f.sig.fn_token),
        );
    }
    let policy = args.cache.as_ref().map(|cache| {
        let ttl_ms = match (cache.ttl_secs, cache.ttl_ms) {
            (Some(_), Some(_)) => {
                errors.push(
                    darling::Error::custom("give the TTL once: `ttl_secs` or `ttl_ms`")
                        .with_span(&cache.span()),
                );
                0
            }
            (Some(s), None) => s.saturating_mul(1000),
            (None, Some(ms)) => ms,
            (None, None) => 60_000,
        };
        if ttl_ms == 0 && (cache.ttl_secs.is_some() || cache.ttl_ms.is_some()) {
            errors.push(
                darling::Error::custom(
                    "a cache TTL of 0 caches nothing; remove `cache(..)` instead",
                )
                .with_span(&cache.span()),
            );
        }
        let capacity = cache.capacity.unwrap_or(10_000);
        if capacity == 0 {
            errors.push(
                darling::Error::custom(
                    "a cache capacity of 0 caches nothing; remove `cache(..)` instead",
                )
                .with_span(&cache.span()),
            );
        }
        (ttl_ms, capacity, cache.span())
    });
    let sig = signature::analyse(Kind::Query, &f.sig, false, &mut errors);
    errors.finish()?;
    let sig = sig.expect("signature errors were reported");
    let Signature { ident, message, .. } = &sig;
    let query = &message.ty;
    let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
    let (lets, extra_args) = signature::extras(&sig, &ctx, false);
    let pass = if message.by_ref {
        quote!(&__dtx_query)
    } else {
        quote!(__dtx_query)
    };
    let call = quote_spanned! {sig.output.span()=>
        #krate::__private::query_result::<#query, _>(#ident(#pass #(, #extra_args)*).await)
    };
    let run = quote! {
        #krate::__private::query_fn(|__dtx_query: #query, #ctx: #krate::cqrs::QueryContext| async move {
            #(#lets)*
            #call
        })
    };
    let build = match policy {
        Some((ttl_ms, capacity, span)) => quote_spanned! {span=>
            #krate::__private::cached_handler(#krate::__private::cache_policy(#ttl_ms, #capacity), #run)
        },
        None => quote!(#krate::__private::uncached(#run)),
    };
    let states = signature::states(&sig);
    let name = ident.to_string();
    let line = quote_spanned!(ident.span()=> ::core::line!());
    let items = quote! {
        fn __dtx_handler() -> #krate::__private::BoxedQueryHandler {
            #build
        }
        #krate::__private::inventory::submit! {
            #krate::cqrs::QueryRegistration {
                query: ::core::any::TypeId::of::<#query>,
                query_name: #krate::__private::type_name::<#query>,
                location: #krate::cqrs::Location {
                    file: ::core::file!(),
                    line: #line,
                    handler: ::core::concat!(::core::module_path!(), "::", #name),
                },
                states: {
                    fn __dtx_states() -> ::std::vec::Vec<(::core::any::TypeId, &'static str)> {
                        #states
                    }
                    __dtx_states
                },
                handler: __dtx_handler,
            }
        }
    };
    let generated = crate::common::dummy_const(&items);
    Ok(quote! {
        #f
        #generated
    })
}
