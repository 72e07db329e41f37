use dtx::saga;
use serde::{Deserialize, Serialize};

#[saga]
#[derive(Default, Serialize, Deserialize)]
struct Checkout {
    charged: bool,
}

fn main() {}
