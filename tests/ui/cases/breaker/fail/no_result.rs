#[dtx::circuit_breaker(name = "payments")]
async fn charge() {}

#[dtx::circuit_breaker(name = "payments")]
async fn total() -> u64 {
    3
}

fn main() {
    let _ = charge();
    let _ = total();
}
