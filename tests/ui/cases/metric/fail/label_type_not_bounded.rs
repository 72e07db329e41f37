pub struct Region {
    pub code: String,
}

#[dtx::metric(arg_labels(region))]
fn charge(region: &Region, amount: u64) -> u64 {
    let _ = &region.code;
    amount
}

fn main() {
    let region = Region { code: "eu".into() };
    let _ = charge(&region, 1);
}
