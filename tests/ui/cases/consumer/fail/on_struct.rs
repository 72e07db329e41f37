use dtx::consumer;

#[consumer]
struct Payments;

fn main() {}
