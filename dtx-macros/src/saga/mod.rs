//! `#[saga]` on an `impl` block over a saga's data struct, with `#[step(..)]` methods.

use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use std::collections::HashMap;
use syn::spanned::Spanned;

#[derive(FromMeta, Default)]
struct Args {
    name: Option<SpannedValue<String>>,
    max_retries: Option<u32>,
    step_timeout_secs: Option<u64>,
    deadline_secs: Option<u64>,
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

#[derive(FromMeta, Default)]
struct StepArgs {
    name: Option<SpannedValue<String>>,
    compensate: Option<syn::Ident>,
    retries: Option<u32>,
    await_event: Option<SpannedValue<String>>,
    await_timeout_secs: Option<u64>,
}

/// One validated step.
struct Step {
    name: String,
    method: syn::Ident,
    compensation: Option<syn::Ident>,
    retries: Option<u32>,
    await_event: Option<(String, u64)>,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(tokens) => tokens,
        Err(errors) => fallback(item, &errors),
    }
}

/// The errors plus the user's item without `#[step]` attributes.
fn fallback(item: TokenStream, errors: &darling::Error) -> TokenStream {
    let mut tokens = errors.clone().write_errors();
    match syn::parse2::<syn::ItemImpl>(item.clone()) {
        Ok(mut imp) => {
            strip_steps(&mut imp);
            imp.to_tokens(&mut tokens);
        }
        Err(_) => tokens.extend(item),
    }
    tokens
}

fn strip_steps(imp: &mut syn::ItemImpl) {
    for member in &mut imp.items {
        if let syn::ImplItem::Fn(f) = member {
            f.attrs.retain(|a| !a.path().is_ident("step"));
        }
    }
}

/// Checks a step or compensation signature: `async fn name(&mut self[, ctx: &StepContext]) -> Result<..>`.
fn check_signature(
    f: &syn::ImplItemFn,
    what: &str,
    errors: &mut darling::error::Accumulator,
) -> bool {
    let sig = &f.sig;
    let mut ok = true;
    let shape = "`async fn name(&mut self, ctx: &StepContext) -> Result<(), E>`";
    if sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "a saga {what} must be async (it calls other services): write {shape}"
            ))
            .with_span(&sig.fn_token),
        );
        ok = false;
    }
    if let Some(param) = sig.generics.params.first() {
        errors.push(
            darling::Error::custom(format!("a saga {what} cannot be generic")).with_span(param),
        );
        ok = false;
    }
    match sig.receiver() {
        Some(r) if r.reference.is_some() && r.mutability.is_some() => {}
        Some(r) => {
            errors.push(
                darling::Error::custom(format!(
                    "a saga {what} takes `&mut self` (it updates the saga's data): write {shape}"
                ))
                .with_span(r),
            );
            ok = false;
        }
        None => {
            errors.push(
                darling::Error::custom(format!("a saga {what} takes `&mut self`: write {shape}"))
                    .with_span(&sig.ident),
            );
            ok = false;
        }
    }
    let extra: Vec<&syn::FnArg> = sig.inputs.iter().skip(1).collect();
    let ctx_ok = match extra.as_slice() {
        [] => true,
        [syn::FnArg::Typed(arg)] => matches!(&*arg.ty, syn::Type::Reference(r)
            if r.mutability.is_none() && matches!(&*r.elem, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "StepContext"))),
        _ => false,
    };
    if !ctx_ok {
        let span = extra.first().map_or_else(|| sig.ident.span(), |a| a.span());
        errors.push(
            darling::Error::custom(format!(
                "after `&mut self` a saga {what} takes only `ctx: &StepContext`: write {shape}"
            ))
            .with_span(&span),
        );
        ok = false;
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        errors.push(
            darling::Error::custom(format!(
                "a saga {what} returns `Result<(), E>` (or events): write {shape}"
            ))
            .with_span(&sig.ident),
        );
        ok = false;
    }
    ok
}

#[allow(clippy::too_many_lines, reason = "validation rules one after another")]
fn parse(args: TokenStream, item: TokenStream) -> darling::Result<TokenStream> {
    let args = Args::from_list(&NestedMeta::parse_meta_list(args)?)?;
    let mut imp = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Impl(imp) => imp,
        other => {
            return Err(darling::Error::custom(
                "`#[saga]` goes on the `impl` block of the saga's data struct, with one `#[step]` method per step",
            )
            .with_span(&other));
        }
    };
    let krate = crate::common::crate_path(args.krate.as_ref());
    let mut errors = darling::Error::accumulator();
    if let Some(param) = imp.generics.params.first() {
        errors.push(
            darling::Error::custom("a saga cannot be generic: workers resume it by its name")
                .with_span(param),
        );
    }
    let self_ty = (*imp.self_ty).clone();
    let default_name = match &self_ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
    .unwrap_or_default();
    let name = args.name.as_ref().map_or(default_name, |n| (**n).clone());
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        errors.push(
            darling::Error::custom("a saga name must be non-empty text").with_span(&imp.self_ty),
        );
    }

    let methods: HashMap<String, &syn::ImplItemFn> = imp
        .items
        .iter()
        .filter_map(|i| match i {
            syn::ImplItem::Fn(f) => Some((f.sig.ident.to_string(), f)),
            _ => None,
        })
        .collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut names: HashMap<String, Span> = HashMap::new();
    for member in &imp.items {
        let syn::ImplItem::Fn(f) = member else {
            continue;
        };
        let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("step")) else {
            continue;
        };
        let step_args = match &attr.meta {
            syn::Meta::Path(_) => StepArgs::default(),
            meta => match meta
                .require_list()
                .map_err(darling::Error::from)
                .and_then(|l| StepArgs::from_list(&NestedMeta::parse_meta_list(l.tokens.clone())?))
            {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        check_signature(f, "step", &mut errors);
        let step_name = step_args
            .name
            .as_ref()
            .map_or_else(|| f.sig.ident.to_string(), |n| (**n).clone());
        let span = step_args
            .name
            .as_ref()
            .map_or_else(|| f.sig.ident.span(), |n| n.span());
        if let Some(first) = names.insert(step_name.clone(), span) {
            let _ = first;
            errors.push(
                darling::Error::custom(format!(
                    "two steps are named `{step_name}`; step names identify completed steps in stored sagas, so each must be unique"
                ))
                .with_span(&span),
            );
        }
        if let Some(compensation) = &step_args.compensate {
            match methods.get(&compensation.to_string()) {
                Some(c) => {
                    if c.attrs.iter().any(|a| a.path().is_ident("step")) {
                        errors.push(
                            darling::Error::custom(format!("`{compensation}` is a step itself; a compensation is a plain method of this impl"))
                                .with_span(compensation),
                        );
                    }
                    check_signature(c, "compensation", &mut errors);
                }
                None => errors.push(
                    darling::Error::custom(format!(
                        "compensation `{compensation}` names no method of this impl; add \
                         `async fn {compensation}(&mut self, ctx: &StepContext) -> Result<(), E>`"
                    ))
                    .with_span(compensation),
                ),
            }
        }
        let await_event = match (&step_args.await_event, step_args.await_timeout_secs) {
            (Some(event), Some(timeout)) => Some(((**event).clone(), timeout)),
            (Some(event), None) => {
                errors.push(
                    darling::Error::custom(
                        "an awaited event needs a deadline: add `await_timeout_secs = N`",
                    )
                    .with_span(&event.span()),
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    darling::Error::custom("`await_timeout_secs` without `await_event = \"..\"`")
                        .with_span(&f.sig.ident),
                );
                None
            }
            (None, None) => None,
        };
        steps.push(Step {
            name: step_name,
            method: f.sig.ident.clone(),
            compensation: step_args.compensate.clone(),
            retries: step_args.retries,
            await_event,
        });
    }
    if steps.is_empty() {
        errors.push(
            darling::Error::custom("a saga needs at least one `#[step]` method, e.g. `#[step(compensate = undo)] async fn do_it(&mut self, ctx: &StepContext) -> Result<(), E>`")
                .with_span(&imp.self_ty),
        );
    }
    errors.finish()?;
    let takes_ctx: HashMap<String, bool> = methods
        .iter()
        .map(|(name, f)| (name.clone(), f.sig.inputs.len() > 1))
        .collect();
    strip_steps(&mut imp);
    let adds = steps.iter().map(|step| {
        let Step { name, method, compensation, retries, await_event } = step;
        let call = |m: &syn::Ident| {
            let args = if takes_ctx.get(&m.to_string()).copied().unwrap_or(false) { quote!(__dtx_ctx) } else { quote!() };
            quote_spanned! {m.span()=>
                |__dtx_saga: &mut #self_ty, __dtx_ctx: &#krate::__private::StepContext| -> #krate::__private::StepFuture<'_, #krate::saga::StepResult> {
                    ::std::boxed::Box::pin(async move {
                        #krate::__private::step_result(__dtx_saga.#m(#args).await, __dtx_ctx)
                    })
                }
            }
        };
        let action = call(method);
        let compensation = compensation.as_ref().map(|c| {
            let f = call(c);
            quote!(.add_compensation(#name, #f))
        });
        let retries = retries.map(|r| quote!(.step_retries(#r)));
        let awaits = await_event.as_ref().map(|(event, secs)| {
            quote!(.await_event(#event, ::core::time::Duration::from_secs(#secs)))
        });
        quote! {
            .add_step(#name, #action)
            #awaits
            #retries
            #compensation
        }
    });
    let max_retries = args.max_retries.map(|r| quote!(.max_retries(#r)));
    let step_timeout = args
        .step_timeout_secs
        .map(|s| quote!(.step_timeout(::core::time::Duration::from_secs(#s))));
    let deadline = args
        .deadline_secs
        .map(|s| quote!(.deadline(::core::time::Duration::from_secs(#s))));
    let items = quote! {
        #[automatically_derived]
        impl #krate::saga::Saga for #self_ty {
            const NAME: &'static str = #name;

            fn definition() -> #krate::saga::SagaDefinition<Self> {
                #krate::saga::SagaBuilder::<Self>::new(#name)
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
                runner: #krate::__private::saga_runner::<#self_ty>,
            }
        }
    };
    let generated = crate::common::dummy_const(&items);
    Ok(quote! {
        #imp
        #generated
    })
}
