#[dtx::retry(attempts = 3)]
fn fetch() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = fetch();
}
