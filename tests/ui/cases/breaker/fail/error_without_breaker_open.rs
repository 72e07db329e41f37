#[derive(Debug)]
pub struct Down;

#[dtx::circuit_breaker(name = "payments")]
async fn charge() -> Result<(), Down> {
    Ok(())
}

fn main() {
    let _ = charge();
}
