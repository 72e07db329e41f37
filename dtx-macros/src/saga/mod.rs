//! `#[saga]` on an `impl` block over a saga's data struct, with `#[step(..)]` methods: parse
//! (`parse`), validate (`validate`), expand (`expand`).

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = darling::Error::accumulator();
    let input = parse::parse(args, item.clone(), &mut errors);
    // On error, a stand-in `Saga` impl keeps the code that starts this saga compiling, so the
    // user sees the macro's errors alone.
    let stub = input.as_ref().and_then(expand::stub);
    let model = input.map(|input| validate::validate(input, &mut errors));
    match errors.finish_with(model) {
        Ok(Some(model)) => expand::expand(&model),
        Ok(None) => unreachable!("a missing input was reported"),
        Err(errors) => crate::common::fallback_with(item, &errors, &["step"], stub),
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
    fn saga_with_options_and_compensation() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(
                name = "OrderFulfillment",
                version = 2,
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
