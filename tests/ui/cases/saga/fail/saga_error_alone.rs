//! A `#[saga]` with a mistake reports that mistake alone: the code that registers and starts the
//! saga still compiles against a stand-in `Saga` impl.
use dtx::saga;
use dtx::saga::{MemorySagaStore, Saga, SagaOrchestrator, StepContext, StepError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
}

#[saga]
impl Checkout {
    #[step]
    fn charge(&mut self, _ctx: &StepContext) -> Result<(), StepError> {
        self.charged = true;
        Ok(())
    }
}

async fn start(orchestrator: &SagaOrchestrator) -> Result<(), dtx::saga::SagaError> {
    orchestrator.start(Checkout::default()).await?;
    Ok(())
}

fn main() {
    let _ = SagaOrchestrator::builder(Arc::new(MemorySagaStore::new()))
        .saga(Checkout::definition())
        .build();
    let _ = start;
}
