#[dtx::metric(arg_labels(customer, amount))]
fn charge(customer: String, amount: u64) -> u64 {
    let _ = customer;
    amount
}

fn main() {
    let _ = charge("ada".into(), 1);
}
