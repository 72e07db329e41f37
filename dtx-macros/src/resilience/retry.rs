//! `#[retry]` on an async fn returning `Result`: parse, validate, expand.
//!
//! The function keeps its signature; its body runs again after a retryable error, with the
//! pauses of a `dtx::Backoff`, until it succeeds or has run `attempts` times.

use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// `#[retry(..)]`'s options.
#[derive(FromMeta)]
struct Args {
    attempts: Option<SpannedValue<u32>>,
    backoff: Option<syn::Expr>,
    when: Option<syn::Path>,
    retry_after: Option<syn::Path>,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = darling::Error::accumulator();
    let args = errors.handle(crate::common::options::<Args>(args));
    let f = super::function(item.clone(), "retry", &mut errors);
    match args.as_ref().map(|args| &args.attempts) {
        Some(Some(attempts)) if **attempts < 2 => errors.push(
            darling::Error::custom(
                "`attempts` counts every call, the first included: at least 2 for one retry \
                 (`attempts = 3` calls at most three times)",
            )
            .with_span(&attempts.span()),
        ),
        Some(None) => errors.push(darling::Error::custom(
            "how many calls in all? add `attempts = N` (the first call included): \
             `#[dtx::retry(attempts = 3)]`",
        )),
        _ => {}
    }
    match (errors.finish(), args, f) {
        (Ok(()), Some(args), Some(f)) => generate(&args, &f),
        (Err(errors), ..) => crate::common::fallback(item, &errors, &[]),
        _ => unreachable!("a missing model was reported"),
    }
}

fn generate(args: &Args, f: &syn::ItemFn) -> TokenStream {
    let krate = crate::common::crate_path(args.krate.as_ref());
    let attempts = args.attempts.as_deref().copied().unwrap_or(2);
    let backoff = args.backoff.as_ref().map_or_else(
        || quote!(#krate::Backoff::CALLS),
        |expr| quote_spanned!(expr.span()=> { let backoff: #krate::Backoff = #expr; backoff }),
    );
    let when = args.when.as_ref().map_or_else(
        || quote!(#krate::__private::every_error),
        |path| quote!(#path),
    );
    let retry_after = args.retry_after.as_ref().map_or_else(
        || quote!(#krate::__private::no_retry_after),
        |path| quote!(#path),
    );
    let name = f.sig.ident.to_string();
    let (annotated, assertion) = super::result_type(&krate, f);
    let attempts_ident = syn::Ident::new("__dtx_attempts", proc_macro2::Span::mixed_site());
    let ret = syn::Ident::new("__dtx_ret", proc_macro2::Span::mixed_site());
    let pause = syn::Ident::new("__dtx_pause", proc_macro2::Span::mixed_site());
    let block = &f.block;
    let syn::ItemFn {
        attrs, vis, sig, ..
    } = f;
    quote! {
        #(#attrs)*
        #vis #sig {
            #assertion
            let mut #attempts_ident = #krate::__private::Attempts::new(#name, #backoff, #attempts);
            loop {
                let #ret #annotated = async {
                    let #ret #annotated = #block;
                    #ret
                }
                .await;
                match #attempts_ident.pause(&#ret, #when, #retry_after) {
                    ::core::option::Option::Some(#pause) => #krate::__private::sleep(#pause).await,
                    ::core::option::Option::None => break #ret,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn expansion() {
        let tokens = super::expand(
            quote!(
                attempts = 5,
                backoff = PAYMENTS,
                when = PaymentError::is_transient
            ),
            quote! {
                async fn charge(client: &Client, amount: u64) -> Result<Receipt, PaymentError> {
                    client.charge(amount).await
                }
            },
        );
        insta::assert_snapshot!(prettyplease::unparse(
            &syn::parse2(tokens).expect("expansion parses as a file")
        ));
    }
}
