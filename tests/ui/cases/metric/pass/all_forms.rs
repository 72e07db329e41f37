//! `#[dtx::metric]` on every kind of function, with every option, alone and with
//! `#[dtx::trace]` in both orders.

use dtx::telemetry::MetricLabel;
use std::fmt;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Card,
    Transfer,
}

impl MetricLabel for Method {
    fn metric_label(&self) -> &'static str {
        match self {
            Method::Card => "card",
            Method::Transfer => "transfer",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("declined")
    }
}

/// An async fn with constant and argument labels; `card` is no label.
#[dtx::metric(
    name = "payments.charge",
    labels(service = "payments"),
    arg_labels(method, express)
)]
pub(crate) async fn charge(method: Method, express: bool, card: &str) -> Result<u64, Declined> {
    if card.is_empty() {
        return Err(Declined);
    }
    Ok(if express { 2 } else { 1 })
}

/// A sync fn returning a plain value, named after its path.
#[dtx::metric]
pub(crate) fn total(lines: &[u64]) -> u64 {
    lines.iter().sum()
}

/// A sync fn with `?` inside.
#[dtx::metric(crate = ::dtx)]
pub(crate) fn parse(text: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = text.parse()?;
    Ok(n * 2)
}

/// Generic.
#[dtx::metric(arg_labels(method))]
pub(crate) fn describe<T: fmt::Debug>(value: T, method: Option<Method>) -> String {
    format!("{value:?}")
}

/// With `#[dtx::trace]` below (the documented order) and above.
#[dtx::metric(labels(carrier = "dhl"))]
#[dtx::trace(fields(parcels))]
pub(crate) async fn book(parcels: u32) -> Result<u32, Declined> {
    Ok(parcels)
}

#[dtx::trace]
#[dtx::metric]
pub(crate) fn cancel(parcels: u32) -> Result<u32, Declined> {
    Ok(parcels)
}

pub(crate) struct Catalog {
    names: Vec<String>,
}

impl Catalog {
    /// A method borrowing `self`, returning a borrow of it.
    #[dtx::metric]
    pub(crate) fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// An async method taking `&mut self`, with an early return and a label by reference.
    #[dtx::metric(arg_labels(method))]
    pub(crate) async fn add(&mut self, name: String, method: &Method) -> Result<usize, Declined> {
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
        assert_eq!(charge(Method::Card, true, "4242").await.ok(), Some(2));
        assert!(charge(Method::Transfer, false, "").await.is_err());
        assert_eq!(book(2).await.ok(), Some(2));
        let mut catalog = Catalog { names: Vec::new() };
        assert_eq!(
            catalog.add("tea".to_owned(), &Method::Card).await.ok(),
            Some(1)
        );
        assert!(catalog.add(String::new(), &Method::Card).await.is_err());
        assert_eq!(catalog.name(0), Some("tea"));
    });
    assert_eq!(total(&[1, 2, 3]), 6);
    assert_eq!(parse("21").ok(), Some(42));
    assert!(parse("x").is_err());
    assert_eq!(describe(7, None), "7");
    assert_eq!(cancel(1).ok(), Some(1));
}
