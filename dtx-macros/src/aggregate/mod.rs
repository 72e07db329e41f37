//! `#[derive(Aggregate)]`: parse, validate, expand.

mod expand;

use darling::FromDeriveInput;
use darling::ast::{Data, Style};
use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Write as _;

pub(crate) fn derive(input: &syn::DeriveInput) -> TokenStream {
    match Model::parse(input) {
        Ok(model) => expand::expand(&model),
        Err(error) => {
            crate::common::derive_fallback(error, Stub::read(input).map(|s| expand::stub(&s)))
        }
    }
}

/// What the stand-in `Aggregate` impl emitted on error needs, read leniently from the item.
pub(crate) struct Stub {
    pub(crate) ident: syn::Ident,
    pub(crate) krate: syn::Path,
    pub(crate) name: String,
    /// `event = ..`, if given.
    pub(crate) event: Option<syn::Path>,
    /// The type of the id field, if there is one.
    pub(crate) id_type: Option<syn::Type>,
}

impl Stub {
    /// `None` for what cannot be an aggregate at all (an enum, a generic struct).
    fn read(input: &syn::DeriveInput) -> Option<Self> {
        let syn::Data::Struct(data) = &input.data else {
            return None;
        };
        if !input.generics.params.is_empty() {
            return None;
        }
        let options = crate::common::lenient_options(&input.attrs, "aggregate");
        let marked = |f: &&syn::Field| {
            f.attrs.iter().any(|a| {
                a.path().is_ident("aggregate")
                    && a.parse_args::<syn::Path>().is_ok_and(|p| p.is_ident("id"))
            })
        };
        let id = data.fields.iter().find(marked).or_else(|| {
            data.fields
                .iter()
                .find(|f| f.ident.as_ref().is_some_and(|i| i == "id"))
        });
        Some(Self {
            ident: input.ident.clone(),
            krate: crate::common::crate_path(
                crate::common::lenient_path(&options, "crate").as_ref(),
            ),
            name: crate::common::lenient_text(&options, "name")
                .unwrap_or_else(|| input.ident.to_string()),
            event: crate::common::lenient_path(&options, "event"),
            id_type: id.map(|f| f.ty.clone()),
        })
    }
}

/// The darling receivers: what the attributes and the item say, before validation.
#[allow(
    clippy::needless_continue,
    reason = "the code darling 0.21's derives generate has a redundant `continue`"
)]
mod raw {
    use darling::ast::Data;
    use darling::util::{Flag, Ignored, SpannedValue};
    use darling::{FromDeriveInput, FromField};

    #[derive(FromDeriveInput)]
    #[darling(attributes(aggregate))]
    pub(super) struct RawInput {
        pub(super) ident: syn::Ident,
        pub(super) generics: syn::Generics,
        pub(super) data: Data<Ignored, RawField>,
        pub(super) event: Option<syn::Path>,
        pub(super) name: Option<SpannedValue<String>>,
        pub(super) invariants: Option<syn::Path>,
        pub(super) snapshot_every: Option<SpannedValue<u64>>,
        pub(super) snapshots: Option<SpannedValue<bool>>,
        pub(super) snapshot_version: Option<u32>,
        #[darling(rename = "crate")]
        pub(super) krate: Option<syn::Path>,
    }

    #[derive(FromField)]
    #[darling(attributes(aggregate))]
    pub(super) struct RawField {
        pub(super) ident: Option<syn::Ident>,
        pub(super) ty: syn::Type,
        pub(super) id: Flag,
    }
}

use raw::{RawField, RawInput};

/// When to snapshot.
pub(crate) enum Snapshots {
    Configured,
    Every(u64),
    Never,
}

/// The validated model of an aggregate struct.
pub(crate) struct Model {
    pub(crate) ident: syn::Ident,
    pub(crate) krate: syn::Path,
    pub(crate) name: String,
    pub(crate) event: syn::Path,
    pub(crate) id_field: syn::Ident,
    pub(crate) id_type: syn::Type,
    pub(crate) other_fields: Vec<(syn::Ident, syn::Type)>,
    pub(crate) invariants: Option<syn::Path>,
    pub(crate) snapshots: Snapshots,
    pub(crate) schema_hash: u64,
}

impl Model {
    #[allow(clippy::too_many_lines, reason = "one validation rule after another")]
    pub(crate) fn parse(input: &syn::DeriveInput) -> darling::Result<Self> {
        let named = matches!(&input.data, syn::Data::Struct(s) if matches!(s.fields, syn::Fields::Named(_)));
        if !named {
            return Err(darling::Error::custom(
                "`#[derive(Aggregate)]` goes on a struct with named fields holding the aggregate's state, \
                 e.g. `struct Order { id: dtx::Id<Order>, status: Status }`",
            )
            .with_span(&input.ident));
        }
        let raw = RawInput::from_derive_input(input)?;
        let mut errors = darling::Error::accumulator();
        if let Some(param) = raw.generics.params.first() {
            errors.push(
                darling::Error::custom(
                    "an aggregate cannot be generic: its streams and handlers are registered for one concrete type",
                )
                .with_span(param),
            );
        }
        if raw.event.is_none() {
            errors.push(
                darling::Error::custom(format!(
                    "name the event enum this aggregate applies: `#[aggregate(event = {}Event)]`",
                    raw.ident,
                ))
                .with_span(&raw.ident),
            );
        }
        let name = raw
            .name
            .as_ref()
            .map_or_else(|| raw.ident.to_string(), |n| (**n).clone());
        if let Some(name_attr) = &raw.name
            && (name_attr.is_empty()
                || name_attr.len() > 128
                || name_attr.chars().any(|c| c.is_control() || c == '-'))
        {
            errors.push(
                darling::Error::custom(
                    "an aggregate name must be 1 to 128 characters, without `-` (it separates the name from the id in stream ids)",
                )
                .with_span(&name_attr.span()),
            );
        }
        let snapshots = match (raw.snapshot_every, raw.snapshots) {
            (Some(every), Some(enabled)) => {
                errors.push(
                    darling::Error::custom(if *enabled {
                        "`snapshots = true` is implied by `snapshot_every`; remove it"
                    } else {
                        "`snapshot_every` contradicts `snapshots = false`; keep one of them"
                    })
                    .with_span(&every.span()),
                );
                Snapshots::Configured
            }
            (Some(every), None) if *every == 0 => {
                errors.push(
                    darling::Error::custom(
                        "to turn snapshots off write `snapshots = false`, not `snapshot_every = 0`",
                    )
                    .with_span(&every.span()),
                );
                Snapshots::Never
            }
            (Some(every), None) => Snapshots::Every(*every),
            (None, Some(enabled)) if !*enabled => Snapshots::Never,
            (None, _) => Snapshots::Configured,
        };

        let Data::Struct(fields) = raw.data else {
            unreachable!("checked above that the input is a struct")
        };
        debug_assert_eq!(fields.style, Style::Struct);
        let marked: Vec<&RawField> = fields.fields.iter().filter(|f| f.id.is_present()).collect();
        let id = match marked.as_slice() {
            [one] => Some(*one),
            [] => fields
                .fields
                .iter()
                .find(|f| f.ident.as_ref().is_some_and(|i| i == "id")),
            [first, rest @ ..] => {
                let first_name = first.ident.as_ref().expect("named fields have identifiers");
                for other in rest {
                    errors.push(
                        darling::Error::custom(format!(
                            "only one field can be the aggregate id, and `{first_name}` is already marked `#[aggregate(id)]`",
                        ))
                        .with_span(&other.id.span()),
                    );
                }
                Some(*first)
            }
        };
        if id.is_none() {
            errors.push(
                darling::Error::custom(
                    "an aggregate needs an id field: name it `id`, or mark it `#[aggregate(id)]`",
                )
                .with_span(&raw.ident),
            );
        }
        let mut hashed = format!("{name}|{}|", raw.snapshot_version.unwrap_or(0));
        let mut other_fields = Vec::new();
        for field in &fields.fields {
            let ident = field.ident.clone().expect("named fields have identifiers");
            write!(hashed, "{ident}:{};", field.ty.to_token_stream())
                .expect("writing to a String cannot fail");
            if id.is_some_and(|id| std::ptr::eq(id, field)) {
                continue;
            }
            other_fields.push((ident, field.ty.clone()));
        }
        errors.finish()?;
        let (Some(event), Some(id)) = (raw.event, id) else {
            unreachable!("missing event or id were reported above")
        };
        Ok(Self {
            krate: crate::common::crate_path(raw.krate.as_ref()),
            name,
            event,
            id_field: id.ident.clone().expect("named fields have identifiers"),
            id_type: id.ty.clone(),
            other_fields,
            invariants: raw.invariants,
            snapshots,
            schema_hash: crate::common::fnv1a(&hashed),
            ident: raw.ident,
        })
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
            #[aggregate(event = OrderEvent, invariants = Self::check, snapshot_every = 50)]
            pub struct Order {
                id: OrderId,
                lines: Vec<Line>,
                status: Status,
            }
        }));
    }

    #[test]
    fn expansion_without_snapshots() {
        insta::assert_snapshot!(expand_pretty(&syn::parse_quote! {
            #[aggregate(event = TicketEvent, name = "Ticket", snapshots = false)]
            pub struct Ticket {
                #[aggregate(id)]
                number: dtx::Id<Ticket>,
                open: bool,
            }
        }));
    }

    #[test]
    fn schema_hash_follows_fields() {
        let a = Model::parse(&syn::parse_quote! {
            #[aggregate(event = E)]
            struct A { id: I, x: u32 }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let b = Model::parse(&syn::parse_quote! {
            #[aggregate(event = E)]
            struct A { id: I, x: u64 }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let c = Model::parse(&syn::parse_quote! {
            #[aggregate(event = E, snapshot_version = 2)]
            struct A { id: I, x: u32 }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.schema_hash, b.schema_hash);
        assert_ne!(a.schema_hash, c.schema_hash);
    }
}
