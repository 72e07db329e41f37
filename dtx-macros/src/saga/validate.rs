//! Validate: the rules across a saga's options and steps, every mistake reported at once under
//! its own tokens. Produces the model `expand` generates from.

use super::parse::{Input, is_step};
use darling::util::SpannedValue;
use proc_macro2::Span;
use std::collections::{HashMap, HashSet};
use syn::spanned::Spanned;

/// What a suggested step or compensation looks like after its name.
const SIGNATURE: &str = "(&mut self, ctx: &StepContext) -> Result<(), StepError>";

/// A validated saga.
pub(super) struct Model {
    pub(super) krate: syn::Path,
    /// The `impl` block, its `#[step]` attributes removed.
    pub(super) item: syn::ItemImpl,
    pub(super) name: String,
    /// `version = ..`, at least 1 (1 by default).
    pub(super) version: u32,
    pub(super) steps: Vec<Step>,
    pub(super) max_retries: Option<u32>,
    pub(super) step_timeout_secs: Option<u64>,
    pub(super) deadline_secs: Option<u64>,
}

/// One validated step.
pub(super) struct Step {
    pub(super) name: String,
    pub(super) action: Method,
    pub(super) compensation: Option<Method>,
    pub(super) retries: Option<u32>,
    pub(super) await_event: Option<(String, u64)>,
}

/// A step or compensation method, as the adapter that calls it needs it.
#[derive(Clone)]
pub(super) struct Method {
    pub(super) ident: syn::Ident,
    /// Whether it takes `ctx: &StepContext`.
    pub(super) takes_context: bool,
    /// Where an error about its output goes: `T` in `Result<T, E>`, else the return type.
    pub(super) output: Span,
}

impl Method {
    fn new(f: &syn::ImplItemFn) -> Self {
        Self {
            ident: f.sig.ident.clone(),
            takes_context: f.sig.inputs.len() > 1,
            output: output_span(&f.sig),
        }
    }
}

/// Checks every rule, reporting each broken one; the model is used only if none is.
pub(super) fn validate(input: Input, errors: &mut darling::error::Accumulator) -> Model {
    if let Some(param) = input.item.generics.params.first() {
        errors.push(
            darling::Error::custom(
                "a saga cannot be generic: workers resume it by its name alone, so its data is \
                 one concrete type; remove the type parameters",
            )
            .with_span(param),
        );
    }
    let name = input.name();
    if name.is_empty() || name.chars().any(char::is_control) {
        let span = input
            .args
            .name
            .as_ref()
            .map_or_else(|| input.item.self_ty.span(), SpannedValue::span);
        errors.push(
            darling::Error::custom(
                "a saga name must be non-empty text without control characters: workers resume \
                 sagas by it",
            )
            .with_span(&span),
        );
    }
    let version = match &input.args.version {
        Some(v) if **v == 0 => {
            errors.push(
                darling::Error::custom(
                    "saga versions start at 1, the default: remove `version = 0` or write \
                     `version = 1`",
                )
                .with_span(&v.span()),
            );
            1
        }
        Some(v) => **v,
        None => 1,
    };
    let steps = steps(&input, errors);
    if input.steps.is_empty() {
        errors.push(no_steps(&input.item));
    }
    let Input { args, mut item, .. } = input;
    crate::common::strip_method_attributes(&mut item, &["step"]);
    Model {
        krate: crate::common::crate_path(args.krate.as_ref()),
        item,
        name,
        version,
        steps,
        max_retries: args.max_retries,
        step_timeout_secs: args.step_timeout_secs,
        deadline_secs: args.deadline_secs,
    }
}

/// The steps in order, each checked: signature, unique name, compensation, awaited event.
fn steps(input: &Input, errors: &mut darling::error::Accumulator) -> Vec<Step> {
    let mut steps = Vec::new();
    // Step names with the method that has each, and the compensations checked already.
    let mut names: HashMap<String, &syn::Ident> = HashMap::new();
    let mut checked: HashSet<String> = HashSet::new();
    for raw in &input.steps {
        let f = input.method(raw.index);
        let method = &f.sig.ident;
        check_signature(f, Role::Step, errors);
        let Some(args) = &raw.args else {
            continue;
        };
        let step_name = args
            .name
            .as_ref()
            .map_or_else(|| method.to_string(), |n| (**n).clone());
        if let Some(first) = names.insert(step_name.clone(), method) {
            let span = args
                .name
                .as_ref()
                .map_or_else(|| method.span(), SpannedValue::span);
            errors.push(
                darling::Error::custom(format!(
                    "step `{method}` is named `{step_name}` like step `{first}`: names \
                     identify the completed steps of stored sagas, so give each step its own \
                     `#[step(name = \"..\")]`"
                ))
                .with_span(&span),
            );
        }
        let compensation =
            args.compensate
                .as_ref()
                .and_then(|compensation| match input.find(compensation) {
                    Some(c) if is_step(c) => {
                        errors.push(
                        darling::Error::custom(format!(
                            "`{compensation}` is a step, so it cannot also undo step `{method}`: \
                             compensate with a method without `#[step]`, e.g. `async fn \
                             undo_{method}{SIGNATURE}`"
                        ))
                        .with_span(compensation),
                    );
                        None
                    }
                    Some(c) => {
                        if checked.insert(compensation.to_string()) {
                            check_signature(c, Role::Compensation { of: method }, errors);
                        }
                        Some(Method::new(c))
                    }
                    None => {
                        errors.push(
                            darling::Error::custom(format!(
                                "no method `{compensation}` in this impl to compensate step \
                             `{method}`: add `async fn {compensation}{SIGNATURE}` that undoes it"
                            ))
                            .with_span(compensation),
                        );
                        None
                    }
                });
        let await_event = match (&args.await_event, &args.await_timeout_secs) {
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
            action: Method::new(f),
            compensation,
            retries: args.retries,
            await_event,
        });
    }
    steps
}

/// A saga without `#[step]` methods.
fn no_steps(item: &syn::ItemImpl) -> darling::Error {
    let example = item
        .items
        .iter()
        .find_map(|i| match i {
            syn::ImplItem::Fn(f) => Some(f.sig.ident.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "first_step".to_owned());
    darling::Error::custom(format!(
        "a saga needs at least one step: mark its steps, in order, with `#[step]`, e.g. \
         `#[step] async fn {example}{SIGNATURE}`"
    ))
    .with_span(&item.self_ty)
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
