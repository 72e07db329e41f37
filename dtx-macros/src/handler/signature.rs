//! What a handler's signature says: the message type, how each further argument is supplied,
//! and the return type.

use super::Kind;
use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;

/// How one argument after the message is supplied.
pub(crate) enum Extra {
    /// `State<T>`, extracted from the bus's state by type.
    State(syn::Type),
    /// `&CommandContext` / `&QueryContext` (or by value).
    Context { by_ref: bool },
}

/// The message argument.
pub(crate) struct Message {
    /// The message type (without a reference).
    pub(crate) ty: syn::Type,
    /// Whether the handler takes it by reference.
    pub(crate) by_ref: bool,
}

/// A handler signature after validation.
pub(crate) struct Signature {
    pub(crate) ident: syn::Ident,
    pub(crate) message: Message,
    pub(crate) extras: Vec<Extra>,
    pub(crate) output: syn::Type,
}

fn last_segment(ty: &syn::Type) -> Option<&syn::PathSegment> {
    match ty {
        syn::Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

fn context_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Command => "CommandContext",
        Kind::Query => "QueryContext",
    }
}

/// Classifies the arguments after the receiver (if any). `first` is where the message must be.
pub(crate) fn analyse(
    kind: Kind,
    sig: &syn::Signature,
    skip_receiver: bool,
    errors: &mut darling::error::Accumulator,
) -> Option<Signature> {
    let noun = kind.noun();
    if let Some(param) = sig.generics.params.first() {
        errors.push(
            darling::Error::custom(format!(
                "a {noun} handler cannot be generic: the registry holds one concrete handler per {noun} type; \
                 write one handler for each concrete {noun}",
            ))
            .with_span(param),
        );
    }
    if let Some(clause) = &sig.generics.where_clause {
        errors.push(
            darling::Error::custom(format!(
                "a {noun} handler cannot have a `where` clause: it is not generic"
            ))
            .with_span(clause),
        );
    }
    let mut inputs = sig.inputs.iter();
    if skip_receiver {
        inputs.next();
    }
    let ident = sig.ident.clone();
    let example = match kind {
        Kind::Command => "`async fn handle(cmd: MyCommand) -> Result<Output, MyError>`",
        Kind::Query => "`async fn handle(query: MyQuery) -> Result<Output, MyError>`",
    };
    let message = match inputs.next() {
        Some(syn::FnArg::Typed(arg)) => {
            let (ty, by_ref) = match &*arg.ty {
                syn::Type::Reference(r) if r.mutability.is_none() => ((*r.elem).clone(), true),
                syn::Type::Reference(r) => {
                    errors.push(
                        darling::Error::custom(format!(
                            "take the {noun} by value or by shared reference, not `&mut`"
                        ))
                        .with_span(&r.mutability),
                    );
                    ((*r.elem).clone(), true)
                }
                ty => (ty.clone(), false),
            };
            if last_segment(&ty)
                .is_some_and(|s| s.ident == "State" || s.ident == context_name(kind))
            {
                errors.push(
                    darling::Error::custom(format!(
                        "the first argument of a {noun} handler is the {noun} itself, e.g. {example}; `State<T>` and the context come after it",
                    ))
                    .with_span(&arg.ty),
                );
            }
            Some(Message { ty, by_ref })
        }
        Some(syn::FnArg::Receiver(receiver)) => {
            errors.push(
                darling::Error::custom(format!(
                    "a free {noun} handler has no `self`; for an aggregate, put `#[command_handler]` on its `impl` block",
                ))
                .with_span(receiver),
            );
            None
        }
        None => {
            errors.push(
                darling::Error::custom(format!(
                    "a {noun} handler takes the {noun} as its first argument, e.g. {example}"
                ))
                .with_span(&sig.paren_token.span.join()),
            );
            None
        }
    };
    let mut extras = Vec::new();
    for input in inputs {
        let syn::FnArg::Typed(arg) = input else {
            continue;
        };
        let extra = match &*arg.ty {
            syn::Type::Reference(r)
                if last_segment(&r.elem).is_some_and(|s| s.ident == context_name(kind)) =>
            {
                Some(Extra::Context { by_ref: true })
            }
            ty if last_segment(ty).is_some_and(|s| s.ident == context_name(kind)) => {
                Some(Extra::Context { by_ref: false })
            }
            ty => last_segment(ty)
                .filter(|s| s.ident == "State")
                .and_then(|s| match &s.arguments {
                    syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => {
                        match a.args.first() {
                            Some(syn::GenericArgument::Type(t)) => Some(Extra::State(t.clone())),
                            _ => None,
                        }
                    }
                    _ => None,
                }),
        };
        match extra {
            Some(extra) => extras.push(extra),
            None => errors.push(
                darling::Error::custom(format!(
                    "unsupported handler argument `{}`: after the {noun} a handler takes `State<T>` (shared state) \
                     and `&{}`",
                    arg.ty.to_token_stream(),
                    context_name(kind),
                ))
                .with_span(&arg.ty),
            ),
        }
    }
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            errors.push(
                darling::Error::custom(format!(
                    "a {noun} handler returns `Result<Output, MyError>`; add the return type"
                ))
                .with_span(&sig.ident),
            );
            None
        }
    };
    Some(Signature {
        ident,
        message: message?,
        extras,
        output: output?,
    })
}

/// Generated statements that extract the extras into `__dtx_arg_N` bindings, and the argument
/// list that passes them.
pub(crate) fn extras(
    sig: &Signature,
    ctx: &syn::Ident,
    ctx_is_ref: bool,
) -> (Vec<proc_macro2::TokenStream>, Vec<proc_macro2::TokenStream>) {
    let mut lets = Vec::new();
    let mut args = Vec::new();
    for (n, extra) in sig.extras.iter().enumerate() {
        match extra {
            Extra::State(ty) => {
                let name = syn::Ident::new(&format!("__dtx_arg_{n}"), Span::mixed_site());
                lets.push(
                    quote::quote_spanned! {ty.span()=> let #name = #ctx.__extract::<#ty>()?; },
                );
                args.push(quote::quote!(#name));
            }
            Extra::Context { by_ref: true } if ctx_is_ref => args.push(quote::quote!(#ctx)),
            Extra::Context { by_ref: true } => args.push(quote::quote!(&#ctx)),
            Extra::Context { by_ref: false } => {
                args.push(quote::quote!(::core::clone::Clone::clone(&#ctx)))
            }
        }
    }
    (lets, args)
}

/// The state types a handler extracts, as a registration's `states` function body.
pub(crate) fn states(sig: &Signature) -> proc_macro2::TokenStream {
    let types = sig.extras.iter().filter_map(|e| match e {
        Extra::State(ty) => Some(ty),
        Extra::Context { .. } => None,
    });
    quote::quote! {
        ::std::vec![#((::core::any::TypeId::of::<#types>(), ::core::any::type_name::<#types>())),*]
    }
}
