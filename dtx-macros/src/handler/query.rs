//! `#[query_handler]` on an async fn, with an optional result cache.

use super::command::item_keyword;
use super::signature::{self, Signature, Site};
use super::{Kind, fallback, runtime_call};
use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// `#[query_handler(..)]`.
#[derive(FromMeta, Default)]
struct Args {
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
    cache: Option<CacheArgs>,
}

/// `cache(ttl_secs = .., ttl_ms = .., capacity = ..)`.
#[derive(FromMeta, Default)]
struct CacheArgs {
    ttl_secs: Option<SpannedValue<u64>>,
    ttl_ms: Option<SpannedValue<u64>>,
    capacity: Option<SpannedValue<u64>>,
}

/// The default time to live of a cached result.
const DEFAULT_TTL_MS: u64 = 60_000;
/// The default number of cached results.
const DEFAULT_CAPACITY: u64 = 10_000;

/// A validated `#[query_handler]`.
struct Model {
    krate: syn::Path,
    item: syn::ItemFn,
    sig: Signature,
    cache: Option<Cache>,
}

/// A validated `cache(..)`.
struct Cache {
    ttl_ms: u64,
    capacity: u64,
    /// The `cache` option, where a query or output that cannot be cached is reported.
    span: Span,
}

pub(super) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(model) => expand_model(&model),
        Err(errors) => fallback(item, &errors),
    }
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<Model> {
    let mut errors = darling::Error::accumulator();
    let list = errors
        .handle(NestedMeta::parse_meta_list(args).map_err(darling::Error::from))
        .unwrap_or_default();
    let args = errors.handle(Args::from_list(&list)).unwrap_or_default();
    let krate = crate::common::crate_path(args.krate.as_ref());
    let cache = args.cache.as_ref().and_then(|cache| {
        let span = list.iter().find_map(|nested| match nested {
            NestedMeta::Meta(meta) if meta.path().is_ident("cache") => Some(meta.path().span()),
            _ => None,
        });
        cache_policy(cache, span.unwrap_or_else(Span::call_site), &mut errors)
    });
    let item = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Fn(item) => item,
        other => {
            let mut text =
                "`#[query_handler]` goes on an `async fn` answering one query".to_owned();
            if matches!(other, syn::Item::Impl(_)) {
                text.push_str(": put it on a free `async fn`, outside the `impl` block");
            }
            errors.push(darling::Error::custom(text).with_span(&item_keyword(&other)));
            return Err(errors.finish().expect_err("an error was pushed"));
        }
    };
    if item.sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "a query handler must be an `async fn`: write `async fn {}(..)`",
                item.sig.ident,
            ))
            .with_span(&item.sig.fn_token),
        );
    }
    let sig = signature::analyse(Site::Free(Kind::Query), &item.sig, &mut errors);
    errors.finish()?;
    Ok(Model {
        krate,
        item,
        sig: sig.expect("signature errors were reported"),
        cache,
    })
}

/// The cache policy `cache(..)` asks for, or `None` if it is contradictory (reported).
fn cache_policy(
    cache: &CacheArgs,
    span: Span,
    errors: &mut darling::error::Accumulator,
) -> Option<Cache> {
    let ttl_ms = match (&cache.ttl_secs, &cache.ttl_ms) {
        (Some(_), Some(ms)) => {
            errors.push(
                darling::Error::custom(
                    "the TTL is given twice; keep one of `ttl_secs` and `ttl_ms`",
                )
                .with_span(&ms.span()),
            );
            return None;
        }
        (Some(secs), None) => Some((secs.saturating_mul(1000), secs.span())),
        (None, Some(ms)) => Some((**ms, ms.span())),
        (None, None) => None,
    };
    let mut valid = true;
    if let Some((0, span)) = ttl_ms {
        errors.push(
            darling::Error::custom(
                "a cache TTL of 0 caches nothing; give a positive TTL, or remove `cache(..)`",
            )
            .with_span(&span),
        );
        valid = false;
    }
    if let Some(capacity) = cache.capacity.as_ref().filter(|c| ***c == 0) {
        errors.push(
            darling::Error::custom(
                "a cache capacity of 0 caches nothing; give a positive capacity, or remove \
                 `cache(..)`",
            )
            .with_span(&capacity.span()),
        );
        valid = false;
    }
    valid.then(|| Cache {
        ttl_ms: ttl_ms.map_or(DEFAULT_TTL_MS, |(ttl, _)| ttl),
        capacity: cache
            .capacity
            .as_deref()
            .copied()
            .unwrap_or(DEFAULT_CAPACITY),
        span,
    })
}

fn expand_model(model: &Model) -> TokenStream {
    let Model {
        krate,
        item,
        sig,
        cache,
    } = model;
    let Signature {
        ident,
        message,
        output,
        ..
    } = sig;
    let query = &message.ty;
    let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
    let (lets, extras) = signature::extras(sig, &ctx, false);
    let pass = if message.by_ref {
        quote!(&__dtx_query)
    } else {
        quote!(__dtx_query)
    };
    let result = runtime_call(
        krate,
        output.span(),
        &quote!(query_result::<#query, _>),
        quote!(#ident(#pass #(, #extras)*).await),
    );
    // Bound at the `cache` option when there is one: rustc reports a query or output that
    // cannot be cached there.
    let run = syn::Ident::new(
        "__dtx_run",
        cache
            .as_ref()
            .map_or_else(Span::call_site, |cache| cache.span),
    );
    let build = if let Some(cache) = cache {
        let ttl_ms = Literal::u64_unsuffixed(cache.ttl_ms);
        let capacity = Literal::u64_unsuffixed(cache.capacity);
        runtime_call(
            krate,
            cache.span,
            &quote!(cached_handler),
            quote!(#krate::__private::cache_policy(#ttl_ms, #capacity), #run),
        )
    } else {
        quote!(#krate::__private::uncached(#run))
    };
    let (states_fn, states) = signature::states(krate, sig, &format_ident!("__dtx_states"));
    let line = quote_spanned!(ident.span()=> ::core::line!());
    let handler = format!("::{ident}");
    let query_impl =
        super::message_impl(krate, &quote!(Query), query, &super::ok_type(krate, output));
    let generated = crate::common::dummy_const(&quote! {
        #query_impl
        fn __dtx_handler() -> #krate::__private::BoxedQueryHandler {
            let #run = #krate::__private::query_fn(
                |__dtx_query: #query, #ctx: #krate::cqrs::QueryContext| async move {
                    #(#lets)*
                    #result
                },
            );
            #build
        }
        #states_fn
        const __DTX_REGISTRATION: #krate::cqrs::QueryRegistration = #krate::cqrs::QueryRegistration {
            query: ::core::any::TypeId::of::<#query>,
            query_name: #krate::__private::type_name::<#query>,
            location: #krate::cqrs::Location {
                file: ::core::file!(),
                line: #line,
                handler: ::core::concat!(::core::module_path!(), #handler),
            },
            states: #states,
            handler: __dtx_handler,
        };
        #krate::__private::inventory::submit!(__DTX_REGISTRATION);
    });
    quote! {
        #item
        #generated
    }
}
