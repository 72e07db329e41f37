use dtx::saga;
use dtx::saga::{StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
}

#[saga]
impl Checkout {
    #[step]
    async fn charge(&mut self, _ctx: &StepContext) -> Result<u64, StepError> {
        self.charged = true;
        Ok(42)
    }
}

fn main() {}
