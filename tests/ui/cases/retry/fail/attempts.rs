#[dtx::retry(attempts = 1)]
async fn fetch() -> Result<(), String> {
    Ok(())
}

#[dtx::retry(backoff = dtx::Backoff::CALLS)]
async fn store() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = fetch();
    let _ = store();
}
