use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
}

#[saga]
impl Checkout {
    #[step(compensat = undo)]
    async fn charge(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }

    async fn undo(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = false;
        Ok(())
    }
}

fn main() {}
