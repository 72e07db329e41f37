//! `#[derive(DomainEvent)]`: parse, validate, expand.

mod expand;

mod upcast;

use darling::FromDeriveInput;
use darling::ast::{Data, Style};
use darling::util::SpannedValue;
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
    use darling::{FromDeriveInput, FromField, FromMeta, FromVariant};
    use syn::spanned::Spanned;

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
        /// Refused: read only to say that it goes on a variant.
        #[darling(multiple)]
        pub(super) upcast: Vec<SpannedValue<Ignored>>,
        /// Refused: read only to say that it goes on a variant.
        #[darling(multiple)]
        pub(super) alias: Vec<SpannedValue<Ignored>>,
        /// Refused: read only to say that it goes on a variant.
        pub(super) version: Option<SpannedValue<Ignored>>,
        /// Refused: read only to say that it goes on a variant.
        pub(super) personal: Option<SpannedValue<Ignored>>,
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
        /// Older names it is still decoded from.
        #[darling(multiple)]
        pub(super) alias: Vec<SpannedValue<String>>,
        /// One step of the upcast chain each.
        #[darling(multiple)]
        pub(super) upcast: Vec<SpannedValue<RawUpcast>>,
        /// `personal(subject = customer_id)`: the payload's personal values are about the
        /// subject that field names.
        pub(super) personal: Option<RawPersonal>,
    }

    /// `personal(subject = customer_id)`: the payload field holding the data subject's id.
    pub(super) struct RawPersonal {
        pub(super) subject: syn::Member,
    }

    impl FromMeta for RawPersonal {
        fn from_word() -> darling::Result<Self> {
            Err(darling::Error::custom(
                "name the payload field that holds the data subject's id: \
                 `personal(subject = customer_id)`",
            ))
        }

        fn from_list(items: &[darling::ast::NestedMeta]) -> darling::Result<Self> {
            let mut errors = darling::Error::accumulator();
            let mut subject = None;
            for item in items {
                match item {
                    darling::ast::NestedMeta::Meta(syn::Meta::NameValue(option))
                        if option.path.is_ident("subject") =>
                    {
                        match &option.value {
                            syn::Expr::Path(path)
                                if path.qself.is_none() && path.path.get_ident().is_some() =>
                            {
                                subject = path.path.get_ident().cloned().map(syn::Member::Named);
                            }
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Int(index),
                                ..
                            }) => match index.base10_parse::<u32>() {
                                Ok(index) => {
                                    subject = Some(syn::Member::Unnamed(syn::Index {
                                        index,
                                        span: option.value.span(),
                                    }));
                                }
                                Err(error) => errors.push(error.into()),
                            },
                            other => errors.push(
                                darling::Error::custom(
                                    "`subject` names one field of the payload struct, \
                                     e.g. `subject = customer_id`",
                                )
                                .with_span(other),
                            ),
                        }
                    }
                    other => errors.push(
                        darling::Error::custom(
                            "`personal(..)` takes one option, the field with the data subject's \
                             id: `personal(subject = customer_id)`",
                        )
                        .with_span(other),
                    ),
                }
            }
            errors.finish()?;
            subject.map(|subject| Self { subject }).ok_or_else(|| {
                darling::Error::custom(
                    "name the payload field that holds the data subject's id: \
                     `personal(subject = customer_id)`",
                )
            })
        }
    }

    /// `upcast(from = 1, with = v1_to_v2)` or `upcast(from = 1, type = PlacedV1)`.
    #[derive(FromMeta)]
    pub(super) struct RawUpcast {
        pub(super) from: SpannedValue<u32>,
        pub(super) with: Option<syn::Path>,
        #[darling(rename = "type")]
        pub(super) ty: Option<OldType>,
    }

    /// The type of `type = PlacedV1`: a path written as an expression.
    pub(super) struct OldType(pub(super) syn::Type);

    impl FromMeta for OldType {
        fn from_expr(expr: &syn::Expr) -> darling::Result<Self> {
            match expr {
                syn::Expr::Path(path) if path.qself.is_none() => {
                    Ok(Self(syn::Type::Path(syn::TypePath {
                        qself: None,
                        path: path.path.clone(),
                    })))
                }
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) => text.parse().map(Self).map_err(Into::into),
                _ => Err(darling::Error::custom(
                    "write the old version's type as a path, e.g. `type = OrderPlacedV1`",
                )
                .with_span(expr)),
            }
        }
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
    /// The older names it is still decoded from.
    pub(crate) aliases: Vec<String>,
    /// The upcast chain, oldest step first, contiguous up to `version - 1`.
    pub(crate) upcasts: Vec<Upcast>,
    /// The payload field holding the id of the data subject its personal values are about.
    pub(crate) subject: Option<syn::Member>,
}

/// One step of an upcast chain: how version `from` becomes `from + 1`.
pub(crate) struct Upcast {
    pub(crate) from: u32,
    pub(crate) kind: UpcastKind,
}

/// A step on the JSON, or a typed old version.
pub(crate) enum UpcastKind {
    /// `with = path`: a function from the JSON of `from` to the JSON of `from + 1`.
    Json(syn::Path),
    /// `type = T`: the payload of version `from` is `T`, which converts `From` into the next.
    Typed(syn::Type),
}

impl Model {
    #[allow(clippy::too_many_lines, reason = "one validation rule after another")]
    pub(crate) fn parse(input: &syn::DeriveInput) -> darling::Result<Self> {
        if !matches!(input.data, syn::Data::Enum(_)) {
            return Err(not_an_enum(input));
        }
        let raw = RawInput::from_derive_input(input)?;
        let mut errors = darling::Error::accumulator();
        for (option, spans) in [
            (
                "upcast(..)",
                raw.upcast
                    .iter()
                    .map(SpannedValue::span)
                    .collect::<Vec<_>>(),
            ),
            ("alias", raw.alias.iter().map(SpannedValue::span).collect()),
            (
                "version",
                raw.version.iter().map(SpannedValue::span).collect(),
            ),
            (
                "personal(..)",
                raw.personal.iter().map(SpannedValue::span).collect(),
            ),
        ] {
            for span in spans {
                errors.push(
                    darling::Error::custom(format!(
                        "`{option}` goes on the variant of the event it describes, not on the \
                         enum: `#[event(version = 2, {option_example})] Placed(OrderPlaced)`",
                        option_example = match option {
                            "alias" => "alias = \"OrderPlaced\"",
                            "version" => "..",
                            "personal(..)" => "personal(subject = customer_id)",
                            _ => "upcast(from = 1, with = v1_to_v2)",
                        }
                    ))
                    .with_span(&span),
                );
            }
        }
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
        let mut aliases: Vec<Vec<SpannedValue<String>>> = Vec::new();
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
            let upcasts = upcast::validate(
                &variant.upcast,
                version,
                variant.version.as_ref(),
                &mut errors,
            );
            for alias in &variant.alias {
                if alias.is_empty() || alias.len() > 255 || alias.chars().any(char::is_control) {
                    errors.push(
                        darling::Error::custom(
                            "an alias is an event name: 1 to 255 characters without control characters",
                        )
                        .with_span(&alias.span()),
                    );
                }
            }
            aliases.push(variant.alias.clone());
            variants.push(Variant {
                ident: variant.ident,
                payload,
                name,
                version,
                payload_impl: variant.payload_impl.or(raw.payload_impl).unwrap_or(true),
                schema: variant.schema.or(raw.schema).unwrap_or(true),
                aliases: variant.alias.iter().map(|a| (**a).clone()).collect(),
                upcasts,
                subject: variant.personal.map(|p| p.subject),
            });
        }
        check_aliases(&variants, &aliases, &mut errors);
        errors.finish()?;
        Ok(Self {
            ident: raw.ident,
            krate: crate::common::crate_path(raw.krate.as_ref()),
            variants,
        })
    }
}

/// The error for `#[derive(DomainEvent)]` on a struct or union: when the item carries
/// `#[event(upcast(..))]` or an alias, the error says where those go.
fn not_an_enum(input: &syn::DeriveInput) -> darling::Error {
    let ident = &input.ident;
    // The first `upcast` or `alias` among the options of an `#[event(..)]` on the item.
    let upcasting = input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("event"))
        .filter_map(|a| match &a.meta {
            syn::Meta::List(list) => Some(list.tokens.clone()),
            _ => None,
        })
        .flat_map(proc_macro2::TokenStream::into_iter)
        .find_map(|token| match token {
            proc_macro2::TokenTree::Ident(option) if option == "upcast" || option == "alias" => {
                Some(option)
            }
            _ => None,
        });
    match upcasting {
        Some(option) => darling::Error::custom(format!(
            "`{}` describes a variant of an event enum, and `{ident}` is not an event enum: \
             put it on the variant that wraps `{ident}`, e.g. \
             `#[derive(DomainEvent)] enum OrderEvent {{ #[event(version = 2, upcast(from = 1, with = v1_to_v2))] Placed({ident}) }}`",
            crate::common::display(&option),
        ))
        .with_span(&option),
        None => darling::Error::custom(
            "`#[derive(DomainEvent)]` goes on an enum with one variant per event, \
             e.g. `enum OrderEvent { Placed(OrderPlaced), Shipped(OrderShipped) }`",
        )
        .with_span(ident),
    }
}

/// Every alias differs from the variant's own name and from every other name and alias of the
/// enum: a stored name must decode as one variant only.
fn check_aliases(
    variants: &[Variant],
    aliases: &[Vec<SpannedValue<String>>],
    errors: &mut darling::error::Accumulator,
) {
    let mut owners: HashMap<&str, &syn::Ident> = variants
        .iter()
        .map(|v| (v.name.as_str(), &v.ident))
        .collect();
    for (variant, aliases) in variants.iter().zip(aliases) {
        for alias in aliases {
            let error = match owners.get(alias.as_str()) {
                Some(owner) if *owner == &variant.ident && variant.name == **alias => {
                    Some(format!(
                        "`{}` is this variant's own name: an alias is an older name it was stored \
                         under; remove it",
                        **alias
                    ))
                }
                Some(owner) => Some(format!(
                    "`{}` is already a name of variant `{owner}`: a stored name must decode as \
                     one variant only; remove the alias or rename the other variant",
                    **alias
                )),
                None => None,
            };
            match error {
                Some(message) => {
                    errors.push(darling::Error::custom(message).with_span(&alias.span()));
                }
                None => {
                    owners.insert(alias.as_str(), &variant.ident);
                }
            }
        }
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
    fn expansion_with_upcasts_and_an_alias() {
        insta::assert_snapshot!(expand_pretty(&syn::parse_quote! {
            pub enum OrderEvent {
                #[event(
                    name = "order.placed",
                    version = 3,
                    alias = "OrderPlaced",
                    upcast(from = 1, with = v1_to_v2),
                    upcast(from = 2, type = PlacedV2),
                )]
                Placed(OrderPlaced),
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
