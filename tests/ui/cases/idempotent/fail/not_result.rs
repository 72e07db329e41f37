use dtx::idempotent;

#[idempotent(key = id)]
async fn charge(id: u32) -> u64 {
    u64::from(id)
}

fn main() {}
