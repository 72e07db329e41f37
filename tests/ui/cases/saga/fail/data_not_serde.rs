use dtx::saga;
use dtx::saga::{StepContext, StepError};

#[derive(Default)]
struct Checkout {
    charged: bool,
}

#[saga]
impl Checkout {
    #[step]
    async fn charge(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }
}

fn main() {}
