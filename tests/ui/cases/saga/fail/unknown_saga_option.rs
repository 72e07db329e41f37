use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
}

#[saga(max_retry = 3)]
impl Checkout {
    #[step]
    async fn charge(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }
}

fn main() {}
