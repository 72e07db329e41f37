use dtx::idempotent;

#[derive(Debug)]
pub struct Declined;

#[idempotent(key = id)]
async fn charge(id: u32) -> Result<u64, Declined> {
    Ok(u64::from(id))
}

fn main() {}
