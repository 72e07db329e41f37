//! Code generation for `#[derive(DomainEvent)]`: from the validated model only.

use super::Model;
use crate::common::respan;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let Model {
        ident,
        krate,
        variants,
    } = model;
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    let aliases = variants.iter().flat_map(|v| &v.aliases);
    // Each variant's names in a match pattern: `"order.placed" | "OrderPlaced"`.
    let patterns: Vec<TokenStream> = variants
        .iter()
        .map(|v| {
            let all = std::iter::once(&v.name).chain(&v.aliases);
            quote!(#(#all)|*)
        })
        .collect();
    let idents: Vec<&syn::Ident> = variants.iter().map(|v| &v.ident).collect();
    let payloads: Vec<&syn::Type> = variants.iter().map(|v| &v.payload).collect();
    let versions: Vec<u32> = variants.iter().map(|v| v.version).collect();
    let upcasters: Vec<TokenStream> = variants.iter().map(|v| upcaster(krate, v)).collect();
    let subjects: Vec<TokenStream> = variants.iter().map(|v| subject(krate, v)).collect();
    let codecs: Vec<_> = variants.iter().map(|v| codec(krate, v)).collect();
    let dispatch = dispatch(krate, ident, &payloads, &idents);

    let event_impls = variants
        .iter()
        .zip(&codecs)
        .filter(|(variant, _)| variant.payload_impl)
        .map(|(variant, codec)| event_impl(krate, variant, codec));

    let contracts = contracts(krate, variants);

    let items = quote! {
        #[automatically_derived]
        impl #krate::DomainEvent for #ident {
            const EVENT_TYPES: &'static [&'static str] = &[#(#names,)* #(#aliases),*];

            fn event_type(&self) -> &'static str {
                match self {
                    #(Self::#idents(_) => #names,)*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    #(Self::#idents(_) => #versions,)*
                }
            }

            fn to_payload(
                &self,
            ) -> ::core::result::Result<
                ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
                #krate::__private::serde_json::Error,
            > {
                match self {
                    #(Self::#idents(payload) => #codecs.encode(payload),)*
                }
            }

            fn from_payload(
                event_type: &str,
                schema_version: u32,
                data: &str,
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                match event_type {
                    #(#patterns => #codecs.decode(event_type, schema_version, #versions, data).map(Self::#idents),)*
                    _ => ::core::result::Result::Err(#krate::__private::unknown_event(
                        event_type,
                        <Self as #krate::DomainEvent>::EVENT_TYPES,
                    )),
                }
            }

            fn current_form(event_type: &str) -> ::core::option::Option<(&'static str, u32)> {
                match event_type {
                    #(#patterns => ::core::option::Option::Some((#names, #versions)),)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        #(#upcasters)*

        #(#subjects)*

        #dispatch

        #(#event_impls)*

        #(
            #[automatically_derived]
            impl ::core::convert::From<#payloads> for #ident {
                fn from(event: #payloads) -> Self {
                    Self::#idents(event)
                }
            }

            #[automatically_derived]
            impl #krate::cqrs::IntoEvents<#ident> for #payloads {
                fn into_events(self) -> ::std::vec::Vec<#ident> {
                    ::std::vec![#ident::#idents(self)]
                }
            }
        )*

        #contracts
    };
    crate::common::dummy_const(&items)
}

/// `Dispatch<A>` for the enum: each variant applied to any aggregate that applies its payload.
fn dispatch(
    krate: &syn::Path,
    ident: &syn::Ident,
    payloads: &[&syn::Type],
    idents: &[&syn::Ident],
) -> TokenStream {
    // The dispatch impl's header and bounds carry the user's spans, not the derive's: a missing
    // `Apply` impl is then reported with "unsatisfied trait bound introduced here" under the
    // variant's payload, instead of rustc's advice to implement the hidden trait by hand.
    let aggregate = syn::Ident::new("__DtxAggregate", ident.span());
    let dispatch_trait = respan(
        quote!(#krate::__private::Dispatch<#aggregate>),
        ident.span(),
    );
    let applies = payloads
        .iter()
        .map(|ty| respan(quote!(#aggregate: #krate::Apply<#ty>), ty.span()));
    let dispatch_fn = quote! {
        fn dispatch(&self, target: &mut #aggregate) {
            match self {
                #(Self::#idents(event) => #krate::Apply::<#payloads>::apply(target, event),)*
            }
        }
    };
    let dispatch = quote_spanned! {ident.span()=>
        #[automatically_derived]
        impl<#aggregate> #dispatch_trait for #ident
        where
            #(#applies,)*
        {
            #dispatch_fn
        }
    };
    dispatch
}

/// The event contracts' registration (`dtx::schema`): expands to nothing unless dtx is built
/// with its `schema` feature.
fn contracts(krate: &syn::Path, variants: &[super::Variant]) -> TokenStream {
    let entries = variants.iter().filter(|v| v.schema).map(|v| {
        let super::Variant {
            name,
            version,
            payload,
            ..
        } = v;
        quote!(#name, #version, #payload;)
    });
    let entries: Vec<TokenStream> = entries.collect();
    if entries.is_empty() {
        return TokenStream::new();
    }
    quote! {
        #krate::__private::event_contracts! { #(#entries)* }
    }
}

/// The payload's own `Event` impl: what projections handle. It decodes through the variant's
/// codec, as `from_payload` does.
fn event_impl(krate: &syn::Path, variant: &super::Variant, codec: &TokenStream) -> TokenStream {
    let super::Variant {
        payload,
        name,
        version,
        aliases,
        ..
    } = variant;
    // Spanned on the payload: a struct that two enums wrap gets conflicting impls, which rustc
    // then reports under the payload in each enum.
    quote_spanned! {payload.span()=>
        #[automatically_derived]
        impl #krate::projection::Event for #payload {
            const EVENT_TYPE: &'static str = #name;
            const SCHEMA_VERSION: u32 = #version;
            const NAMES: &'static [&'static str] = &[#name #(, #aliases)*];

            fn decode(
                schema_version: u32,
                data: &str,
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                #codec.decode(#name, schema_version, #version, data)
            }

            fn encode(
                &self,
            ) -> ::core::option::Option<
                ::core::result::Result<
                    ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
                    #krate::__private::serde_json::Error,
                >,
            > {
                ::core::option::Option::Some(#codec.encode(self))
            }
        }
    }
}

/// The codec of a variant's payload, with its upcaster when it has upcasts. Spanned on the
/// payload type: a payload without `Serialize`/`Deserialize` is reported there.
fn codec(krate: &syn::Path, variant: &super::Variant) -> TokenStream {
    let ty = &variant.payload;
    let upcasting = (!variant.upcasts.is_empty()).then(|| {
        let upcaster = upcaster_ident(&variant.ident);
        quote!(.upcasting(#upcaster))
    });
    let personal = variant.subject.as_ref().map(|_| {
        let subject = subject_ident(&variant.ident);
        quote!(.personal(#subject))
    });
    quote_spanned!(ty.span()=> #krate::__private::payload::<#ty>()#upcasting #personal)
}

/// The name of a variant's generated subject reader.
fn subject_ident(variant: &syn::Ident) -> syn::Ident {
    quote::format_ident!("__dtx_subject_{}", crate::common::snake_case(variant))
}

/// A variant's subject reader, for `#[event(personal(subject = field))]`: the id of the data
/// subject the payload's personal values are about. The field access and the call carry the
/// field's span: a field the payload lacks, or of a type that cannot be a subject's id, is
/// reported under it. Nothing for a variant without personal values.
fn subject(krate: &syn::Path, variant: &super::Variant) -> TokenStream {
    let Some(field) = &variant.subject else {
        return TokenStream::new();
    };
    let payload = &variant.payload;
    let name = subject_ident(&variant.ident);
    let subject_of = respan(quote!(#krate::__private::subject_of), field.span());
    let read = quote_spanned!(field.span()=> #subject_of(&payload.#field));
    quote! {
        fn #name(payload: &#payload) -> ::std::string::String {
            #read
        }
    }
}

/// The name of a variant's generated upcaster.
fn upcaster_ident(variant: &syn::Ident) -> syn::Ident {
    quote::format_ident!("__dtx_upcast_{}", crate::common::snake_case(variant))
}

/// A variant's upcaster: for each stored version its chain of steps, from that version's step
/// to the current type; below the oldest step, the error naming the missing one. Nothing for a
/// variant without upcasts.
fn upcaster(krate: &syn::Path, variant: &super::Variant) -> TokenStream {
    let super::Variant {
        ident,
        payload,
        upcasts,
        ..
    } = variant;
    let Some(oldest) = upcasts.first().map(|u| u.from) else {
        return TokenStream::new();
    };
    let name = upcaster_ident(ident);
    let arms = (0..upcasts.len()).map(|start| {
        let from = upcasts[start].from;
        let chain = chain(krate, &upcasts[start..]);
        quote!(#from => #chain,)
    });
    quote! {
        fn #name(
            event_type: &str,
            stored: u32,
            data: &str,
        ) -> ::core::result::Result<#payload, #krate::DecodeError> {
            let __dtx_from = #krate::__private::upcast(event_type, stored, data);
            match stored {
                #(#arms)*
                _ => ::core::result::Result::Err(__dtx_from.missing(#oldest)),
            }
        }
    }
}

/// The expression that takes a payload (`__dtx_from`) from the first of `steps` to the current
/// type: JSON steps on the parsed JSON, then the typed ones through `From`. Each call carries
/// the span of the user's function or type, where rustc reports a signature or a conversion
/// that does not fit.
fn chain(krate: &syn::Path, steps: &[super::Upcast]) -> TokenStream {
    let mut chain = quote!(__dtx_from);
    // The typed version the chain holds, once a typed step has begun.
    let mut typed: Option<&syn::Type> = None;
    for (i, step) in steps.iter().enumerate() {
        match (&step.kind, typed) {
            (super::UpcastKind::Json(path), _) => {
                if i == 0 {
                    chain = quote!(#chain.json()?);
                }
                chain = quote_spanned!(path.span()=> #chain.step(#path)?);
            }
            (super::UpcastKind::Typed(ty), None) => {
                chain = quote_spanned!(ty.span()=> #chain.typed::<#ty>()?);
                typed = Some(ty);
            }
            (super::UpcastKind::Typed(ty), Some(previous)) => {
                let then = spanned_call(
                    quote!(#krate::__private::then_typed::<#previous, #ty>),
                    &chain,
                    ty.span(),
                );
                chain = then;
                typed = Some(ty);
            }
        }
    }
    if let Some(last) = typed {
        spanned_call(
            quote!(#krate::__private::finish_typed::<#last, _>),
            &chain,
            last.span(),
        )
    } else {
        quote!(#chain.finish())
    }
}

/// `function(argument)` with the function's path and parentheses under `span`: rustc reports
/// a bound of the function that is not met there.
fn spanned_call(
    function: TokenStream,
    argument: &TokenStream,
    span: proc_macro2::Span,
) -> TokenStream {
    let mut arguments =
        proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, argument.clone());
    arguments.set_span(span);
    let function = respan(function, span);
    quote!(#function #arguments)
}

/// The stand-in impls emitted with the errors: `DomainEvent`, the dispatch to any aggregate, and
/// the conversions and `Event` impls of the well-formed variants, so the aggregates, handlers and
/// projections using the enum compile and the user sees the derive's errors alone.
pub(crate) fn stub(stub: &super::Stub) -> TokenStream {
    let super::Stub {
        ident,
        krate,
        variants,
        event_payloads,
    } = stub;
    let idents: Vec<&syn::Ident> = variants.iter().map(|(ident, _)| ident).collect();
    let payloads: Vec<&syn::Type> = variants.iter().map(|(_, ty)| ty).collect();
    let failed = quote!(::core::unreachable!(
        "`#[derive(DomainEvent)]` reported errors"
    ));
    quote! {
        #[automatically_derived]
        impl #krate::DomainEvent for #ident
        where
            for<'__dtx> #ident: ::core::marker::Send + ::core::marker::Sync + 'static,
        {
            const EVENT_TYPES: &'static [&'static str] = &[];

            fn event_type(&self) -> &'static str {
                #failed
            }

            fn schema_version(&self) -> u32 {
                #failed
            }

            fn to_payload(
                &self,
            ) -> ::core::result::Result<
                ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
                #krate::__private::serde_json::Error,
            > {
                #failed
            }

            fn from_payload(
                _: &str,
                _: u32,
                _: &str,
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                #failed
            }
        }

        #[automatically_derived]
        impl<__DtxAggregate> #krate::__private::Dispatch<__DtxAggregate> for #ident {
            fn dispatch(&self, _: &mut __DtxAggregate) {
                #failed
            }
        }

        // Under `for<'__dtx>`, a payload that cannot be an `Event` disables its stand-in instead
        // of adding an error of its own.
        #(
            #[automatically_derived]
            impl #krate::projection::Event for #event_payloads
            where
                for<'__dtx> #event_payloads: ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                const EVENT_TYPE: &'static str = "";
                const SCHEMA_VERSION: u32 = 1;

                fn decode(
                    _: u32,
                    _: &str,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    #failed
                }
            }
        )*

        #(
            #[automatically_derived]
            impl ::core::convert::From<#payloads> for #ident {
                fn from(event: #payloads) -> Self {
                    Self::#idents(event)
                }
            }

            #[automatically_derived]
            impl #krate::cqrs::IntoEvents<#ident> for #payloads {
                fn into_events(self) -> ::std::vec::Vec<#ident> {
                    ::std::vec![#ident::#idents(self)]
                }
            }
        )*
    }
}
