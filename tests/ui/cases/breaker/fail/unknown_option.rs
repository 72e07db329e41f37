#[derive(Debug)]
pub struct Down;

impl From<dtx::breaker::BreakerOpen> for Down {
    fn from(_: dtx::breaker::BreakerOpen) -> Self {
        Down
    }
}

#[dtx::circuit_breaker(name = "payments", failure_treshold = 3)]
async fn charge() -> Result<(), Down> {
    Ok(())
}

fn main() {
    let _ = charge();
}
