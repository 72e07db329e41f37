//! `#[dtx::trace]` and `tracing::trace!` in one module: the attribute is written with its path,
//! the event macro is imported, and neither shadows the other.

use std::fmt;
use tracing::trace;

#[derive(Debug)]
pub(crate) struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("declined")
    }
}

/// An async fn; only `order` is recorded.
#[dtx::trace(fields(order))]
pub(crate) async fn charge(order: u64, card: &str) -> Result<u64, Declined> {
    trace!(order, "charging");
    if card.is_empty() {
        return Err(Declined);
    }
    Ok(order)
}

/// A sync fn with a custom name, returning a plain value.
#[dtx::trace(name = "pricing.total")]
pub(crate) fn total(lines: &[u64]) -> u64 {
    trace!(lines = lines.len(), "summing");
    lines.iter().sum()
}

/// A sync fn returning a `Result` whose error has only `Debug`, with `?` inside.
#[dtx::trace(fields(text))]
pub(crate) fn parse(text: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = text.parse()?;
    Ok(n * 2)
}

pub(crate) struct Catalog {
    names: Vec<String>,
}

impl Catalog {
    /// A method borrowing `self`, returning a borrow of it.
    #[dtx::trace(fields(index))]
    pub(crate) fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// An async method taking `&mut self`, with an early return.
    #[dtx::trace]
    pub(crate) async fn add(&mut self, name: String) -> Result<usize, Declined> {
        if name.is_empty() {
            return Err(Declined);
        }
        self.names.push(name);
        Ok(self.names.len())
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        assert_eq!(charge(7, "4242").await.ok(), Some(7));
        assert!(charge(7, "").await.is_err());
        let mut catalog = Catalog { names: Vec::new() };
        assert_eq!(catalog.add("tea".to_owned()).await.ok(), Some(1));
        assert!(catalog.add(String::new()).await.is_err());
        assert_eq!(catalog.name(0), Some("tea"));
    });
    assert_eq!(total(&[1, 2, 3]), 6);
    assert_eq!(parse("21").ok(), Some(42));
    assert!(parse("x").is_err());
}
