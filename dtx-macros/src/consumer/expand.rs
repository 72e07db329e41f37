//! Code generation for `#[consumer]`: from the validated model only, never an error.

use super::parse::Input;
use super::validate::Model;
use crate::common::event_handlers::{self, Extra, Handler};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// The user's `impl` block, then the `Consumer` impl and its link-time registration.
pub(super) fn expand(model: &Model) -> TokenStream {
    let Model {
        krate,
        item,
        name,
        handlers,
    } = model;
    let self_ty = &item.self_ty;
    let private = quote!(#krate::__private);
    let handled: Vec<TokenStream> = handlers
        .iter()
        .map(|h| event_handlers::handled(krate, h))
        .collect();
    let branches = handlers
        .iter()
        .zip(&handled)
        .map(|(handler, payload_type)| branch(krate, handler, payload_type));
    let line = quote_spanned!(self_ty.span()=> ::core::line!());
    let message = format!(
        "consumer `{name}` has two handlers for one event type name: the payloads are variants \
         of different enums named alike; rename one variant with `#[event(name = \"..\")]`"
    );
    let distinct = event_handlers::distinct_event_types(krate, self_ty, &message);
    let event_types = event_handlers::event_types(krate, &handled, &distinct);
    let generated = crate::common::dummy_const(&quote! {
        #[automatically_derived]
        impl #private::Consumer for #self_ty {
            const NAME: &'static str = #name;

            #event_types

            fn handle<'a>(
                &'a self,
                __dtx_message: &'a #private::InboundMessage,
                __dtx_uow: &'a mut dyn #private::UnitOfWork,
            ) -> #private::ConsumerFuture<'a, ::core::result::Result<(), #private::HandlerError>> {
                ::std::boxed::Box::pin(async move {
                    #(#branches else)* {
                        ::core::result::Result::Ok(())
                    }
                })
            }
        }

        #private::inventory::submit! {
            #private::ConsumerRegistration {
                name: #name,
                type_name: #private::type_name::<#self_ty>,
                event_types: <#self_ty as #private::Consumer>::event_types,
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

/// `if` the message is of the handler's type: decode its payload, call the handler, convert its
/// result.
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
    let extras = extras.iter().map(|extra| match extra {
        Extra::Message => quote!(__dtx_message),
        Extra::UnitOfWork => quote!(__dtx_uow),
        Extra::Recorded | Extra::Invalidations => {
            unreachable!("validation refuses `&RecordedEvent` and `&mut Invalidations` here")
        }
    });
    // A handler that takes the message sees it in its current form (an upcast payload
    // re-encoded).
    let current = handler.extras.contains(&Extra::Message).then(|| {
        quote! {
            let __dtx_current = #payload_type.current_message(__dtx_message, &__dtx_payload)?;
            let __dtx_message = __dtx_current.as_ref().unwrap_or(__dtx_message);
        }
    });
    let call = quote_spanned!(ident.span()=> self.#ident(#payload #(, #extras)*).await);
    let result = event_handlers::result(krate, "consumer_result", *output, &call);
    quote! {
        if #payload_type.handles(&__dtx_message.event_type) {
            let __dtx_payload = #payload_type.decode_message(__dtx_message)?;
            #current
            #result
        }
    }
}

/// What stands in for the `Consumer` impl when the consumer has errors, so the code that runs
/// it compiles and reports nothing more. Nothing for a generic block, a trait impl or a type that
/// is not a plain path (the error says what to write).
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
    // Under `for<'__dtx>`, a bound the type does not meet disables the stand-in instead of adding
    // an error of its own.
    Some(quote! {
        #[automatically_derived]
        impl #private::Consumer for #self_ty
        where
            for<'__dtx> #self_ty: ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            const NAME: &'static str = #name;

            fn event_types() -> &'static [&'static str] {
                &[]
            }

            fn handle<'a>(
                &'a self,
                _: &'a #private::InboundMessage,
                _: &'a mut dyn #private::UnitOfWork,
            ) -> #private::ConsumerFuture<'a, ::core::result::Result<(), #private::HandlerError>> {
                ::core::unreachable!("`#[consumer]` reported errors")
            }
        }
    })
}
