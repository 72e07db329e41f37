#[dtx::trace(fields(order_id, customer))]
fn charge(order: u32, card: &str) -> Result<u32, String> {
    let _ = card;
    Ok(order)
}

fn main() {
    let _ = charge(1, "4242");
}
