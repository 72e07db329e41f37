use dtx::query_handler;

struct Where;

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

#[query_handler]
async fn here(_q: Where) -> Result<&'static str, Never> {
    Ok("here")
}

// A second handler of one query: each declares what running `Where` returns.
#[query_handler]
async fn there(_q: Where) -> Result<&'static str, Never> {
    Ok("there")
}

fn main() {}
