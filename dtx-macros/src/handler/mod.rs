//! `#[command_handler]` and `#[query_handler]`: parse, validate, expand.
//!
//! Both share the signature analysis in [`signature`]; [`Kind`] tells them apart.

mod command;
mod query;
mod signature;

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

/// Which bus a handler registers with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Query,
}

impl Kind {
    /// What the handler handles.
    fn noun(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Query => "query",
        }
    }

    /// The context type a handler of this kind may take.
    fn context(self) -> &'static str {
        match self {
            Self::Command => "CommandContext",
            Self::Query => "QueryContext",
        }
    }
}

pub(crate) fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    command::expand(args, item)
}

pub(crate) fn query_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    query::expand(args, item)
}

/// A call of a runtime function, `#krate::__private::#function(#args)`, whose path and
/// parentheses sit at `span` (the user's tokens the function checks): rustc reports an unmet bound
/// of the function there, once. `args` keep their own spans.
fn runtime_call(
    krate: &syn::Path,
    span: Span,
    function: &TokenStream,
    args: TokenStream,
) -> TokenStream {
    let path = crate::common::respan(quote!(#krate::__private::#function), span);
    let mut args = Group::new(Delimiter::Parenthesis, args);
    args.set_span(span);
    quote!(#path #args)
}

/// On error: the errors and the user's item without `#[command]` attributes.
fn fallback(item: TokenStream, errors: &darling::Error) -> TokenStream {
    crate::common::fallback(item, errors, &["command"])
}

/// The success type of a handler's return type: `T` of a `Result<T, ..>` written as such (so
/// that a wrong error type is reported once, by the handler's own check), otherwise what
/// `HandlerResult` says it is.
fn ok_type(krate: &syn::Path, output: &syn::Type) -> TokenStream {
    if let syn::Type::Path(path) = output
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(syn::GenericArgument::Type(ok)) = args.args.first()
    {
        return quote!(#ok);
    }
    quote_spanned!(output.span()=> <#output as #krate::__private::HandlerResult>::Ok)
}

/// `impl Command for C` or `impl Query for Q`: what the message returns, so that the bus's
/// `execute` is typed by it.
fn message_impl(
    krate: &syn::Path,
    kind: &TokenStream,
    message: &syn::Type,
    output: &TokenStream,
) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl #krate::cqrs::#kind for #message {
            type Output = #output;
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
    fn types_display_as_written() {
        let cases: [(syn::Type, &str); 6] = [
            (syn::parse_quote!(&'static str), "&'static str"),
            (syn::parse_quote!(&mut Greet), "&mut Greet"),
            (
                syn::parse_quote!(std::vec::Vec<(u8, String)>),
                "std::vec::Vec<(u8, String)>",
            ),
            (syn::parse_quote!([u8; 4]), "[u8; 4]"),
            (syn::parse_quote!(fn(u8) -> u8), "fn(u8) -> u8"),
            (
                syn::parse_quote!(Box<dyn Fn() + Send>),
                "Box<dyn Fn() + Send>",
            ),
        ];
        for (ty, written) in cases {
            assert_eq!(super::signature::display(&ty), written);
        }
        let arg: syn::FnArg = syn::parse_quote!(State(db): State<Db>);
        assert_eq!(super::signature::display(&arg), "State(db): State<Db>");
    }

    #[test]
    fn free_command_handler() {
        insta::assert_snapshot!(pretty(super::command_handler(
            TokenStream::new(),
            quote! {
                async fn reserve_stock(
                    cmd: ReserveStock,
                    State(db): State<Db>,
                    ctx: &CommandContext,
                ) -> Result<Reservation, StockError> {
                    db.reserve(&cmd, ctx.metadata()).await
                }
            },
        )));
    }

    #[test]
    fn aggregate_command_handlers() {
        insta::assert_snapshot!(pretty(super::command_handler(
            TokenStream::new(),
            quote! {
                impl Order {
                    fn place(cmd: PlaceOrder) -> Result<OrderPlaced, OrderError> {
                        Ok(OrderPlaced { customer: cmd.customer })
                    }

                    #[command(target = order)]
                    fn cancel(&self, cmd: &CancelOrder) -> Result<OrderCancelled, OrderError> {
                        Ok(OrderCancelled { reason: cmd.reason.clone() })
                    }
                }
            },
        )));
    }

    #[test]
    fn cached_query_handler() {
        insta::assert_snapshot!(pretty(super::query_handler(
            quote!(cache(ttl_secs = 5, capacity = 1000)),
            quote! {
                pub async fn order_summary(
                    query: GetOrderSummary,
                    State(store): State<SharedEventStore>,
                ) -> Result<OrderSummary, dtx::Error> {
                    summarise(store, query.order_id).await
                }
            },
        )));
    }
}
