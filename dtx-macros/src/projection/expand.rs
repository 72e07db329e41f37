//! Code generation for `#[projection]`: from the validated model only, never an error.

use super::parse::Input;
use super::validate::{Clear, Model};
use crate::common::event_handlers::{self, Extra, Handler};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// The user's `impl` block, then the `Projection` impl and its link-time registration.
pub(super) fn expand(model: &Model) -> TokenStream {
    let Model {
        krate,
        item,
        name,
        version,
        subscription,
        handlers,
        clear,
    } = model;
    let self_ty = &item.self_ty;
    let private = quote!(#krate::__private);
    let kind = if *subscription {
        quote!(Subscription)
    } else {
        quote!(ReadModel)
    };
    let handled: Vec<TokenStream> = handlers
        .iter()
        .map(|h| event_handlers::handled(krate, h))
        .collect();
    let branches = handlers
        .iter()
        .zip(&handled)
        .map(|(handler, payload_type)| branch(krate, handler, payload_type));
    let clear = clear.as_ref().map(|clear| clear_fn(krate, clear));
    let line = quote_spanned!(self_ty.span()=> ::core::line!());
    // Payload types that differ but are stored under one name (variants of two enums named
    // alike) fail compilation under the projection's type.
    let message = format!(
        "projection `{name}` has two handlers for one stored event type name: the payloads are \
         variants of different enums stored under the same name; rename one variant with \
         `#[event(name = \"..\")]`"
    );
    let distinct = event_handlers::distinct_event_types(krate, self_ty, &message);
    let event_types = event_handlers::event_types(krate, &handled, &distinct);
    let generated = crate::common::dummy_const(&quote! {
        #[automatically_derived]
        impl #private::Projection for #self_ty {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            const KIND: #private::ProjectionKind = #private::ProjectionKind::#kind;

            #event_types

            fn handle<'a>(
                &'a self,
                __dtx_event: &'a #private::RecordedEvent,
                __dtx_uow: ::core::option::Option<&'a mut dyn #private::UnitOfWork>,
                __dtx_invalidations: &'a mut #private::Invalidations,
            ) -> #private::ProjectionFuture<'a, ::core::result::Result<(), #private::ProjectionError>> {
                ::std::boxed::Box::pin(async move {
                    #(#branches else)* {
                        ::core::result::Result::Ok(())
                    }
                })
            }

            #clear
        }

        #private::inventory::submit! {
            #private::ProjectionRegistration {
                name: #name,
                version: #version,
                kind: #private::ProjectionKind::#kind,
                type_name: #private::type_name::<#self_ty>,
                event_types: <#self_ty as #private::Projection>::event_types,
                file: ::core::file!(),
                line: #line,
            }
        }
    });
    quote! {
        #item
        #generated
    }
}

/// `if` the event is of the handler's type: decode it, call the handler, convert its result.
fn branch(krate: &syn::Path, handler: &Handler, payload_type: &TokenStream) -> TokenStream {
    let Handler {
        ident,
        by_ref,
        extras,
        output,
        ..
    } = handler;
    let payload = if *by_ref {
        quote!(&__dtx_payload)
    } else {
        quote!(__dtx_payload)
    };
    let uow = extras.contains(&Extra::UnitOfWork).then(|| {
        let handler = ident.to_string();
        quote! {
            let __dtx_uow = #krate::__private::projection_uow(
                __dtx_uow,
                <Self as #krate::__private::Projection>::NAME,
                #handler,
            )?;
        }
    });
    let takes_event = extras.contains(&Extra::Recorded);
    let extras = extras.iter().map(|extra| match extra {
        Extra::Recorded => quote!(__dtx_event),
        Extra::Message => unreachable!("validation refuses `&InboundMessage` in a projection"),
        Extra::UnitOfWork => quote!(__dtx_uow),
        Extra::Invalidations => quote!(__dtx_invalidations),
    });
    // A handler that takes the event sees it in its current form (an upcast event re-encoded).
    let current = takes_event.then(|| {
        quote! {
            let __dtx_current = #payload_type.current(__dtx_event, &__dtx_payload)?;
            let __dtx_event = __dtx_current.as_ref().unwrap_or(__dtx_event);
        }
    });
    let call = quote_spanned!(ident.span()=> self.#ident(#payload #(, #extras)*).await);
    let result = result(krate, *output, &call);
    quote! {
        if #payload_type.handles(&__dtx_event.event_type) {
            let __dtx_payload = #payload_type.decode(__dtx_event)?;
            #current
            #uow
            #result
        }
    }
}

/// `Projection::clear`, calling the `#[clear]` method.
fn clear_fn(krate: &syn::Path, clear: &Clear) -> TokenStream {
    let Clear { ident, output } = clear;
    let private = quote!(#krate::__private);
    let call = quote_spanned!(ident.span()=> self.#ident(__dtx_uow).await);
    let result = result(krate, *output, &call);
    quote! {
        fn clear<'a>(
            &'a self,
            __dtx_uow: &'a mut dyn #private::UnitOfWork,
        ) -> #private::ProjectionFuture<'a, ::core::result::Result<(), #private::ProjectionError>> {
            ::std::boxed::Box::pin(async move {
                #result
            })
        }
    }
}

/// The method's result, converted by `projection_result` under its return type.
fn result(krate: &syn::Path, output: Span, call: &TokenStream) -> TokenStream {
    event_handlers::result(krate, "projection_result", output, call)
}

/// What stands in for the `Projection` impl when the projection has errors, so the code that
/// runs it compiles and reports nothing more. Nothing for a generic block, a trait impl or a type
/// that is not a plain path (the error says what to write).
pub(super) fn stub(input: &Input) -> Option<TokenStream> {
    let item = &input.item;
    if !item.generics.params.is_empty()
        || item.trait_.is_some()
        || event_handlers::type_ident(item).is_none()
    {
        return None;
    }
    let krate = crate::common::crate_path(input.args.krate.as_ref());
    let private = quote!(#krate::__private);
    let self_ty = &item.self_ty;
    let name = input.name();
    let kind = if input.args.subscription.is_present() {
        quote!(Subscription)
    } else {
        quote!(ReadModel)
    };
    // Under `for<'__dtx>`, a bound the type does not meet disables the stand-in instead of adding
    // an error of its own.
    Some(quote! {
        #[automatically_derived]
        impl #private::Projection for #self_ty
        where
            for<'__dtx> #self_ty: ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            const NAME: &'static str = #name;
            const VERSION: u32 = 1;
            const KIND: #private::ProjectionKind = #private::ProjectionKind::#kind;

            fn event_types() -> &'static [&'static str] {
                &[]
            }

            fn handle<'a>(
                &'a self,
                _: &'a #private::RecordedEvent,
                _: ::core::option::Option<&'a mut dyn #private::UnitOfWork>,
                _: &'a mut #private::Invalidations,
            ) -> #private::ProjectionFuture<'a, ::core::result::Result<(), #private::ProjectionError>> {
                ::core::unreachable!("`#[projection]` reported errors")
            }
        }
    })
}
