//! `#[command_handler]` on an async fn or on an aggregate's `impl` block.

use super::signature::{self, Signature, Site};
use super::{Kind, fallback, runtime_call};
use darling::FromMeta;
use darling::ast::NestedMeta;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// `#[command_handler(..)]`.
#[derive(FromMeta, Default)]
struct Args {
    #[darling(rename = "crate")]
    krate: Option<syn::Path>,
}

/// `#[command(..)]` on a method of an aggregate's impl block.
#[derive(FromMeta, Default)]
struct MethodArgs {
    target: Option<syn::Ident>,
}

/// A validated `#[command_handler]`.
enum Model {
    /// On a free `async fn`.
    Free(Box<FreeHandler>),
    /// On an aggregate's `impl` block.
    Aggregate(Box<AggregateHandlers>),
}

/// A free `async fn` handler.
struct FreeHandler {
    krate: syn::Path,
    item: syn::ItemFn,
    sig: Signature,
}

/// An aggregate's `impl` block of handlers.
struct AggregateHandlers {
    krate: syn::Path,
    /// The block, its `#[command]` attributes removed.
    item: syn::ItemImpl,
    methods: Vec<Method>,
}

/// What a handler method expects of its aggregate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expects {
    /// No receiver: the command creates the aggregate.
    Create,
    /// `&self`: the aggregate exists.
    Update,
    /// A first argument `Option<&Self>`: either way.
    Upsert,
}

/// One handler method of an aggregate.
struct Method {
    sig: Signature,
    expects: Expects,
    /// The command's field holding the aggregate's id.
    target: syn::Ident,
    /// Where an error about the target field goes: the field named in `#[command(target = ..)]`,
    /// else the command type.
    target_span: Span,
}

pub(super) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(Model::Free(handler)) => expand_free(&handler),
        Ok(Model::Aggregate(handlers)) => expand_aggregate(&handlers),
        Err(errors) => fallback(item, &errors),
    }
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<Model> {
    let mut errors = darling::Error::accumulator();
    let args = errors
        .handle(NestedMeta::parse_meta_list(args).map_err(darling::Error::from))
        .and_then(|list| errors.handle(Args::from_list(&list)))
        .unwrap_or_default();
    let krate = crate::common::crate_path(args.krate.as_ref());
    let model = match syn::parse2::<syn::Item>(item)? {
        syn::Item::Fn(item) => free_fn(krate, item, &mut errors),
        syn::Item::Impl(item) => aggregate_impl(krate, item, &mut errors),
        other => {
            errors.push(
                darling::Error::custom(
                    "`#[command_handler]` goes on an `async fn` handling one command, or on an \
                     aggregate's `impl` block",
                )
                .with_span(&item_keyword(&other)),
            );
            None
        }
    };
    errors
        .finish_with(model)
        .map(|model| model.expect("a missing model was reported"))
}

/// The keyword that introduces an item (`struct`, `enum`, `impl`, ..), where an error about the
/// item as a whole goes.
pub(super) fn item_keyword(item: &syn::Item) -> Span {
    match item {
        syn::Item::Struct(item) => item.struct_token.span,
        syn::Item::Enum(item) => item.enum_token.span,
        syn::Item::Union(item) => item.union_token.span,
        syn::Item::Trait(item) => item.trait_token.span,
        syn::Item::Impl(item) => item.impl_token.span,
        syn::Item::Mod(item) => item.mod_token.span,
        other => other.span(),
    }
}

fn free_fn(
    krate: syn::Path,
    item: syn::ItemFn,
    errors: &mut darling::error::Accumulator,
) -> Option<Model> {
    if item.sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(format!(
                "a free command handler must be an `async fn`: write `async fn {}(..)`; a \
                 synchronous decision on an aggregate's state goes in the aggregate's \
                 `#[command_handler] impl` block",
                item.sig.ident,
            ))
            .with_span(&item.sig.fn_token),
        );
    }
    let sig = signature::analyse(Site::Free(Kind::Command), &item.sig, errors)?;
    Some(Model::Free(Box::new(FreeHandler { krate, item, sig })))
}

/// Every method of an aggregate's `impl` block is a handler of the command it takes.
fn aggregate_impl(
    krate: syn::Path,
    mut item: syn::ItemImpl,
    errors: &mut darling::error::Accumulator,
) -> Option<Model> {
    if let Some(param) = item.generics.params.first() {
        errors.push(
            darling::Error::custom(
                "an aggregate's command handlers cannot be generic: the registry holds one \
                 concrete handler per command type",
            )
            .with_span(param),
        );
    }
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(
            darling::Error::custom(
                "`#[command_handler]` goes on the aggregate's own `impl Aggregate { .. }` block, \
                 not on a trait impl",
            )
            .with_span(path),
        );
    }
    let aggregate = match &*item.self_ty {
        syn::Type::Path(path) if path.qself.is_none() => path.path.segments.last().cloned(),
        _ => None,
    };
    let Some(aggregate) = aggregate else {
        errors.push(
            darling::Error::custom("expected the aggregate's type, e.g. `impl Order { .. }`")
                .with_span(&item.self_ty),
        );
        return None;
    };
    let default_target = format!("{}_id", crate::common::snake_case(&aggregate.ident));
    let mut methods = Vec::new();
    let mut found_methods = false;
    for member in &mut item.items {
        let syn::ImplItem::Fn(method) = member else {
            continue;
        };
        found_methods = true;
        let args = method_args(&mut method.attrs, errors);
        methods.push(aggregate_method(
            method,
            args,
            &aggregate.ident,
            &default_target,
            errors,
        ));
    }
    if !found_methods {
        errors.push(
            darling::Error::custom(
                "this `impl` block has no methods; each method of a `#[command_handler]` block \
                 handles one command",
            )
            .with_span(&item.impl_token),
        );
    }
    let methods = methods.into_iter().collect::<Option<Vec<_>>>()?;
    Some(Model::Aggregate(Box::new(AggregateHandlers {
        krate,
        item,
        methods,
    })))
}

/// Removes the method's `#[command(..)]` attributes and parses them.
fn method_args(
    attrs: &mut Vec<syn::Attribute>,
    errors: &mut darling::error::Accumulator,
) -> MethodArgs {
    let mut args = MethodArgs::default();
    attrs.retain(|attr| {
        if !attr.path().is_ident("command") {
            return true;
        }
        let parsed = attr
            .meta
            .require_list()
            .map_err(darling::Error::from)
            .and_then(|list| Ok(NestedMeta::parse_meta_list(list.tokens.clone())?))
            .and_then(|list| MethodArgs::from_list(&list));
        if let Some(parsed) = errors.handle(parsed) {
            args = parsed;
        }
        false
    });
    args
}

/// Whether `ty` is `Option<&Self>` or `Option<&Aggregate>`: the state of a create-or-update
/// handler.
fn is_optional_state(ty: &syn::Type, aggregate: &syn::Ident) -> bool {
    let syn::Type::Path(path) = ty else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(generics) = &last.arguments else {
        return false;
    };
    let [syn::GenericArgument::Type(syn::Type::Reference(inner))] =
        generics.args.iter().collect::<Vec<_>>()[..]
    else {
        return false;
    };
    let syn::Type::Path(state) = &*inner.elem else {
        return false;
    };
    last.ident == "Option"
        && inner.mutability.is_none()
        && (state.path.is_ident("Self") || state.path.is_ident(aggregate))
}

fn aggregate_method(
    method: &syn::ImplItemFn,
    args: MethodArgs,
    aggregate: &syn::Ident,
    default_target: &str,
    errors: &mut darling::error::Accumulator,
) -> Option<Method> {
    let name = &method.sig.ident;
    let receiver = method.sig.receiver();
    if let Some(receiver) = receiver {
        let wrong = match (&receiver.reference, &receiver.mutability) {
            (Some(_), Some(mutability)) => Some(mutability.span),
            (None, _) => Some(receiver.self_token.span),
            (Some(_), None) => None,
        };
        if let Some(span) = wrong {
            errors.push(
                darling::Error::custom(format!(
                    "an aggregate's command handler decides from `&self` and returns events; it \
                     never changes the state itself: write `fn {name}(&self, ..)`",
                ))
                .with_span(&span),
            );
        }
    }
    if let Some(asyncness) = method.sig.asyncness {
        errors.push(
            darling::Error::custom(
                "an aggregate's command handler is a synchronous decision (it runs again after a \
                 version conflict): remove `async`, and do I/O in a free `#[command_handler] \
                 async fn`",
            )
            .with_span(&asyncness),
        );
    }
    // `fn decide(state: Option<&Self>, cmd: C, ..)`: create or update.
    let mut analysed = method.sig.clone();
    let upsert = receiver.is_none()
        && matches!(
            analysed.inputs.first(),
            Some(syn::FnArg::Typed(arg)) if is_optional_state(&arg.ty, aggregate)
        );
    if upsert {
        analysed.inputs = analysed.inputs.into_iter().skip(1).collect();
    }
    let sig = signature::analyse(Site::AggregateMethod, &analysed, errors)?;
    let (target, target_span) = if let Some(target) = args.target {
        let span = target.span();
        (target, span)
    } else {
        let span = sig.message.ty.span();
        // At the command type, but marked as generated: rustc then reports a missing field
        // there without suggesting to rename the type.
        let field = syn::Ident::new(default_target, Span::mixed_site().located_at(span));
        (field, span)
    };
    let expects = match (receiver, upsert) {
        (Some(_), _) => Expects::Update,
        (None, true) => Expects::Upsert,
        (None, false) => Expects::Create,
    };
    Some(Method {
        sig,
        expects,
        target,
        target_span,
    })
}

// ---------------------------------------------------------------------------------------------
// Expansion

fn expand_free(handler: &FreeHandler) -> TokenStream {
    let FreeHandler { krate, item, sig } = handler;
    let Signature {
        ident,
        message,
        output,
        ..
    } = sig;
    let command = &message.ty;
    let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
    let (lets, extras) = signature::extras(sig, &ctx, false);
    let pass = if message.by_ref {
        quote!(&__dtx_command)
    } else {
        quote!(__dtx_command)
    };
    let validate = validate(krate, command, &quote!(&__dtx_command));
    let result = runtime_call(
        krate,
        output.span(),
        &quote!(command_result::<#command, _>),
        quote!(#ident(#pass #(, #extras)*).await),
    );
    let handler = quote! {
        fn __dtx_handler() -> #krate::__private::BoxedCommandHandler {
            #krate::__private::command_fn(
                |__dtx_command: #command, #ctx: #krate::cqrs::CommandContext| async move {
                    #validate?;
                    #(#lets)*
                    #result
                },
            )
        }
    };
    let states = format_ident!("__dtx_states");
    let (states_fn, states) = signature::states(krate, sig, &states);
    let registration = registration(
        krate,
        command,
        &ident.to_string(),
        ident.span(),
        &states,
        &format_ident!("__dtx_handler"),
        &format_ident!("__DTX_REGISTRATION"),
    );
    let validate_traits = validate_traits(krate);
    let command_impl = command_impl(krate, command, &super::ok_type(krate, output));
    let generated = crate::common::dummy_const(&quote! {
        #validate_traits
        #command_impl
        #handler
        #states_fn
        #registration
    });
    quote! {
        #item
        #generated
    }
}

fn expand_aggregate(handlers: &AggregateHandlers) -> TokenStream {
    let AggregateHandlers {
        krate,
        item,
        methods,
    } = handlers;
    let aggregate = &item.self_ty;
    let handlers = methods.iter().map(|method| {
        let Signature {
            ident,
            message,
            output,
            ..
        } = &method.sig;
        let command = &message.ty;
        let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
        let (lets, extras) = signature::extras(&method.sig, &ctx, true);
        let pass = if message.by_ref {
            quote!(__dtx_command)
        } else {
            runtime_call(
                krate,
                command.span(),
                &quote!(command_for_decision::<#command>),
                quote!(__dtx_command),
            )
        };
        let state = (method.expects != Expects::Create).then(|| quote!(__dtx_state,));
        // The decision is bound at the return type, where rustc reports it if it is not a
        // `Result` of this aggregate's events.
        let decision = syn::Ident::new("__dtx_decision", output.span());
        let decided = runtime_call(
            krate,
            output.span(),
            &quote!(decided::<#aggregate, #command, _>),
            quote!(#decision),
        );
        let target = &method.target;
        // The field is passed through a binding at the target's span: the generated field name
        // may carry a generated span (see `aggregate_method`), which rustc would otherwise
        // report a wrong field type at.
        let field = syn::Ident::new("__dtx_target", method.target_span);
        let target_id = runtime_call(
            krate,
            method.target_span,
            &quote!(TargetId::<<#aggregate as #krate::Aggregate>::Id>::target_id),
            quote!(#field),
        );
        let validate = validate(krate, command, &quote!(__dtx_command));
        let (constructor, state_param) = match method.expects {
            Expects::Create => (quote!(aggregate_create), quote!()),
            Expects::Update => (quote!(aggregate_update), quote!(__dtx_state: &#aggregate,)),
            Expects::Upsert => (
                quote!(aggregate_upsert),
                quote!(__dtx_state: ::core::option::Option<&#aggregate>,),
            ),
        };
        let command_impl = command_impl(krate, command, &quote!(#krate::cqrs::Committed));
        let build = format_ident!("__dtx_handler_{}", ident);
        let handler = quote! {
            fn #build() -> #krate::__private::BoxedCommandHandler {
                #krate::__private::#constructor::<#aggregate, #command, _>(
                    |__dtx_command: &#command| {
                        let #field = &__dtx_command.#target;
                        #target_id
                    },
                    |__dtx_command: &#command| #validate,
                    |#state_param __dtx_command: &#command, #ctx: &#krate::cqrs::CommandContext| {
                        #(#lets)*
                        let #decision = <#aggregate>::#ident(#state #pass #(, #extras)*);
                        #decided
                    },
                )
            }
        };
        let states = format_ident!("__dtx_states_{}", ident);
        let (states_fn, states) = signature::states(krate, &method.sig, &states);
        let name = format!("{}::{ident}", signature::display(aggregate));
        let registration = registration(
            krate,
            command,
            &name,
            ident.span(),
            &states,
            &build,
            &format_ident!(
                "__DTX_REGISTRATION_{}",
                crate::common::shouty_snake_case(ident)
            ),
        );
        quote! {
            #command_impl
            #handler
            #states_fn
            #registration
        }
    });
    let validate_traits = validate_traits(krate);
    let generated = crate::common::dummy_const(&quote! {
        #validate_traits
        #(#handlers)*
    });
    quote! {
        #item
        #generated
    }
}

/// `impl Command for C`.
fn command_impl(krate: &syn::Path, command: &syn::Type, output: &TokenStream) -> TokenStream {
    super::message_impl(krate, &quote!(Command), command, output)
}

/// Runs the command's `Validate` impl if it has one: `Result<(), CommandError>`. Needs
/// [`validate_traits`] in scope.
fn validate(krate: &syn::Path, command: &syn::Type, binding: &TokenStream) -> TokenStream {
    quote_spanned! {command.span()=>
        (&&#krate::__private::ValidateProbe(#binding)).__dtx_validate()
    }
}

/// The traits [`validate`] picks from: `Validate` when the command implements it, nothing
/// otherwise (autoref specialisation). One of them goes unused.
fn validate_traits(krate: &syn::Path) -> TokenStream {
    quote! {
        #[allow(unused_imports)]
        use #krate::__private::{ValidateViaImpl as _, ValidateViaNothing as _};
    }
}

/// The handler's registration, as a constant submitted to the link-time registry.
fn registration(
    krate: &syn::Path,
    command: &syn::Type,
    handler: &str,
    span: Span,
    states: &TokenStream,
    build: &syn::Ident,
    name: &syn::Ident,
) -> TokenStream {
    let line = quote_spanned!(span=> ::core::line!());
    let handler = format!("::{handler}");
    quote! {
        const #name: #krate::cqrs::CommandRegistration = #krate::cqrs::CommandRegistration {
            command: ::core::any::TypeId::of::<#command>,
            command_name: #krate::__private::type_name::<#command>,
            location: #krate::cqrs::Location {
                file: ::core::file!(),
                line: #line,
                handler: ::core::concat!(::core::module_path!(), #handler),
            },
            states: #states,
            handler: #build,
        };
        #krate::__private::inventory::submit!(#name);
    }
}
