//! Code generation for `#[derive(Aggregate)]`: from the validated model only.

use super::{Model, Snapshots};
use crate::common::respan;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let Model {
        ident,
        krate,
        name,
        event,
        id_field,
        id_type,
        other_fields,
        invariants,
        snapshots,
        schema_hash,
    } = model;
    let policy = match snapshots {
        Snapshots::Configured => quote!(#krate::SnapshotPolicy::Configured),
        Snapshots::Every(n) => quote!(#krate::SnapshotPolicy::Every(#n)),
        Snapshots::Never => quote!(#krate::SnapshotPolicy::Never),
    };
    let defaults = other_fields.iter().map(|(field, ty)| {
        let value = quote_spanned!(ty.span()=> #krate::__private::field_default::<#ty>());
        quote!(#field: #value)
    });
    let id_assoc = quote_spanned!(id_type.span()=> type Id = #id_type;);
    let event_assoc = quote_spanned!(event.span()=> type Event = #event;);
    let dispatch = quote_spanned! {event.span()=>
        <#event as #krate::__private::Dispatch<Self>>::dispatch(event, self)
    };
    let check = invariants.as_ref().map(|path| {
        // Spanned on the path: a function with the wrong signature is reported there.
        let krate = respan(krate, path.span());
        let call = quote_spanned!(path.span()=> #krate::__private::invariant_result(#path(self)));
        quote! {
            fn check_invariants(&self) -> ::core::result::Result<(), #krate::InvariantViolation> {
                #call
            }
        }
    });
    let snapshot = (!matches!(snapshots, Snapshots::Never)).then(|| {
        // Spanned on the struct name: a state without `Serialize`/`Deserialize` is reported there.
        let codec = quote_spanned!(ident.span()=> #krate::__private::snapshots::<Self>());
        quote! {
            fn snapshot(
                &self,
            ) -> ::core::option::Option<
                ::core::result::Result<
                    ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
                    #krate::__private::serde_json::Error,
                >,
            > {
                ::core::option::Option::Some(#codec.save(self))
            }

            fn restore(
                state: &#krate::__private::serde_json::value::RawValue,
            ) -> ::core::option::Option<::core::result::Result<Self, #krate::__private::serde_json::Error>> {
                ::core::option::Option::Some(#codec.restore(state))
            }
        }
    });

    let items = quote! {
        #[automatically_derived]
        impl #krate::Aggregate for #ident {
            #id_assoc
            #event_assoc
            const TYPE: &'static str = #name;
            const SNAPSHOT_POLICY: #krate::SnapshotPolicy = #policy;
            const STATE_SCHEMA: u64 = #schema_hash;

            fn init(id: Self::Id) -> Self {
                Self {
                    #id_field: id,
                    #(#defaults,)*
                }
            }

            fn id(&self) -> &Self::Id {
                &self.#id_field
            }

            fn apply_event(&mut self, event: &Self::Event) {
                #dispatch
            }

            #check
            #snapshot
        }
    };
    crate::common::dummy_const(&items)
}

/// The stand-in `Aggregate` impl emitted with the errors: code that loads, saves or handles
/// commands for the aggregate compiles, so the user sees the derive's errors alone. The event
/// and id types are the user's where given, else placeholders.
pub(crate) fn stub(stub: &super::Stub) -> TokenStream {
    let super::Stub {
        ident,
        krate,
        name,
        event,
        id_type,
    } = stub;
    let (event, placeholder) = match event {
        Some(event) => (quote!(#event), None),
        None => (
            quote!(__DtxNoEvent),
            Some(quote! {
                pub enum __DtxNoEvent {}

                #[automatically_derived]
                impl #krate::DomainEvent for __DtxNoEvent {
                    const EVENT_TYPES: &'static [&'static str] = &[];

                    fn event_type(&self) -> &'static str {
                        match *self {}
                    }

                    fn schema_version(&self) -> u32 {
                        match *self {}
                    }

                    fn to_payload(
                        &self,
                    ) -> ::core::result::Result<
                        ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
                        #krate::__private::serde_json::Error,
                    > {
                        match *self {}
                    }

                    fn from_payload(
                        event_type: &str,
                        _: u32,
                        _: &str,
                    ) -> ::core::result::Result<Self, #krate::DecodeError> {
                        ::core::result::Result::Err(#krate::__private::unknown_event(event_type, &[]))
                    }
                }
            }),
        ),
    };
    let id_type = id_type
        .as_ref()
        .map_or_else(|| quote!(#krate::Id<Self>), |ty| quote!(#ty));
    // Under `for<'__dtx>`, a bound the user's types do not meet disables the stand-in instead
    // of adding an error of its own.
    quote! {
        #placeholder

        #[automatically_derived]
        impl #krate::Aggregate for #ident
        where
            for<'__dtx> #ident: ::core::clone::Clone
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static,
            for<'__dtx> #id_type: #krate::AggregateId,
            for<'__dtx> #event: #krate::DomainEvent,
        {
            type Id = #id_type;
            type Event = #event;
            const TYPE: &'static str = #name;
            const SNAPSHOT_POLICY: #krate::SnapshotPolicy = #krate::SnapshotPolicy::Never;
            const STATE_SCHEMA: u64 = 0;

            fn init(_: Self::Id) -> Self {
                ::core::unreachable!("`#[derive(Aggregate)]` reported errors")
            }

            fn id(&self) -> &Self::Id {
                ::core::unreachable!("`#[derive(Aggregate)]` reported errors")
            }

            fn apply_event(&mut self, _: &Self::Event) {
                ::core::unreachable!("`#[derive(Aggregate)]` reported errors")
            }
        }
    }
}
