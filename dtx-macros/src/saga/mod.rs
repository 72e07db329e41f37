//! `#[saga]` on an `impl` block over a saga's data struct, with `#[step(..)]` methods.

use darling::FromMeta;
use darling::ast::NestedMeta;
use darling::util::SpannedValue;
use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use std::collections::{HashMap, HashSet};
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
    await_timeout_secs: Option<SpannedValue<u64>>,
}

/// What a suggested step or compensation looks like after its name.
const SIGNATURE: &str = "(&mut self, ctx: &StepContext) -> Result<(), StepError>";

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
    crate::common::fallback(item, errors, &["step"])
}

fn strip_steps(imp: &mut syn::ItemImpl) {
    crate::common::strip_method_attributes(imp, &["step"]);
}

/// What a checked method is, for its messages: a step, or the compensation of one.
#[derive(Clone, Copy)]
enum Role<'a> {
    Step,
    Compensation { of: &'a syn::Ident },
}

impl Role<'_> {
    /// The subject of a message about `method`.
    fn subject(self, method: &syn::Ident) -> String {
        match self {
            Role::Step => format!("saga step `{method}`"),
            Role::Compensation { of } => format!("`{method}`, the compensation of step `{of}`,"),
        }
    }
}

/// `Some(true)` for `&StepContext`, `Some(false)` for a `StepContext` taken another way.
fn context_type(ty: &syn::Type) -> Option<bool> {
    let (shared, ty) = match ty {
        syn::Type::Reference(r) => (r.mutability.is_none(), &*r.elem),
        ty => (false, ty),
    };
    match ty {
        syn::Type::Path(p) if p.path.segments.last()?.ident == "StepContext" => Some(shared),
        _ => None,
    }
}

/// Checks a step or compensation signature:
/// `async fn name(&mut self[, ctx: &StepContext]) -> Result<T, E>`.
fn check_signature(f: &syn::ImplItemFn, role: Role<'_>, errors: &mut darling::error::Accumulator) {
    let sig = &f.sig;
    let name = &sig.ident;
    let subject = role.subject(name);
    if sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} must be an `async fn` (it calls other services): \
                 write `async fn {name}(..)`"
            ))
            .with_span(&sig.fn_token),
        );
    }
    if let Some(param) = sig.generics.params.first() {
        errors.push(
            darling::Error::custom(format!(
                "{subject} cannot be generic: the saga runs it with its data and context only; \
                 remove the parameters"
            ))
            .with_span(param),
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(syn::FnArg::Receiver(r)) => {
            if !matches!(&*r.ty, syn::Type::Reference(t) if t.mutability.is_some()) {
                errors.push(
                    darling::Error::custom(format!(
                        "{subject} takes `&mut self`: it updates the saga's data, which is stored \
                         after every step; write `async fn {name}(&mut self, ..)`"
                    ))
                    .with_span(&r.self_token),
                );
            }
            for (i, arg) in inputs.enumerate() {
                let syn::FnArg::Typed(arg) = arg else {
                    continue;
                };
                match (i, context_type(&arg.ty)) {
                    (0, Some(true)) => {}
                    (0, Some(false)) => errors.push(
                        darling::Error::custom(format!(
                            "{subject} borrows the step context: write `ctx: &StepContext`"
                        ))
                        .with_span(&arg.ty),
                    ),
                    _ => errors.push(
                        darling::Error::custom(format!(
                            "{subject} takes `&mut self` and, optionally, `ctx: &StepContext`: \
                             remove this argument (keep inputs in the saga's data; reach \
                             services with `ctx.state::<T>()`)"
                        ))
                        .with_span(&arg.pat),
                    ),
                }
            }
        }
        first => errors.push(
            darling::Error::custom(format!(
                "{subject} is a method of the saga's data: write `async fn {name}(&mut self, ..)`"
            ))
            .with_span(&first.map_or_else(|| name.span(), Spanned::span)),
        ),
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        errors.push(
            darling::Error::custom(format!(
                "{subject} returns `Result<(), E>`, or `Result<Events, E>` to record events: \
                 write `async fn {name}(..) -> Result<(), StepError>`"
            ))
            .with_span(name),
        );
    }
}

/// `fn __dtx_<method>(saga, ctx) -> StepFuture<StepResult>`: calls the step or compensation
/// `method` of the saga's data and encodes what it returns.
fn adapter_fn(
    krate: &syn::Path,
    self_ty: &syn::Type,
    method: &syn::ImplItemFn,
) -> (syn::Ident, TokenStream) {
    let m = &method.sig.ident;
    let name = format_ident!("__dtx_{}", m);
    let ctx = (method.sig.inputs.len() > 1).then(|| quote!(__dtx_ctx));
    let call = quote_spanned!(m.span()=> __dtx_saga.#m(#ctx).await);
    // A method returning neither `()` nor events is reported under its `Ok` type.
    let output = output_span(&method.sig);
    let step_result = crate::common::respan(quote!(#krate::__private::step_result), output);
    let result = quote_spanned!(output=> #step_result(__dtx_output, __dtx_ctx));
    let tokens = quote! {
        fn #name<'a>(
            __dtx_saga: &'a mut #self_ty,
            __dtx_ctx: &'a #krate::__private::StepContext,
        ) -> #krate::__private::StepFuture<'a, #krate::saga::StepResult> {
            ::std::boxed::Box::pin(async move {
                let __dtx_output = #call;
                #result
            })
        }
    };
    (name, tokens)
}

/// The token an error about a step's output goes under: `T` in `Result<T, E>`, else the return
/// type (a diagnostic spans one token on stable Rust).
fn output_span(sig: &syn::Signature) -> Span {
    let syn::ReturnType::Type(_, ty) = &sig.output else {
        return sig.ident.span();
    };
    if let syn::Type::Path(path) = &**ty
        && let Some(segment) = path.path.segments.last()
        && let syn::PathArguments::AngleBracketed(args) = &segment.arguments
        && let Some(syn::GenericArgument::Type(ok)) = args.args.first()
    {
        return ok.span();
    }
    ty.span()
}

#[allow(clippy::too_many_lines, reason = "validation rules one after another")]
fn parse(args: TokenStream, item: TokenStream) -> darling::Result<TokenStream> {
    let mut errors = darling::Error::accumulator();
    let args = errors
        .handle(
            NestedMeta::parse_meta_list(args)
                .map_err(darling::Error::from)
                .and_then(|list| Args::from_list(&list)),
        )
        .unwrap_or_default();
    let mut imp = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Impl(imp) => imp,
        other => {
            let (what, data, span) = match &other {
                syn::Item::Struct(s) => ("the struct", s.ident.to_string(), s.struct_token.span),
                syn::Item::Enum(e) => ("the enum", e.ident.to_string(), e.enum_token.span),
                syn::Item::Fn(f) => ("a function", "Data".to_owned(), f.sig.fn_token.span),
                other => ("this item", "Data".to_owned(), other.span()),
            };
            errors.push(
                darling::Error::custom(format!(
                    "`#[saga]` goes on the `impl` block of the saga's data, not on {what}: \
                     write `#[saga] impl {data} {{ #[step] async fn first_step(&mut self, ..) .. \
                     }}`"
                ))
                .with_span(&span),
            );
            return Err(errors.finish().expect_err("an error was pushed"));
        }
    };
    let krate = crate::common::crate_path(args.krate.as_ref());
    if let Some(param) = imp.generics.params.first() {
        errors.push(
            darling::Error::custom(
                "a saga cannot be generic: workers resume it by its name alone, so its data is \
                 one concrete type; remove the type parameters",
            )
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
    if name.is_empty() || name.chars().any(char::is_control) {
        let span = args
            .name
            .as_ref()
            .map_or_else(|| imp.self_ty.span(), SpannedValue::span);
        errors.push(
            darling::Error::custom(
                "a saga name must be non-empty text without control characters: workers resume \
                 sagas by it",
            )
            .with_span(&span),
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
    let is_step = |f: &syn::ImplItemFn| f.attrs.iter().any(|a| a.path().is_ident("step"));
    let mut steps: Vec<Step> = Vec::new();
    let mut any_step = false;
    // Step names with the method that has each, and the compensations checked already.
    let mut names: HashMap<String, &syn::Ident> = HashMap::new();
    let mut checked: HashSet<String> = HashSet::new();
    for member in &imp.items {
        let syn::ImplItem::Fn(f) = member else {
            continue;
        };
        let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("step")) else {
            continue;
        };
        any_step = true;
        let method = &f.sig.ident;
        check_signature(f, Role::Step, &mut errors);
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
        let step_name = step_args
            .name
            .as_ref()
            .map_or_else(|| method.to_string(), |n| (**n).clone());
        let span = step_args
            .name
            .as_ref()
            .map_or_else(|| method.span(), SpannedValue::span);
        if let Some(first) = names.insert(step_name.clone(), method) {
            errors.push(
                darling::Error::custom(format!(
                    "step `{method}` is named `{step_name}` like step `{first}`: names \
                     identify the completed steps of stored sagas, so give each step its own \
                     `#[step(name = \"..\")]`"
                ))
                .with_span(&span),
            );
        }
        if let Some(compensation) = &step_args.compensate {
            match methods.get(&compensation.to_string()) {
                Some(c) if is_step(c) => errors.push(
                    darling::Error::custom(format!(
                        "`{compensation}` is a step, so it cannot also undo step `{method}`: \
                         compensate with a method without `#[step]`, e.g. `async fn \
                         undo_{method}{SIGNATURE}`"
                    ))
                    .with_span(compensation),
                ),
                Some(c) => {
                    if checked.insert(compensation.to_string()) {
                        check_signature(c, Role::Compensation { of: method }, &mut errors);
                    }
                }
                None => errors.push(
                    darling::Error::custom(format!(
                        "no method `{compensation}` in this impl to compensate step `{method}`: \
                         add `async fn {compensation}{SIGNATURE}` that undoes it"
                    ))
                    .with_span(compensation),
                ),
            }
        }
        let await_event = match (&step_args.await_event, &step_args.await_timeout_secs) {
            (Some(event), Some(timeout)) => Some(((**event).clone(), **timeout)),
            (Some(event), None) => {
                errors.push(
                    darling::Error::custom(format!(
                        "an awaited event needs a deadline, after which the saga compensates: \
                         write `#[step(await_event = {:?}, await_timeout_secs = N)]`",
                        **event
                    ))
                    .with_span(&event.span()),
                );
                None
            }
            (None, Some(timeout)) => {
                errors.push(
                    darling::Error::custom(
                        "`await_timeout_secs` is how long the step waits for its `await_event`: \
                         add `await_event = \"EventType\"`, or remove it",
                    )
                    .with_span(&timeout.span()),
                );
                None
            }
            (None, None) => None,
        };
        steps.push(Step {
            name: step_name,
            method: method.clone(),
            compensation: step_args.compensate.clone(),
            retries: step_args.retries,
            await_event,
        });
    }
    if !any_step {
        let example = imp
            .items
            .iter()
            .find_map(|i| match i {
                syn::ImplItem::Fn(f) => Some(f.sig.ident.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "first_step".to_owned());
        errors.push(
            darling::Error::custom(format!(
                "a saga needs at least one step: mark its steps, in order, with `#[step]`, \
                 e.g. `#[step] async fn {example}{SIGNATURE}`"
            ))
            .with_span(&imp.self_ty),
        );
    }
    errors.finish()?;
    // One adapter `fn` per step and compensation method, from the method to a `StepFn`.
    let mut adapters = Vec::new();
    let mut adapter_names: HashMap<String, syn::Ident> = HashMap::new();
    let mut adapter = |m: &syn::Ident| {
        adapter_names
            .entry(m.to_string())
            .or_insert_with(|| {
                let (name, tokens) = adapter_fn(&krate, &self_ty, methods[&m.to_string()]);
                adapters.push(tokens);
                name
            })
            .clone()
    };
    let adds: Vec<TokenStream> = steps
        .iter()
        .map(|step| {
            let Step {
                name,
                method,
                compensation,
                retries,
                await_event,
            } = step;
            let action = adapter(method);
            let awaits = await_event.as_ref().map(|(event, secs)| {
                let secs = Literal::u64_unsuffixed(*secs);
                quote!(.await_event(#event, ::core::time::Duration::from_secs(#secs)))
            });
            let retries = retries.map(|r| {
                let r = Literal::u32_unsuffixed(r);
                quote!(.step_retries(#r))
            });
            let compensation = compensation.as_ref().map(|c| {
                let c = adapter(c);
                quote!(.add_compensation(#name, #c))
            });
            quote! {
                .add_step(#name, #action)
                #awaits
                #retries
                #compensation
            }
        })
        .collect();
    strip_steps(&mut imp);
    let max_retries = args.max_retries.map(Literal::u32_unsuffixed);
    let max_retries = max_retries.map(|r| quote!(.max_retries(#r)));
    let step_timeout = args.step_timeout_secs.map(Literal::u64_unsuffixed);
    let step_timeout =
        step_timeout.map(|s| quote!(.step_timeout(::core::time::Duration::from_secs(#s))));
    let deadline = args.deadline_secs.map(Literal::u64_unsuffixed);
    let deadline = deadline.map(|s| quote!(.deadline(::core::time::Duration::from_secs(#s))));
    let items = quote! {
        #(#adapters)*

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

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::quote;

    fn pretty(tokens: TokenStream) -> String {
        prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
    }

    #[test]
    fn saga_with_options_and_compensation() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(
                name = "OrderFulfillment",
                max_retries = 3,
                step_timeout_secs = 30,
                deadline_secs = 86400,
            ),
            quote! {
                impl Fulfillment {
                    #[step(compensate = release_stock, retries = 5)]
                    async fn reserve_stock(&mut self, ctx: &StepContext) -> Result<(), StepError> {
                        let warehouse = warehouse(ctx)?;
                        self.reservation = Some(warehouse.reserve(&ctx.idempotency_key()).await?);
                        Ok(())
                    }

                    async fn release_stock(&mut self) -> Result<(), StepError> {
                        self.reservation = None;
                        Ok(())
                    }

                    #[step(
                        name = "PAY",
                        await_event = "PaymentConfirmed",
                        await_timeout_secs = 600,
                    )]
                    async fn request_payment(&mut self) -> Result<FulfillmentEvent, StepError> {
                        let requested = PaymentRequested { cents: self.total };
                        Ok(FulfillmentEvent::PaymentRequested(requested))
                    }
                }
            },
        )));
    }
}
