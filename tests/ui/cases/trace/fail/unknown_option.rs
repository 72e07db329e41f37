#[dtx::trace(feilds(id))]
fn load(id: u32) -> u32 {
    id
}

fn main() {
    let _ = load(1);
}
