#[dtx::retry(attempts = 3, jitter = "full")]
async fn fetch() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = fetch();
}
