//! `#[command_handler]` on an async fn or on an aggregate's `impl` block.

use super::signature::{self, Signature};
use super::{Kind, fallback};
use darling::FromMeta;
use darling::ast::NestedMeta;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

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

pub(super) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse(args, item.clone()) {
        Ok(tokens) => tokens,
        Err(errors) => fallback(item, &errors),
    }
}

fn parse(args: TokenStream, item: TokenStream) -> darling::Result<TokenStream> {
    let args = Args::from_list(&NestedMeta::parse_meta_list(args)?)?;
    let krate = crate::common::crate_path(args.krate.as_ref());
    match syn::parse2::<syn::Item>(item)? {
        syn::Item::Fn(f) => free_fn(&krate, f),
        syn::Item::Impl(imp) => aggregate_impl(&krate, imp),
        other => Err(darling::Error::custom(
            "`#[command_handler]` goes on an `async fn` handling one command, or on an aggregate's `impl` block",
        )
        .with_span(&other)),
    }
}

/// A free `async fn` handler.
fn free_fn(krate: &syn::Path, f: syn::ItemFn) -> darling::Result<TokenStream> {
    let mut errors = darling::Error::accumulator();
    if f.sig.asyncness.is_none() {
        errors.push(
            darling::Error::custom(
                "a free command handler must be `async fn` (it may await I/O); write `async fn ..`; \
                 synchronous decisions belong in an aggregate's `#[command_handler] impl` block",
            )
            .with_span(&f.sig.fn_token),
        );
    }
    let sig = signature::analyse(Kind::Command, &f.sig, false, &mut errors);
    errors.finish()?;
    let sig = sig.expect("signature errors were reported");
    let Signature { ident, message, .. } = &sig;
    let cmd = &message.ty;
    let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
    let (lets, extra_args) = signature::extras(&sig, &ctx, false);
    let pass = if message.by_ref {
        quote!(&__dtx_command)
    } else {
        quote!(__dtx_command)
    };
    let call = quote_spanned! {sig.output.span()=>
        #krate::__private::command_result::<#cmd, _>(#ident(#pass #(, #extra_args)*).await)
    };
    let validate = validate(krate, cmd, &quote!(&__dtx_command));
    let states = signature::states(&sig);
    let name = ident.to_string();
    let registration = registration(
        krate,
        cmd,
        &name,
        ident.span(),
        &states,
        &quote!(__dtx_handler),
    );
    let items = quote! {
        fn __dtx_handler() -> #krate::__private::BoxedCommandHandler {
            #krate::__private::command_fn(|__dtx_command: #cmd, #ctx: #krate::cqrs::CommandContext| async move {
                #validate?;
                #(#lets)*
                #call
            })
        }
        #registration
    };
    let generated = crate::common::dummy_const(&items);
    Ok(quote! {
        #f
        #generated
    })
}

/// The validation call: `Validate` when the command implements it, nothing otherwise.
fn validate(krate: &syn::Path, cmd: &syn::Type, command: &TokenStream) -> TokenStream {
    quote_spanned! {cmd.span()=>
        {
            #[allow(unused_imports)]
            use #krate::__private::{ValidateViaImpl as _, ValidateViaNothing as _};
            (&&#krate::__private::ValidateProbe(#command)).__dtx_validate()
        }
    }
}

fn registration(
    krate: &syn::Path,
    cmd: &syn::Type,
    handler: &str,
    span: Span,
    states: &TokenStream,
    build: &TokenStream,
) -> TokenStream {
    let line = quote_spanned!(span=> ::core::line!());
    quote! {
        #krate::__private::inventory::submit! {
            #krate::cqrs::CommandRegistration {
                command: ::core::any::TypeId::of::<#cmd>,
                command_name: #krate::__private::type_name::<#cmd>,
                location: #krate::cqrs::Location {
                    file: ::core::file!(),
                    line: #line,
                    handler: ::core::concat!(::core::module_path!(), "::", #handler),
                },
                states: {
                    fn __dtx_states() -> ::std::vec::Vec<(::core::any::TypeId, &'static str)> {
                        #states
                    }
                    __dtx_states
                },
                handler: #build,
            }
        }
    }
}

fn snake_case(ident: &syn::Ident) -> String {
    let mut out = String::new();
    for (i, c) in ident.to_string().chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every method of an aggregate's `impl` block is a handler of the command it takes.
fn aggregate_impl(krate: &syn::Path, mut imp: syn::ItemImpl) -> darling::Result<TokenStream> {
    let mut errors = darling::Error::accumulator();
    if let Some(param) = imp.generics.params.first() {
        errors.push(
            darling::Error::custom("an aggregate's command handlers cannot be generic: the registry holds concrete types")
                .with_span(param),
        );
    }
    if let Some((_, path, _)) = &imp.trait_ {
        errors.push(
            darling::Error::custom("`#[command_handler]` goes on the aggregate's own `impl Aggregate {{ .. }}` block, not a trait impl")
                .with_span(path),
        );
    }
    let self_ty = (*imp.self_ty).clone();
    let aggregate_ident = match &self_ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    let Some(aggregate_ident) = aggregate_ident else {
        errors.push(
            darling::Error::custom("expected the aggregate's type, e.g. `impl Order { .. }`")
                .with_span(&self_ty),
        );
        return Err(errors.finish().expect_err("an error was pushed"));
    };
    let default_target = format!("{}_id", snake_case(&aggregate_ident));

    let mut handlers = Vec::new();
    let mut methods = 0;
    for member in &mut imp.items {
        let syn::ImplItem::Fn(method) = member else {
            continue;
        };
        methods += 1;
        let mut method_args = MethodArgs::default();
        let mut kept = Vec::new();
        for attr in std::mem::take(&mut method.attrs) {
            if attr.path().is_ident("command") {
                match attr
                    .meta
                    .require_list()
                    .map_err(darling::Error::from)
                    .and_then(|list| {
                        MethodArgs::from_list(&NestedMeta::parse_meta_list(list.tokens.clone())?)
                    }) {
                    Ok(parsed) => method_args = parsed,
                    Err(e) => errors.push(e),
                }
            } else {
                kept.push(attr);
            }
        }
        method.attrs = kept;
        if let Some(handler) = aggregate_method(
            krate,
            &self_ty,
            &default_target,
            method,
            &method_args,
            &mut errors,
        ) {
            handlers.push(handler);
        }
    }
    if methods == 0 {
        errors.push(
            darling::Error::custom("this `impl` block has no methods; each method of a `#[command_handler]` block handles one command")
                .with_span(&imp.self_ty),
        );
    }
    errors.finish()?;
    let generated = crate::common::dummy_const(&quote!(#(#handlers)*));
    Ok(quote! {
        #imp
        #generated
    })
}

fn aggregate_method(
    krate: &syn::Path,
    self_ty: &syn::Type,
    default_target: &str,
    method: &syn::ImplItemFn,
    args: &MethodArgs,
    errors: &mut darling::error::Accumulator,
) -> Option<TokenStream> {
    let receiver = method.sig.receiver();
    let create = receiver.is_none();
    if let Some(receiver) = receiver
        && (receiver.reference.is_none() || receiver.mutability.is_some())
    {
        errors.push(
            darling::Error::custom(
                "an aggregate's command handler decides from `&self` and returns events; it never changes the state itself: write `fn name(&self, cmd: MyCommand)`",
            )
            .with_span(receiver),
        );
    }
    if let Some(asyncness) = method.sig.asyncness {
        errors.push(
            darling::Error::custom(
                "an aggregate's command handler is a synchronous decision (it runs again after a version conflict); \
                 remove `async`, and do I/O in a free `#[command_handler] async fn`",
            )
            .with_span(&asyncness),
        );
    }
    let sig = signature::analyse(Kind::Command, &method.sig, !create, errors)?;
    let method_ident = &sig.ident;
    let cmd = &sig.message.ty;
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| syn::Ident::new(default_target, cmd.span()));
    let ctx = syn::Ident::new("__dtx_ctx", Span::mixed_site());
    let (lets, extra_args) = signature::extras(&sig, &ctx, true);
    let pass = if sig.message.by_ref {
        quote!(__dtx_command)
    } else {
        quote_spanned!(cmd.span()=> #krate::__private::command_for_decision::<#cmd>(__dtx_command))
    };
    let state = if create {
        quote!()
    } else {
        quote!(__dtx_state,)
    };
    let call = quote_spanned! {sig.output.span()=>
        #krate::__private::decided::<#self_ty, #cmd, _>(<#self_ty>::#method_ident(#state #pass #(, #extra_args)*))
    };
    let validate = validate(krate, cmd, &quote!(__dtx_command));
    let target_fn = quote_spanned! {target.span()=>
        |__dtx_command: &#cmd| -> <#self_ty as #krate::Aggregate>::Id {
            #krate::__private::TargetId::target_id(&__dtx_command.#target)
        }
    };
    let build = format_ident!("__dtx_handler_{}", method_ident);
    let decide = if create {
        quote! {
            #krate::__private::aggregate_create::<#self_ty, #cmd, _>(
                #target_fn,
                |__dtx_command: &#cmd| #validate,
                |__dtx_command: &#cmd, #ctx: &#krate::cqrs::CommandContext| {
                    #(#lets)*
                    #call
                },
            )
        }
    } else {
        quote! {
            #krate::__private::aggregate_update::<#self_ty, #cmd, _>(
                #target_fn,
                |__dtx_command: &#cmd| #validate,
                |__dtx_state: &#self_ty, __dtx_command: &#cmd, #ctx: &#krate::cqrs::CommandContext| {
                    #(#lets)*
                    #call
                },
            )
        }
    };
    let states = signature::states(&sig);
    let name = format!(
        "{}::{}",
        quote!(#self_ty).to_string().replace(' ', ""),
        method_ident
    );
    let registration = registration(
        krate,
        cmd,
        &name,
        method_ident.span(),
        &states,
        &quote!(#build),
    );
    Some(quote! {
        fn #build() -> #krate::__private::BoxedCommandHandler {
            #decide
        }
        #registration
    })
}
