//! `#[trace]` on a fn, async fn or method: parse, validate, expand.
//!
//! The function keeps its signature; its body runs inside a `tracing` span named after the
//! function that records only the listed arguments, and its result goes to
//! `dtx::__private::trace_finish`, which records an `Err` on the span and the function's
//! duration and error metrics.

use darling::FromMeta;
use darling::util::{PathList, SpannedValue};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use std::collections::BTreeSet;
use syn::spanned::Spanned;

/// `#[trace(..)]`'s options.
#[derive(FromMeta, Default)]
struct Args {
    name: Option<SpannedValue<String>>,
    #[darling(default)]
    fields: PathList,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

/// The validated model the expansion is built from.
struct Model {
    krate: syn::Path,
    f: syn::ItemFn,
    name: String,
    fields: Vec<syn::Ident>,
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
            darling::Error::custom("`#[dtx::trace]` goes on a `fn` or `async fn` (free or method)")
                .with_span(&span),
        );
        return Err(errors.finish().expect_err("an error was pushed"));
    };
    let Some(args) = args else {
        return Err(errors.finish().expect_err("argument errors were reported"));
    };
    let fields = validate(&args, &f, &mut errors);
    errors.finish()?;
    Ok(Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        name: args
            .name
            .map_or_else(|| f.sig.ident.to_string(), |n| (*n).clone()),
        fields,
        f,
    })
}

/// Every broken rule reported: a `fields` entry must be one of the function's arguments.
fn validate(
    args: &Args,
    f: &syn::ItemFn,
    errors: &mut darling::error::Accumulator,
) -> Vec<syn::Ident> {
    if let Some(name) = &args.name
        && name.trim().is_empty()
    {
        errors.push(
            darling::Error::custom("a span needs a name: `name = \"..\"` is empty")
                .with_span(&name.span()),
        );
    }
    if let Some(constness) = &f.sig.constness {
        errors.push(
            darling::Error::custom(
                "`#[dtx::trace]` cannot trace a `const fn`: spans and clocks are not const; remove `const`",
            )
            .with_span(constness),
        );
    }
    let arguments: BTreeSet<String> = crate::common::typed_arguments(&f.sig)
        .into_iter()
        .map(|(ident, _)| ident.to_string())
        .collect();
    let mut fields = Vec::new();
    let mut seen = BTreeSet::new();
    for path in args.fields.iter() {
        let ident = path
            .get_ident()
            .filter(|i| arguments.contains(&i.to_string()));
        match ident {
            Some(ident) if !seen.insert(ident.to_string()) => errors.push(
                darling::Error::custom(format!("`{ident}` is listed twice in `fields`"))
                    .with_span(path),
            ),
            Some(ident) => fields.push(ident.clone()),
            None => {
                let listed = if arguments.is_empty() {
                    "the function has no arguments that can be recorded".to_owned()
                } else {
                    let names: Vec<String> = arguments.iter().map(|a| format!("`{a}`")).collect();
                    format!("its arguments are {}", names.join(", "))
                };
                errors.push(
                    darling::Error::custom(format!(
                        "`{}` names no argument of `{}`: `fields(..)` lists arguments to record \
                         on the span ({listed})",
                        path.to_token_stream(),
                        f.sig.ident,
                    ))
                    .with_span(path),
                );
            }
        }
    }
    fields
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        krate,
        f,
        name,
        fields,
    } = model;
    let span = syn::Ident::new("__dtx_span", Span::mixed_site());
    let start = syn::Ident::new("__dtx_start", Span::mixed_site());
    let ret = syn::Ident::new("__dtx_ret", Span::mixed_site());
    let entered = syn::Ident::new("__dtx_entered", Span::mixed_site());
    let recorded = fields.iter().map(|field| quote!(#field = ?#field));
    let block = &f.block;
    let annotated = crate::common::nameable(&f.sig.output).map(|ty| quote!(: #ty));
    let run = if f.sig.asyncness.is_some() {
        quote! {
            #krate::__private::tracing::Instrument::instrument(
                async move {
                    let #ret #annotated = #block;
                    #ret
                },
                ::core::clone::Clone::clone(&#span),
            )
            .await
        }
    } else {
        let returns = crate::common::nameable(&f.sig.output).map(|ty| quote!(-> #ty));
        quote! {
            {
                let #entered = #span.enter();
                #[allow(clippy::redundant_closure_call)]
                (move || #returns #block)()
            }
        }
    };
    let body = quote! {
        {
            let #span = #krate::__private::tracing::info_span!(
                #name,
                #(#recorded,)*
                error = #krate::__private::tracing::field::Empty,
                exception.message = #krate::__private::tracing::field::Empty,
                otel.status_code = #krate::__private::tracing::field::Empty,
                otel.status_description = #krate::__private::tracing::field::Empty,
            );
            let #start = #krate::__private::trace_start();
            let #ret = #run;
            #krate::__private::trace_finish(
                &#span,
                #name,
                #start,
                (&&&#krate::__private::TraceOutcome(&#ret)).__dtx_error(),
            );
            #ret
        }
    };
    let syn::ItemFn {
        attrs, vis, sig, ..
    } = f;
    quote! {
        #(#attrs)*
        #vis #sig {
            #[allow(unused_imports)]
            use #krate::__private::{TraceDebugError as _, TraceDisplayError as _, TraceNoError as _};
            #body
        }
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
    fn expansion_async() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(fields(order_id)),
            quote! {
                pub async fn charge(order_id: u64, card: &Card) -> Result<Receipt, PaymentError> {
                    payments.charge(order_id, card).await
                }
            },
        )));
    }

    #[test]
    fn expansion_sync_named() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(name = "pricing.quote", crate = ::my_dtx),
            quote! {
                fn quote(&self, sku: &str) -> u64 {
                    self.prices[sku]
                }
            },
        )));
    }
}
