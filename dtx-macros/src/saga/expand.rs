//! Code generation for `#[saga]`: from the validated model only, never an error.

use super::parse::Input;
use super::validate::{Method, Model, Step};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use std::collections::HashSet;

/// The user's `impl` block, then the `Saga` impl, one adapter per step and compensation method,
/// and the saga's link-time registration.
pub(super) fn expand(model: &Model) -> TokenStream {
    let Model {
        krate,
        item,
        name,
        version,
        steps,
        max_retries,
        step_timeout_secs,
        deadline_secs,
    } = model;
    let version = Literal::u32_unsuffixed(*version);
    let self_ty = &item.self_ty;
    // One adapter `fn` per method, even when it compensates several steps.
    let mut seen = HashSet::new();
    let adapters = steps
        .iter()
        .flat_map(|step| std::iter::once(&step.action).chain(&step.compensation))
        .filter(|method| seen.insert(method.ident.to_string()))
        .map(|method| adapter(krate, self_ty, method));
    let adds = steps.iter().map(add_step);
    let max_retries = max_retries.map(|r| {
        let r = Literal::u32_unsuffixed(r);
        quote!(.max_retries(#r))
    });
    let step_timeout = step_timeout_secs.map(|s| {
        let s = Literal::u64_unsuffixed(s);
        quote!(.step_timeout(::core::time::Duration::from_secs(#s)))
    });
    let deadline = deadline_secs.map(|s| {
        let s = Literal::u64_unsuffixed(s);
        quote!(.deadline(::core::time::Duration::from_secs(#s)))
    });
    let generated = crate::common::dummy_const(&quote! {
        #(#adapters)*

        #[automatically_derived]
        impl #krate::saga::Saga for #self_ty {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;

            fn definition() -> #krate::saga::SagaDefinition<Self> {
                #krate::saga::SagaBuilder::<Self>::new(#name)
                    .version(#version)
                    #(#adds)*
                    #max_retries
                    #step_timeout
                    #deadline
                    .__checked()
            }
        }

        #krate::__private::inventory::submit! {
            #krate::saga::SagaRegistration {
                name: #name,
                version: #version,
                runner: #krate::__private::saga_runner::<#self_ty>,
            }
        }
    });
    quote! {
        #item
        #generated
    }
}

/// The builder calls that add one step: `.add_step(..)`, its options, its compensation.
fn add_step(step: &Step) -> TokenStream {
    let Step {
        name,
        action,
        compensation,
        retries,
        await_event,
    } = step;
    let action = adapter_name(action);
    let awaits = await_event.as_ref().map(|(event, secs)| {
        let secs = Literal::u64_unsuffixed(*secs);
        quote!(.await_event(#event, ::core::time::Duration::from_secs(#secs)))
    });
    let retries = retries.map(|r| {
        let r = Literal::u32_unsuffixed(r);
        quote!(.step_retries(#r))
    });
    let compensation = compensation.as_ref().map(|c| {
        let c = adapter_name(c);
        quote!(.add_compensation(#name, #c))
    });
    quote! {
        .add_step(#name, #action)
        #awaits
        #retries
        #compensation
    }
}

/// `__dtx_<method>`.
fn adapter_name(method: &Method) -> syn::Ident {
    format_ident!("__dtx_{}", method.ident)
}

/// `fn __dtx_<method>(saga, ctx) -> StepFuture<StepResult>`: calls the step or compensation
/// `method` of the saga's data and encodes what it returns.
fn adapter(krate: &syn::Path, self_ty: &syn::Type, method: &Method) -> TokenStream {
    let m = &method.ident;
    let name = adapter_name(method);
    let ctx = method.takes_context.then(|| quote!(__dtx_ctx));
    let call = quote_spanned!(m.span()=> __dtx_saga.#m(#ctx).await);
    // A method returning neither `()` nor events is reported under its `Ok` type.
    let output = method.output;
    let step_result = crate::common::respan(quote!(#krate::__private::step_result), output);
    let result = quote_spanned!(output=> #step_result(__dtx_output, __dtx_ctx));
    quote! {
        fn #name<'a>(
            __dtx_saga: &'a mut #self_ty,
            __dtx_ctx: &'a #krate::__private::StepContext,
        ) -> #krate::__private::StepFuture<'a, #krate::saga::StepResult> {
            ::std::boxed::Box::pin(async move {
                let __dtx_output = #call;
                #result
            })
        }
    }
}

/// What stands in for the `Saga` impl when the saga has errors: the trait, implemented for the
/// data type if its data can be stored, so the code that starts the saga compiles and reports
/// nothing more. Nothing for a generic block (the error says to remove its parameters).
pub(super) fn stub(input: &Input) -> Option<TokenStream> {
    if !input.item.generics.params.is_empty() {
        return None;
    }
    let krate = crate::common::crate_path(input.args.krate.as_ref());
    let self_ty = &input.item.self_ty;
    let name = input.name();
    // Under `for<'__dtx>`, a bound the data does not meet disables the stand-in instead of
    // adding an error of its own.
    Some(quote! {
        #[automatically_derived]
        impl #krate::saga::Saga for #self_ty
        where
            for<'__dtx> #self_ty: #krate::__private::serde::Serialize
                + #krate::__private::serde::de::DeserializeOwned
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static,
        {
            const NAME: &'static str = #name;

            fn definition() -> #krate::saga::SagaDefinition<Self> {
                ::core::unreachable!("`#[saga]` reported errors")
            }
        }
    })
}
