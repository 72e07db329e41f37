use dtx::query_handler;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Double(u32);

#[derive(Debug)]
struct Overflow;

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("overflow")
    }
}

impl std::error::Error for Overflow {}

#[derive(Debug)]
struct Triple(u32);

#[query_handler(cache(ttl_secs = 30))]
async fn triple(q: Triple) -> Result<u32, Overflow> {
    q.0.checked_mul(3).ok_or(Overflow)
}

fn main() {}
