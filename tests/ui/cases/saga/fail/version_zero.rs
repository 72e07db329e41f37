use dtx::saga::StepError;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Order {
    reserved: bool,
}

#[dtx::saga(version = 0)]
impl Order {
    #[step]
    async fn reserve(&mut self) -> Result<(), StepError> {
        self.reserved = true;
        Ok(())
    }
}

fn main() {}
