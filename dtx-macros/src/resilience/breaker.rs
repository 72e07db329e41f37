//! `#[circuit_breaker]` on an async fn returning `Result`: parse, validate, expand.
//!
//! The function keeps its signature. Its body runs only when the named breaker lets the call
//! through; otherwise it returns `Err(E::from(BreakerOpen))` at once. Its result is recorded.

use darling::FromMeta;
use darling::util::SpannedValue;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// `#[circuit_breaker(..)]`'s options.
#[derive(FromMeta)]
struct Args {
    name: SpannedValue<String>,
    failure_threshold: Option<SpannedValue<u32>>,
    failure_rate: Option<SpannedValue<f64>>,
    window_secs: Option<SpannedValue<u64>>,
    minimum_calls: Option<SpannedValue<u32>>,
    open_secs: Option<u64>,
    half_open_probes: Option<SpannedValue<u32>>,
    is_failure: Option<syn::Path>,
    registry: Option<syn::Expr>,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = darling::Error::accumulator();
    let args = errors.handle(crate::common::options::<Args>(args));
    let f = super::function(item.clone(), "circuit_breaker", &mut errors);
    if let Some(args) = &args {
        validate(args, &mut errors);
    }
    match (errors.finish(), args, f) {
        (Ok(()), Some(args), Some(f)) => generate(&args, &f),
        (Err(errors), ..) => crate::common::fallback(item, &errors, &[]),
        _ => unreachable!("a missing model was reported"),
    }
}

fn validate(args: &Args, errors: &mut darling::error::Accumulator) {
    let mut error = |message: &str, span: proc_macro2::Span| {
        errors.push(darling::Error::custom(message).with_span(&span));
    };
    if args.name.trim().is_empty() {
        error(
            "a breaker needs a name, shared by the call sites that use it: `name = \"payments\"`",
            args.name.span(),
        );
    }
    if let Some(n) = &args.failure_threshold
        && **n == 0
    {
        error(
            "`failure_threshold` is a number of failures in a row: at least 1",
            n.span(),
        );
    }
    if let Some(rate) = &args.failure_rate
        && !(**rate > 0.0 && **rate <= 1.0)
    {
        error(
            "`failure_rate` is the share of failed calls that opens the breaker: above 0, at most 1 (`0.5` for half)",
            rate.span(),
        );
    }
    if args.failure_rate.is_none() {
        for (option, span) in [
            (
                "window_secs",
                args.window_secs.as_ref().map(SpannedValue::span),
            ),
            (
                "minimum_calls",
                args.minimum_calls.as_ref().map(SpannedValue::span),
            ),
        ] {
            if let Some(span) = span {
                error(
                    &format!(
                        "`{option}` belongs to a failure rate: add `failure_rate = 0.5` or remove `{option}`"
                    ),
                    span,
                );
            }
        }
    }
    if let Some(n) = &args.half_open_probes
        && **n == 0
    {
        error(
            "`half_open_probes` is how many calls test a half-open breaker: at least 1",
            n.span(),
        );
    }
}

fn generate(args: &Args, f: &syn::ItemFn) -> TokenStream {
    let krate = crate::common::crate_path(args.krate.as_ref());
    let name = args.name.as_str();
    let mut config = quote!(#krate::breaker::BreakerConfig::new());
    if let Some(n) = &args.failure_threshold {
        let n = **n;
        config.extend(quote!(.consecutive_failures(#n)));
    }
    if let Some(rate) = &args.failure_rate {
        let rate = **rate;
        let window = args.window_secs.as_deref().copied().unwrap_or(60);
        let minimum = args.minimum_calls.as_deref().copied().unwrap_or(10);
        config.extend(
            quote!(.failure_rate(#rate, ::core::time::Duration::from_secs(#window), #minimum)),
        );
    }
    if let Some(secs) = args.open_secs {
        config.extend(quote!(.open_for(::core::time::Duration::from_secs(#secs))));
    }
    if let Some(n) = &args.half_open_probes {
        let n = **n;
        config.extend(quote!(.half_open_probes(#n)));
    }
    let breaker = if let Some(registry) = &args.registry {
        quote!(#krate::__private::breaker_in(&#registry, #name, || #config))
    } else {
        quote! {
            {
                static __DTX_BREAKER: #krate::__private::BreakerSite =
                    #krate::__private::BreakerSite::new(#name, || #config);
                __DTX_BREAKER.get()
            }
        }
    };
    let is_failure = args.is_failure.as_ref().map_or_else(
        || quote!(#krate::__private::every_error),
        |path| quote!(#path),
    );
    let (annotated, assertion) = super::result_type(&krate, f);
    let output_span = match &f.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => f.sig.ident.span(),
    };
    // Under the return type's span: a missing `From<BreakerOpen>` is reported there.
    let open = syn::Ident::new(
        "__dtx_open",
        proc_macro2::Span::mixed_site().located_at(output_span),
    );
    let krate_at = crate::common::respan(&krate, output_span);
    let rejected = quote_spanned!(output_span=> #krate_at::__private::rejected(#open));
    let record = quote_spanned!(output_span=> #krate_at::__private::record);
    let permit = syn::Ident::new("__dtx_permit", proc_macro2::Span::mixed_site());
    let breaker_ident = syn::Ident::new("__dtx_breaker", proc_macro2::Span::mixed_site());
    let ret = syn::Ident::new("__dtx_ret", proc_macro2::Span::mixed_site());
    let block = &f.block;
    let syn::ItemFn {
        attrs, vis, sig, ..
    } = f;
    quote! {
        #(#attrs)*
        #vis #sig {
            #assertion
            let #breaker_ident = #breaker;
            let #permit = match #breaker_ident.try_acquire() {
                ::core::result::Result::Ok(#permit) => #permit,
                ::core::result::Result::Err(#open) => return #rejected,
            };
            let #ret #annotated = async move {
                let #ret #annotated = #block;
                #ret
            }
            .await;
            #record(#permit, &#ret, #is_failure);
            #ret
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn expansion() {
        let tokens = super::expand(
            quote!(name = "payments", failure_threshold = 3, open_secs = 10),
            quote! {
                pub async fn charge(&self, amount: u64) -> Result<Receipt, PaymentError> {
                    self.client.charge(amount).await
                }
            },
        );
        insta::assert_snapshot!(prettyplease::unparse(
            &syn::parse2(tokens).expect("expansion parses as a file")
        ));
    }
}
