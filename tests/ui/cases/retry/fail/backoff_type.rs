use std::time::Duration;

#[dtx::retry(attempts = 3, backoff = Duration::from_millis(100))]
async fn fetch() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = fetch();
}
