#[derive(Debug)]
pub struct Down;

impl From<dtx::breaker::BreakerOpen> for Down {
    fn from(_: dtx::breaker::BreakerOpen) -> Self {
        Down
    }
}

#[dtx::circuit_breaker(name = "", failure_threshold = 0, window_secs = 30, half_open_probes = 0)]
async fn charge() -> Result<(), Down> {
    Ok(())
}

#[dtx::circuit_breaker(name = "payments", failure_rate = 1.5)]
async fn refund() -> Result<(), Down> {
    Ok(())
}

fn main() {
    let _ = charge();
    let _ = refund();
}
