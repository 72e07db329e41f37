//! `#[projection]` on an `impl` block of handlers, one per event payload type, with an optional
//! `#[clear]` method: parse (`parse`), validate (`validate`), expand (`expand`).

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = darling::Error::accumulator();
    let input = parse::parse(args, item.clone(), &mut errors);
    // On error, a stand-in `Projection` impl keeps the code that runs this projection compiling,
    // so the user sees the macro's errors alone.
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
    fn read_model() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(version = 2),
            quote! {
                impl OrderSummary {
                    async fn on_placed(
                        &self,
                        event: &OrderPlaced,
                        uow: &mut dyn UnitOfWork,
                        inv: &mut Invalidations,
                    ) -> Result<(), dtx::Error> {
                        self.rows.insert(uow, &event.customer).await?;
                        inv.all::<GetOrderSummary>();
                        Ok(())
                    }

                    async fn on_cancelled(
                        &self,
                        event: OrderCancelled,
                        meta: &RecordedEvent,
                    ) -> Result<(), String> {
                        self.log(meta.event_id, event.reason)
                    }

                    #[clear]
                    async fn clear(&self, uow: &mut dyn UnitOfWork) -> Result<(), dtx::Error> {
                        self.rows.truncate(uow).await
                    }
                }
            },
        )));
    }

    #[test]
    fn subscription() {
        insta::assert_snapshot!(pretty(super::expand(
            quote!(name = "welcome-mail", subscription, crate = ::dtx),
            quote! {
                impl WelcomeMail {
                    async fn on_registered(
                        &self,
                        event: &Registered,
                        meta: &RecordedEvent,
                    ) -> Result<(), MailError> {
                        self.mailer.send(meta.event_id, &event.email).await
                    }
                }
            },
        )));
    }
}
