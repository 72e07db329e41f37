use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
    captured: bool,
}

#[saga]
impl Checkout {
    #[step(name = "PAY")]
    async fn authorise(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }

    #[step(name = "PAY")]
    async fn capture(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.captured = true;
        Ok(())
    }
}

fn main() {}
