//! `#[derive(DomainEvent)]`: parse, validate, expand.

mod expand;

use darling::FromDeriveInput;
use darling::ast::{Data, Style};
use proc_macro2::TokenStream;
use raw::RawInput;
use std::collections::HashMap;

pub(crate) fn derive(input: &syn::DeriveInput) -> TokenStream {
    match Model::parse(input) {
        Ok(model) => expand::expand(&model),
        Err(error) => {
            crate::common::derive_fallback(error, Stub::read(input).map(|s| expand::stub(&s)))
        }
    }
}

/// What the stand-in impls emitted on error need, read leniently from the item.
pub(crate) struct Stub {
    pub(crate) ident: syn::Ident,
    pub(crate) krate: syn::Path,
    /// The variants wrapping one payload of a type no other variant wraps.
    pub(crate) variants: Vec<(syn::Ident, syn::Type)>,
    /// The payloads that get a stand-in `Event` impl: those of `variants` not opted out with
    /// `payload_impl = false`.
    pub(crate) event_payloads: Vec<syn::Type>,
}

impl Stub {
    /// `None` for what cannot be an event enum at all (a struct, a generic enum).
    fn read(input: &syn::DeriveInput) -> Option<Self> {
        let syn::Data::Enum(data) = &input.data else {
            return None;
        };
        if !input.generics.params.is_empty() {
            return None;
        }
        let options = crate::common::lenient_options(&input.attrs, "event");
        let all_impls = crate::common::lenient_bool(&options, "payload_impl").unwrap_or(true);
        let payloads: Vec<(&syn::Variant, syn::Type)> = data
            .variants
            .iter()
            .filter_map(|v| match &v.fields {
                syn::Fields::Unnamed(f) if f.unnamed.len() == 1 => {
                    Some((v, f.unnamed[0].ty.clone()))
                }
                _ => None,
            })
            .collect();
        let key = |ty: &syn::Type| quote::quote!(#ty).to_string();
        let unique: Vec<&(&syn::Variant, syn::Type)> = payloads
            .iter()
            .filter(|(_, ty)| {
                payloads
                    .iter()
                    .filter(|(_, other)| key(other) == key(ty))
                    .count()
                    == 1
            })
            .collect();
        let event_payloads = unique
            .iter()
            .filter(|(v, _)| {
                let options = crate::common::lenient_options(&v.attrs, "event");
                crate::common::lenient_bool(&options, "payload_impl").unwrap_or(all_impls)
            })
            .map(|(_, ty)| ty.clone())
            .collect();
        let variants = unique
            .into_iter()
            .map(|(v, ty)| (v.ident.clone(), ty.clone()))
            .collect();
        Some(Self {
            ident: input.ident.clone(),
            krate: crate::common::crate_path(
                crate::common::lenient_path(&options, "crate").as_ref(),
            ),
            variants,
            event_payloads,
        })
    }
}

/// The darling receivers: what the attributes and the item say, before validation.
#[allow(
    clippy::needless_continue,
    reason = "the code darling 0.21's derives generate has a redundant `continue`"
)]
mod raw {
    use darling::ast::{Data, Fields};
    use darling::util::{Ignored, SpannedValue};
    use darling::{FromDeriveInput, FromField, FromVariant};

    #[derive(FromDeriveInput)]
    #[darling(attributes(event))]
    pub(super) struct RawInput {
        pub(super) ident: syn::Ident,
        pub(super) generics: syn::Generics,
        pub(super) data: Data<RawVariant, Ignored>,
        #[darling(rename = "crate")]
        pub(super) krate: Option<syn::Path>,
        pub(super) payload_impl: Option<bool>,
        pub(super) schema: Option<bool>,
    }

    #[derive(FromVariant)]
    #[darling(attributes(event))]
    pub(super) struct RawVariant {
        pub(super) ident: syn::Ident,
        pub(super) fields: Fields<RawField>,
        pub(super) name: Option<SpannedValue<String>>,
        pub(super) version: Option<SpannedValue<u32>>,
        pub(super) payload_impl: Option<bool>,
        pub(super) schema: Option<bool>,
    }

    #[derive(FromField)]
    pub(super) struct RawField {
        pub(super) ty: syn::Type,
    }
}

/// The validated model of an event enum.
pub(crate) struct Model {
    pub(crate) ident: syn::Ident,
    pub(crate) krate: syn::Path,
    pub(crate) variants: Vec<Variant>,
}

/// One variant: `Ident(Payload)` stored as `name` at `version`.
pub(crate) struct Variant {
    pub(crate) ident: syn::Ident,
    pub(crate) payload: syn::Type,
    pub(crate) name: String,
    pub(crate) version: u32,
    /// Whether the payload gets its `dtx::projection::Event` impl (`payload_impl = false` on the
    /// variant or the enum opts out).
    pub(crate) payload_impl: bool,
    /// Whether the event is part of the exported contracts (`schema = false` on the variant or
    /// the enum opts out).
    pub(crate) schema: bool,
}

impl Model {
    #[allow(clippy::too_many_lines, reason = "one validation rule after another")]
    pub(crate) fn parse(input: &syn::DeriveInput) -> darling::Result<Self> {
        if !matches!(input.data, syn::Data::Enum(_)) {
            return Err(darling::Error::custom(
                "`#[derive(DomainEvent)]` goes on an enum with one variant per event, \
                 e.g. `enum OrderEvent { Placed(OrderPlaced), Shipped(OrderShipped) }`",
            )
            .with_span(&input.ident));
        }
        let raw = RawInput::from_derive_input(input)?;
        let mut errors = darling::Error::accumulator();
        if let Some(param) = raw.generics.params.first() {
            errors.push(
                darling::Error::custom(
                    "an event enum cannot be generic: stored events are decoded by name into one concrete type",
                )
                .with_span(param),
            );
        }
        let Data::Enum(raw_variants) = raw.data else {
            unreachable!("checked above that the input is an enum")
        };
        if raw_variants.is_empty() {
            errors.push(
                darling::Error::custom(
                    "an event enum needs at least one variant, e.g. `Placed(OrderPlaced)`",
                )
                .with_span(&raw.ident),
            );
        }
        let mut names: HashMap<String, syn::Ident> = HashMap::new();
        let mut payloads: HashMap<String, syn::Ident> = HashMap::new();
        let mut variants = Vec::new();
        let syn::Data::Enum(syn_enum) = &input.data else {
            unreachable!("checked above that the input is an enum")
        };
        for (variant, syn_variant) in raw_variants.into_iter().zip(&syn_enum.variants) {
            let (Style::Tuple, [field]) = (variant.fields.style, variant.fields.fields.as_slice())
            else {
                errors.push(variant_shape_error(syn_variant));
                continue;
            };
            let payload = field.ty.clone();
            let name = variant
                .name
                .as_ref()
                .map_or_else(|| variant.ident.to_string(), |n| (**n).clone());
            if let Some(name_attr) = &variant.name
                && (name_attr.is_empty()
                    || name_attr.len() > 255
                    || name_attr.chars().any(char::is_control))
            {
                errors.push(
                    darling::Error::custom(
                        "an event name must be 1 to 255 characters without control characters",
                    )
                    .with_span(&name_attr.span()),
                );
            }
            if let Some(first) = names.insert(name.clone(), variant.ident.clone()) {
                let error = darling::Error::custom(format!(
                    "event name `{name}` is already used by variant `{first}`: each variant needs its \
                     own stored name; rename one with `#[event(name = \"..\")]`",
                ));
                // Under the `name = ".."` that repeats the name, or the variant named like it.
                errors.push(match &variant.name {
                    Some(name_attr) => error.with_span(&name_attr.span()),
                    None => error.with_span(&variant.ident),
                });
            }
            let payload_key = quote::quote!(#payload).to_string();
            if let Some(first) = payloads.insert(payload_key, variant.ident.clone()) {
                errors.push(
                    darling::Error::custom(format!(
                        "variant `{first}` already wraps this type: each event struct belongs to one variant, \
                         since its type picks the variant in `From` and `Apply`",
                    ))
                    .with_span(&payload),
                );
            }
            let version = match &variant.version {
                Some(v) if **v == 0 => {
                    errors.push(
                        darling::Error::custom(
                            "schema versions start at 1, the default: remove `version = 0` or write `version = 1`",
                        )
                        .with_span(&v.span()),
                    );
                    1
                }
                Some(v) => **v,
                None => 1,
            };
            variants.push(Variant {
                ident: variant.ident,
                payload,
                name,
                version,
                payload_impl: variant.payload_impl.or(raw.payload_impl).unwrap_or(true),
                schema: variant.schema.or(raw.schema).unwrap_or(true),
            });
        }
        errors.finish()?;
        Ok(Self {
            ident: raw.ident,
            krate: crate::common::crate_path(raw.krate.as_ref()),
            variants,
        })
    }
}

/// The error for a variant that does not wrap exactly one payload: under the fields of a struct or
/// tuple variant, under the name of a unit variant.
fn variant_shape_error(variant: &syn::Variant) -> darling::Error {
    let ident = &variant.ident;
    match &variant.fields {
        syn::Fields::Unit => darling::Error::custom(format!(
            "event variant `{ident}` carries no event: wrap one event struct, \
             e.g. `{ident}({ident})` with `#[derive(Serialize, Deserialize)] struct {ident} {{}}`",
        ))
        .with_span(ident),
        syn::Fields::Named(fields) => darling::Error::custom(format!(
            "event variant `{ident}` must wrap one event struct, not hold fields itself: \
             move them into `struct {ident} {{ .. }}` and write `{ident}({ident})`",
        ))
        .with_span(fields),
        syn::Fields::Unnamed(fields) => darling::Error::custom(format!(
            "event variant `{ident}` wraps {} types, but must wrap exactly one event struct: \
             put the data in one struct and write `{ident}({ident})`",
            fields.unnamed.len(),
        ))
        .with_span(fields),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_pretty(input: &syn::DeriveInput) -> String {
        let tokens = derive(input);
        prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
    }

    #[test]
    fn expansion() {
        insta::assert_snapshot!(expand_pretty(&syn::parse_quote! {
            pub enum OrderEvent {
                Placed(OrderPlaced),
                #[event(name = "OrderShipped", version = 2)]
                Shipped(Shipped),
            }
        }));
    }

    #[test]
    fn expansion_without_payload_impls() {
        insta::assert_snapshot!(expand_pretty(&syn::parse_quote! {
            #[event(payload_impl = false)]
            pub enum AuditEvent {
                Placed(OrderPlaced),
                #[event(payload_impl = true)]
                Audited(Audited),
                #[event(schema = false)]
                Internal(Internal),
            }
        }));
    }
}
