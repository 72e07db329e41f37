//! What a handler's signature says: the message type, how each further argument is supplied,
//! and the return type.

use super::Kind;
pub(crate) use crate::common::display;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

/// Where a handler is declared; decides the signature it may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    /// A free `async fn`.
    Free(Kind),
    /// A method of an aggregate's `#[command_handler] impl` block.
    AggregateMethod,
}

impl Site {
    fn kind(self) -> Kind {
        match self {
            Self::Free(kind) => kind,
            Self::AggregateMethod => Kind::Command,
        }
    }

    /// A signature of this site's shape, named like the user's function.
    fn example(self, name: &syn::Ident) -> String {
        match self {
            Self::Free(Kind::Command) => {
                format!("`async fn {name}(cmd: MyCommand) -> Result<Output, MyError>`")
            }
            Self::Free(Kind::Query) => {
                format!("`async fn {name}(query: MyQuery) -> Result<Output, MyError>`")
            }
            Self::AggregateMethod => {
                format!("`fn {name}(&self, cmd: MyCommand) -> Result<MyEvent, MyError>`")
            }
        }
    }
}

/// How one argument after the message is supplied.
pub(crate) enum Extra {
    /// `State<T>`, extracted from the bus's state by type.
    State(Box<syn::Type>),
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

/// Analyses a handler's signature, reporting every problem in `errors`; `None` if the message
/// or the return type is missing. The receiver of an aggregate method is checked by the caller.
pub(crate) fn analyse(
    site: Site,
    sig: &syn::Signature,
    errors: &mut darling::error::Accumulator,
) -> Option<Signature> {
    let noun = site.kind().noun();
    if let Some(param) = sig.generics.params.first() {
        errors.push(
            darling::Error::custom(format!(
                "a {noun} handler cannot be generic: the registry holds one concrete handler per \
                 {noun} type; write one handler for each concrete {noun}",
            ))
            .with_span(param),
        );
    } else if let Some(clause) = &sig.generics.where_clause {
        errors.push(
            darling::Error::custom(format!(
                "a {noun} handler cannot have a `where` clause: it is not generic; remove it",
            ))
            .with_span(&clause.where_token),
        );
    }
    let mut arguments = Vec::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Typed(arg) => arguments.push(arg),
            syn::FnArg::Receiver(receiver) if site != Site::AggregateMethod => errors.push(
                darling::Error::custom(match site.kind() {
                    Kind::Command => {
                        "a free command handler has no `self`; for commands on an aggregate, \
                         put `#[command_handler]` on the aggregate's `impl` block, not on a \
                         method"
                    }
                    Kind::Query => {
                        "a query handler is a free `async fn`, without `self`; move it out of \
                         the `impl` block"
                    }
                })
                .with_span(&receiver.self_token),
            ),
            syn::FnArg::Receiver(_) => {}
        }
    }
    let (message, extras) = arguments_of(site, sig, &arguments, errors);
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            let returns = match site {
                Site::AggregateMethod => "-> Result<MyEvent, MyError>",
                Site::Free(_) => "-> Result<Output, MyError>",
            };
            errors.push(
                darling::Error::custom(format!(
                    "a {noun} handler returns a `Result`; add the return type, e.g. `{returns}`",
                ))
                .with_span(&sig.ident),
            );
            None
        }
    };
    Some(Signature {
        ident: sig.ident.clone(),
        message: message?,
        extras,
        output: output?,
    })
}

/// Finds the message among the arguments and classifies the others.
fn arguments_of(
    site: Site,
    sig: &syn::Signature,
    arguments: &[&syn::PatType],
    errors: &mut darling::error::Accumulator,
) -> (Option<Message>, Vec<Extra>) {
    let kind = site.kind();
    let noun = kind.noun();
    let context = kind.context();
    let Some(first) = arguments.first() else {
        let mut text = format!(
            "a {noun} handler takes the {noun} as its first argument, e.g. {}",
            site.example(&sig.ident),
        );
        if site == Site::AggregateMethod {
            text.push_str(
                "; every method of a `#[command_handler]` block handles a command, so move helper \
                 methods to another `impl` block",
            );
        }
        errors.push(darling::Error::custom(text).with_span(&sig.paren_token.span.join()));
        return (None, Vec::new());
    };
    // The message is the first argument that is not an extra: the first one, or (reported) a
    // later one after misplaced extras.
    let position = if extra(kind, &first.ty).is_none() {
        Some(0)
    } else {
        let found = arguments
            .iter()
            .position(|arg| extra(kind, &arg.ty).is_none());
        let text = match found {
            Some(at) => format!(
                "a {noun} handler takes the {noun} first, then `State<T>` and `&{context}`: move \
                 `{}` to the front",
                display(arguments[at]),
            ),
            None => format!(
                "a {noun} handler takes the {noun} as its first argument, before `State<T>` and \
                 `&{context}`, e.g. {}",
                site.example(&sig.ident),
            ),
        };
        errors.push(darling::Error::custom(text).with_span(&anchor(&first.ty)));
        found
    };
    let message = position.map(|at| message(kind, &arguments[at].ty, errors));
    let mut extras = Vec::new();
    for (at, arg) in arguments.iter().enumerate() {
        if Some(at) == position {
            continue;
        }
        match extra(kind, &arg.ty) {
            Some(extra) => extras.push(extra),
            None => errors.push(
                darling::Error::custom(format!(
                    "unsupported argument `{}`: after the {noun}, a handler takes only `State<T>` \
                     (state given to the bus builder with `.state(..)`) and `&{context}`",
                    display(arg),
                ))
                .with_span(&anchor(&arg.ty)),
            ),
        }
    }
    (message, extras)
}

/// The message argument's type; `&mut` is refused.
fn message(kind: Kind, ty: &syn::Type, errors: &mut darling::error::Accumulator) -> Message {
    match ty {
        syn::Type::Reference(reference) => {
            if let Some(mutability) = reference.mutability {
                errors.push(
                    darling::Error::custom(format!(
                        "a handler does not change its {noun}: take it by value or as `&{}`, \
                         not `&mut`",
                        display(&reference.elem),
                        noun = kind.noun(),
                    ))
                    .with_span(&mutability),
                );
            }
            Message {
                ty: (*reference.elem).clone(),
                by_ref: true,
            }
        }
        ty => Message {
            ty: ty.clone(),
            by_ref: false,
        },
    }
}

/// The extra argument a type stands for, if any.
fn extra(kind: Kind, ty: &syn::Type) -> Option<Extra> {
    let (ty, by_ref) = match ty {
        syn::Type::Reference(reference) if reference.mutability.is_none() => {
            (&*reference.elem, true)
        }
        ty => (ty, false),
    };
    let segment = last_segment(ty)?;
    if segment.ident == kind.context() {
        return Some(Extra::Context { by_ref });
    }
    if segment.ident != "State" || by_ref {
        return None;
    }
    match &segment.arguments {
        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1 => match &args.args[0] {
            syn::GenericArgument::Type(state) => Some(Extra::State(Box::new(state.clone()))),
            _ => None,
        },
        _ => None,
    }
}

fn last_segment(ty: &syn::Type) -> Option<&syn::PathSegment> {
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// The token an error about a type goes under: its name (`Db` in `&Db`, `State` in
/// `State<Db>`), since a diagnostic spans one token on stable Rust.
fn anchor(ty: &syn::Type) -> Span {
    match ty {
        syn::Type::Reference(reference) => anchor(&reference.elem),
        ty => last_segment(ty).map_or_else(|| ty.span(), |segment| segment.ident.span()),
    }
}

/// Generated statements that extract the extras into `__dtx_arg_N` bindings, and the argument
/// list that passes them; `ctx` is the context binding (a reference when `ctx_is_ref`).
pub(crate) fn extras(
    sig: &Signature,
    ctx: &syn::Ident,
    ctx_is_ref: bool,
) -> (Vec<TokenStream>, Vec<TokenStream>) {
    let mut lets = Vec::new();
    let mut args = Vec::new();
    for (n, extra) in sig.extras.iter().enumerate() {
        match extra {
            Extra::State(ty) => {
                let name = format_ident!("__dtx_arg_{n}", span = Span::mixed_site());
                lets.push(quote_spanned! {ty.span()=> let #name = #ctx.__extract::<#ty>()?; });
                args.push(quote!(#name));
            }
            Extra::Context { by_ref: true } if ctx_is_ref => args.push(quote!(#ctx)),
            Extra::Context { by_ref: true } => args.push(quote!(&#ctx)),
            Extra::Context { by_ref: false } => {
                args.push(quote!(::core::clone::Clone::clone(&#ctx)));
            }
        }
    }
    (lets, args)
}

/// The registration's `states`: a function listing the state types the handler extracts, or
/// the runtime's `no_states`.
pub(crate) fn states(
    krate: &syn::Path,
    sig: &Signature,
    name: &syn::Ident,
) -> (TokenStream, TokenStream) {
    let types: Vec<&syn::Type> = sig
        .extras
        .iter()
        .filter_map(|extra| match extra {
            Extra::State(ty) => Some(&**ty),
            Extra::Context { .. } => None,
        })
        .collect();
    if types.is_empty() {
        return (TokenStream::new(), quote!(#krate::__private::no_states));
    }
    let item = quote! {
        fn #name() -> ::std::vec::Vec<(::core::any::TypeId, &'static str)> {
            ::std::vec::Vec::from([
                #((::core::any::TypeId::of::<#types>(), ::core::any::type_name::<#types>()),)*
            ])
        }
    };
    (item, quote!(#name))
}
