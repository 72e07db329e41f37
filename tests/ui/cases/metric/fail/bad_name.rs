#[dtx::metric(name = "payments::charge")]
fn charge(amount: u64) -> u64 {
    amount
}

fn main() {
    let _ = charge(1);
}
