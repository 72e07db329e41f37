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
