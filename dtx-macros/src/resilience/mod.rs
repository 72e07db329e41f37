//! `#[circuit_breaker]` and `#[retry]` on async fns returning `Result`: the signature rules
//! both share, and each macro's parse, validate and expand.

pub(crate) mod breaker;
pub(crate) mod retry;

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// The function, or the error that it is not one.
fn function(
    item: TokenStream,
    attribute: &str,
    errors: &mut darling::error::Accumulator,
) -> Option<syn::ItemFn> {
    if let Ok(f) = syn::parse2::<syn::ItemFn>(item.clone()) {
        check_signature(&f.sig, attribute, errors);
        return Some(f);
    }
    let span = syn::parse2::<syn::Item>(item).map_or_else(|_| Span::call_site(), |i| i.span());
    errors.push(
        darling::Error::custom(format!(
            "`#[dtx::{attribute}]` goes on an `async fn` returning `Result<T, E>`"
        ))
        .with_span(&span),
    );
    None
}

/// Every rule of the signature: async, not const, a `Result` return.
fn check_signature(
    sig: &syn::Signature,
    attribute: &str,
    errors: &mut darling::error::Accumulator,
) {
    if sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "`#[dtx::{attribute}]` needs an `async fn`: write `async fn {}`",
                sig.ident
            ))
            .with_span(&sig.fn_token),
        );
    }
    if let Some(constness) = &sig.constness {
        errors.push(
            darling::Error::custom(format!(
                "`#[dtx::{attribute}]` cannot wrap a `const fn`: remove `const`"
            ))
            .with_span(constness),
        );
    }
    let message = format!(
        "`#[dtx::{attribute}]` needs a function returning `Result<T, E>`: write `-> Result<{}, YourError>`",
        match &sig.output {
            syn::ReturnType::Type(_, ty) => crate::common::display(ty),
            syn::ReturnType::Default => "()".to_owned(),
        }
    );
    match &sig.output {
        syn::ReturnType::Default => {
            errors.push(darling::Error::custom(message).with_span(&sig.ident));
        }
        syn::ReturnType::Type(_, ty) if !matches!(**ty, syn::Type::Path(_)) => {
            errors.push(darling::Error::custom(message).with_span(ty));
        }
        syn::ReturnType::Type(..) => {}
    }
}

/// `let` annotation and the assertion, under the return type's span, that it is a `Result`.
fn result_type(krate: &syn::Path, f: &syn::ItemFn) -> (Option<TokenStream>, TokenStream) {
    let Some(ty) = crate::common::nameable(&f.sig.output) else {
        return (None, TokenStream::new());
    };
    let assertion = quote_spanned!(ty.span()=> #krate::__private::assert_result::<#ty>();
    );
    (Some(quote!(: #ty)), assertion)
}
