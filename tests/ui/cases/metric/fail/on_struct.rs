#[dtx::metric]
struct Charge {
    amount: u64,
}

fn main() {
    let _ = Charge { amount: 1 }.amount;
}
