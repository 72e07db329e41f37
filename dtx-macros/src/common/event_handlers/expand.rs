//! The pieces of generated code that projections and consumers share: the handled payload types,
//! the check that their stored names differ, and the conversion of a handler's result.

use super::Handler;
use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// `handled::<P>()` under the payload type `P`, where rustc reports a type that is not an event
/// payload.
pub(crate) fn handled(krate: &syn::Path, handler: &Handler) -> TokenStream {
    let payload = &handler.payload;
    let path = crate::common::respan(quote!(#krate::__private::handled), payload.span());
    quote!(#path::<#payload>())
}

/// `fn event_types()` of a projection or consumer: every name of every handled payload (its
/// name, then its aliases), checked by `distinct`.
pub(crate) fn event_types(
    krate: &syn::Path,
    handled: &[TokenStream],
    distinct: &TokenStream,
) -> TokenStream {
    quote! {
        fn event_types() -> &'static [&'static str] {
            const NAMES: &[&[&str]] = &[#(#handled.names),*];
            const EVENT_TYPES: &[&str] =
                &#krate::__private::concat_names::<{ #krate::__private::names_len(NAMES) }>(NAMES);
            #distinct
            EVENT_TYPES
        }
    }
}

/// `const _: () = assert!(..)` that no two of `EVENT_TYPES` are equal, under the block's type:
/// payload types that differ but are stored under one name (variants of two enums named alike)
/// fail compilation there, with `message`.
pub(crate) fn distinct_event_types(
    krate: &syn::Path,
    self_ty: &syn::Type,
    message: &str,
) -> TokenStream {
    quote_spanned! {self_ty.span()=>
        const _: () = ::core::assert!(
            #krate::__private::distinct_event_types(EVENT_TYPES),
            #message
        );
    }
}

/// The method's result, bound at its return type and converted by `#krate::__private::#convert`
/// there: rustc reports a result that is not `Result<(), E>` with an error type under the return
/// type.
pub(crate) fn result(
    krate: &syn::Path,
    convert: &str,
    output: Span,
    call: &TokenStream,
) -> TokenStream {
    let binding = syn::Ident::new("__dtx_result", output);
    let convert = syn::Ident::new(convert, Span::call_site());
    let path = crate::common::respan(quote!(#krate::__private::#convert), output);
    let mut arg = Group::new(Delimiter::Parenthesis, quote!(#binding));
    arg.set_span(output);
    quote! {
        let #binding = #call;
        #path #arg
    }
}
