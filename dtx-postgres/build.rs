//! Rebuilds the crate when a migration is added, changed or removed, so `sqlx::migrate!` never
//! embeds a stale list.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
