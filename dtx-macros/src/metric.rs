//! `#[metric]` on a fn, async fn or method: parse, validate, expand.
//!
//! The function keeps its signature; its body runs between a clock read and a call to the
//! call site's `dtx::__private::MetricSite`, a `static` in the expansion that creates its
//! instruments once and records a call counter and a duration histogram.

use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::{PathList, SpannedValue};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use std::collections::BTreeSet;
use syn::spanned::Spanned;

/// The longest metric name: OpenTelemetry allows 255 characters, and `.duration` is appended.
const MAX_NAME: usize = 255 - ".duration".len();

/// `#[metric(..)]`'s options.
#[derive(FromMeta, Default)]
struct Args {
    name: Option<SpannedValue<String>>,
    #[darling(default)]
    labels: Labels,
    #[darling(default)]
    arg_labels: PathList,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

/// `labels(key = "value", ..)`: constant labels, kept with their spans; an entry of another
/// form is kept too and reported by [`validate`], with the other mistakes.
#[derive(Default)]
struct Labels {
    constants: Vec<(syn::Ident, syn::LitStr)>,
    malformed: Vec<NestedMeta>,
}

impl FromMeta for Labels {
    fn from_list(items: &[NestedMeta]) -> darling::Result<Self> {
        let mut labels = Self::default();
        for item in items {
            let constant = match item {
                NestedMeta::Meta(syn::Meta::NameValue(nv)) => {
                    match (nv.path.get_ident(), &nv.value) {
                        (
                            Some(key),
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(value),
                                ..
                            }),
                        ) => Some((key.clone(), value.clone())),
                        _ => None,
                    }
                }
                _ => None,
            };
            match constant {
                Some(constant) => labels.constants.push(constant),
                None => labels.malformed.push(item.clone()),
            }
        }
        Ok(labels)
    }
}

/// A label whose value comes from an argument, through `dtx::telemetry::MetricLabel`.
struct ArgLabel {
    ident: syn::Ident,
    ty: syn::Type,
}

/// The validated model the expansion is built from.
struct Model {
    krate: syn::Path,
    f: syn::ItemFn,
    name: Option<String>,
    labels: Vec<(String, String)>,
    arg_labels: Vec<ArgLabel>,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(model) => generate(&model),
        Err(errors) => crate::common::fallback(item, &errors, &[]),
    }
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<Model> {
    let mut errors = darling::Error::accumulator();
    let args = errors.handle(crate::common::options::<Args>(args));
    let Ok(f) = syn::parse2::<syn::ItemFn>(item.clone()) else {
        let span = syn::parse2::<syn::Item>(item).map_or_else(|_| Span::call_site(), |i| i.span());
        errors.push(
            darling::Error::custom(
                "`#[dtx::metric]` goes on a `fn` or `async fn` (free or method); to count \
                 something else, call an OpenTelemetry counter where it happens",
            )
            .with_span(&span),
        );
        return Err(errors.finish().expect_err("an error was pushed"));
    };
    let Some(args) = args else {
        return Err(errors.finish().expect_err("argument errors were reported"));
    };
    let (labels, arg_labels) = validate(&args, &f, &mut errors);
    errors.finish()?;
    Ok(Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        name: args.name.map(|n| (*n).clone()),
        labels,
        arg_labels,
        f,
    })
}

/// Every broken rule reported: a valid name, unique label keys, `outcome` reserved, argument
/// labels naming arguments of bounded types.
fn validate(
    args: &Args,
    f: &syn::ItemFn,
    errors: &mut darling::error::Accumulator,
) -> (Vec<(String, String)>, Vec<ArgLabel>) {
    if let Some(name) = &args.name
        && let Some(problem) = name_problem(name)
    {
        errors.push(darling::Error::custom(problem).with_span(&name.span()));
    }
    if let Some(constness) = &f.sig.constness {
        errors.push(
            darling::Error::custom(
                "`#[dtx::metric]` cannot measure a `const fn`: clocks are not const; remove `const`",
            )
            .with_span(constness),
        );
    }
    let mut keys = BTreeSet::new();
    let mut check_key = |key: &syn::Ident, errors: &mut darling::error::Accumulator| {
        let text = key.to_string();
        if text == "outcome" {
            errors.push(
                darling::Error::custom(
                    "`outcome` is the label dtx sets to `ok` or `error` on a `Result`-returning \
                     function's calls; give your label another name",
                )
                .with_span(key),
            );
            false
        } else if !keys.insert(text) {
            errors.push(
                darling::Error::custom(format!(
                    "label `{key}` is listed twice; a label has one value per call"
                ))
                .with_span(key),
            );
            false
        } else {
            true
        }
    };
    for item in &args.labels.malformed {
        errors.push(
            darling::Error::custom(
                "a constant label is `key = \"value\"` with a string literal, e.g. \
                 `labels(service = \"payments\")`; to label calls by an argument, list the \
                 argument in `arg_labels(..)`",
            )
            .with_span(item),
        );
    }
    let mut labels = Vec::new();
    for (key, value) in &args.labels.constants {
        if check_key(key, errors) {
            labels.push((key.to_string(), value.value()));
        }
    }
    let arguments = crate::common::typed_arguments(&f.sig);
    let mut arg_labels = Vec::new();
    for path in args.arg_labels.iter() {
        let found = path.get_ident().and_then(|key| {
            arguments
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, ty)| (key, ty))
        });
        let Some((ident, ty)) = found else {
            let listed = if arguments.is_empty() {
                "the function has no arguments that can label its calls".to_owned()
            } else {
                let names: Vec<String> = arguments.iter().map(|(a, _)| format!("`{a}`")).collect();
                format!("its arguments are {}", names.join(", "))
            };
            errors.push(
                darling::Error::custom(format!(
                    "`{}` names no argument of `{}`: `arg_labels(..)` lists arguments whose \
                     value labels each call ({listed})",
                    path.to_token_stream(),
                    f.sig.ident,
                ))
                .with_span(path),
            );
            continue;
        };
        if let Some(kind) = unbounded(ty) {
            errors.push(
                darling::Error::custom(format!(
                    "`{ident}` cannot label the metric: it is {kind}, so every distinct value \
                     would make a new time series without bound; map it to an enum that \
                     implements `dtx::telemetry::MetricLabel` (a fixed set of `&'static str`) \
                     and pass that, or put a constant in `labels({ident} = \"..\")`"
                ))
                .with_span(path),
            );
            continue;
        }
        if check_key(ident, errors) {
            arg_labels.push(ArgLabel {
                ident: ident.clone(),
                ty: ty.clone(),
            });
        }
    }
    (labels, arg_labels)
}

/// Why `name` is not a usable OpenTelemetry instrument name, if it is not.
fn name_problem(name: &str) -> Option<String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if name.trim().is_empty() {
        Some(
            "a metric needs a name: `name = \"..\"` is empty (e.g. `name = \"payments.charge\"`)"
                .into(),
        )
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some(format!(
            "metric name `{name}` must start with a letter (e.g. `name = \"payments.charge\"`)"
        ))
    } else if let Some(c) = name.chars().find(|c| !valid(*c)) {
        Some(format!(
            "metric name `{name}` contains `{c}`: OpenTelemetry names use letters, digits, `_`, \
             `.`, `-` and `/` (e.g. `name = \"{}\"`)",
            name.replace("::", ".").replace(|c: char| !valid(c), "_")
        ))
    } else if name.len() > MAX_NAME {
        Some(format!(
            "metric name is {} characters long; at most {MAX_NAME} fit (OpenTelemetry's limit \
             is 255, and `.duration` is appended)",
            name.len()
        ))
    } else {
        None
    }
}

/// If `ty` is a type whose values are unbounded (text, numbers, ids), what it is.
fn unbounded(ty: &syn::Type) -> Option<&'static str> {
    match ty {
        syn::Type::Reference(r) => unbounded(&r.elem),
        syn::Type::Paren(p) => unbounded(&p.elem),
        syn::Type::Group(g) => unbounded(&g.elem),
        syn::Type::Slice(_) | syn::Type::Array(_) => Some("a list"),
        syn::Type::Path(p) => {
            let last = p.path.segments.last()?;
            match last.ident.to_string().as_str() {
                "String" | "str" | "Cow" | "OsString" | "OsStr" | "PathBuf" | "Path" => {
                    Some("text")
                }
                "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64"
                | "i128" | "isize" | "f32" | "f64" => Some("a number"),
                "Uuid" | "Id" => Some("an id"),
                "Box" | "Rc" | "Arc" => {
                    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                        return None;
                    };
                    args.args.iter().find_map(|arg| match arg {
                        syn::GenericArgument::Type(inner) => unbounded(inner),
                        _ => None,
                    })
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        krate,
        f,
        name,
        labels,
        arg_labels,
    } = model;
    let site = syn::Ident::new("__DTX_METRIC", Span::mixed_site());
    let here = syn::Ident::new("__dtx_here", Span::mixed_site());
    let start = syn::Ident::new("__dtx_start", Span::mixed_site());
    let ret = syn::Ident::new("__dtx_ret", Span::mixed_site());
    let values = syn::Ident::new("__dtx_labels", Span::mixed_site());
    let name = name.as_ref().map_or_else(
        || quote!(::core::option::Option::None),
        |name| quote!(::core::option::Option::Some(#name)),
    );
    let constant = labels.iter().map(|(k, v)| quote!((#k, #v)));
    let keys = arg_labels.iter().map(|a| a.ident.to_string());
    let count = arg_labels.len();
    // The argument's type must be a bounded label: checked under the type's span.
    let label_values = arg_labels.iter().map(|ArgLabel { ident, ty }| {
        quote_spanned! {ty.span()=>
            #krate::__private::metric_label::<#ty>(&#ident)
        }
    });
    let block = &f.block;
    let annotated = crate::common::nameable(&f.sig.output).map(|ty| quote!(: #ty));
    let run = if f.sig.asyncness.is_some() {
        quote! {
            async move {
                let #ret #annotated = #block;
                #ret
            }
            .await
        }
    } else {
        let returns = crate::common::nameable(&f.sig.output).map(|ty| quote!(-> #ty));
        quote! {
            {
                #[allow(clippy::redundant_closure_call)]
                (move || #returns #block)()
            }
        }
    };
    let syn::ItemFn {
        attrs, vis, sig, ..
    } = f;
    quote! {
        #(#attrs)*
        #vis #sig {
            #[allow(unused_imports)]
            use #krate::__private::{MetricResult as _, MetricPlain as _};
            fn #here() -> &'static str {
                ::core::any::type_name_of_val(&#here)
            }
            static #site: #krate::__private::MetricSite = #krate::__private::MetricSite::new(
                #name,
                #here,
                &[#(#constant),*],
                &[#(#keys),*],
            );
            let #values: [&'static str; #count] = [#(#label_values),*];
            let #start = #krate::__private::metric_start();
            let #ret = #run;
            #site.record(
                #start,
                (&&#krate::__private::MetricOutcome(&#ret)).__dtx_outcome(),
                &#values,
            );
            #ret
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
    }

    #[test]
    fn expansion_async() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(labels(service = "payments"), arg_labels(method)),
            quote! {
                pub async fn charge(method: Method, card: &Card) -> Result<Receipt, PaymentError> {
                    payments.charge(method, card).await
                }
            },
        )));
    }

    #[test]
    fn expansion_sync_named() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(name = "pricing.quote", crate = ::my_dtx),
            quote! {
                fn quote(&self, sku: &str) -> u64 {
                    self.prices[sku]
                }
            },
        )));
    }

    #[test]
    fn names() {
        assert_eq!(super::name_problem("payments.charge"), None);
        assert!(super::name_problem("").is_some());
        assert!(super::name_problem("1st").is_some());
        assert!(
            super::name_problem("payments::charge")
                .is_some_and(|p| p.contains("`name = \"payments.charge\"`"))
        );
        assert!(super::name_problem(&"a".repeat(250)).is_some());
    }
}
