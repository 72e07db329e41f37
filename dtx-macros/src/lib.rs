//! Procedural macros of dtx. Use them through the `dtx` crate, which documents each one on its
//! re-export and provides the runtime their generated code calls.

mod aggregate;
mod common;
mod consumer;
mod event;
mod handler;
mod idempotent;
mod metric;
mod projection;
mod resilience;
mod saga;
mod trace;

use proc_macro::TokenStream;

/// See `dtx::DomainEvent`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    event::derive(&syn::parse_macro_input!(input)).into()
}

/// See `dtx::Aggregate`.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    aggregate::derive(&syn::parse_macro_input!(input)).into()
}

/// See `dtx::command_handler`.
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::command_handler(args.into(), item.into()).into()
}

/// See `dtx::query_handler`.
#[proc_macro_attribute]
pub fn query_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::query_handler(args.into(), item.into()).into()
}

/// See `dtx::idempotent`.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    idempotent::expand(args.into(), item.into()).into()
}

/// See `dtx::projection`.
#[proc_macro_attribute]
pub fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    projection::expand(args.into(), item.into()).into()
}

/// See `dtx::consumer`.
#[proc_macro_attribute]
pub fn consumer(args: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(args.into(), item.into()).into()
}

/// See `dtx::saga`.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(args.into(), item.into()).into()
}

/// See `dtx::trace`.
#[proc_macro_attribute]
pub fn trace(args: TokenStream, item: TokenStream) -> TokenStream {
    trace::expand(args.into(), item.into()).into()
}

/// See `dtx::metric`.
#[proc_macro_attribute]
pub fn metric(args: TokenStream, item: TokenStream) -> TokenStream {
    metric::expand(args.into(), item.into()).into()
}

/// See `dtx::circuit_breaker`.
#[proc_macro_attribute]
pub fn circuit_breaker(args: TokenStream, item: TokenStream) -> TokenStream {
    resilience::breaker::expand(args.into(), item.into()).into()
}

/// See `dtx::retry`.
#[proc_macro_attribute]
pub fn retry(args: TokenStream, item: TokenStream) -> TokenStream {
    resilience::retry::expand(args.into(), item.into()).into()
}
