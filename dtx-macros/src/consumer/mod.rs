//! `#[consumer]` on an `impl` block of handlers, one per event payload type, for messages from
//! another service: parse (`parse`), validate (`validate`), expand (`expand`). The handlers are
//! checked as a projection's are (`common::event_handlers`).

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = darling::Error::accumulator();
    let input = parse::parse(args, item.clone(), &mut errors);
    // On error, a stand-in `Consumer` impl keeps the code that runs this consumer compiling, so
    // the user sees the macro's errors alone.
    let stub = input.as_ref().and_then(expand::stub);
    let model = input.map(|input| validate::validate(input, &mut errors));
    match errors.finish_with(model) {
        Ok(Some(model)) => expand::expand(&model),
        Ok(None) => unreachable!("a missing input was reported"),
        Err(errors) => crate::common::fallback_with(item, &errors, &["clear"], stub),
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
    fn consumer() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(name = "payments"),
            quote! {
                impl Payments {
                    async fn on_placed(
                        &self,
                        event: &OrderPlaced,
                        uow: &mut dyn UnitOfWork,
                        message: &InboundMessage,
                    ) -> Result<(), dtx::Error> {
                        self.charges.insert(uow, message.message_id, event.total).await
                    }

                    async fn on_cancelled(&self, event: OrderCancelled) -> Result<(), String> {
                        self.log(event.reason)
                    }
                }
            },
        )));
    }

    #[test]
    fn derived_name_and_crate_path() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(crate = ::runtime),
            quote! {
                impl PaymentAudit {
                    async fn on_taken(&self, event: PaymentTaken) -> Result<(), AuditError> {
                        self.log.push(event).await
                    }
                }
            },
        )));
    }
}
