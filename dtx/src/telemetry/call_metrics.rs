//! The metrics of [`#[dtx::metric]`](crate::metric) functions: [`MetricLabel`], the values an
//! argument may label calls with, and the per-function instruments the expansion keeps in a
//! `static`, created on the first call.

#[cfg(feature = "otel")]
use opentelemetry::KeyValue;
#[cfg(feature = "otel")]
use opentelemetry::metrics::{Counter, Histogram};
#[cfg(feature = "otel")]
use std::sync::OnceLock;

/// A value that may label a metric: one of a fixed, small set of names.
///
/// Every distinct label value is a time series of its own, kept in memory by the SDK and by the
/// metrics backend, so [`#[dtx::metric]`](crate::metric) takes labels from arguments only when
/// they are listed in `arg_labels(..)` and of a type implementing this trait, whose values are a
/// closed set of `&'static str` (an enum, `bool`, an `Option` of either). Text, numbers and ids
/// are refused: map them to such an enum first.
///
/// ```
/// use dtx::telemetry::MetricLabel;
///
/// #[derive(Debug, Clone, Copy)]
/// pub enum Method { Card, Transfer }
///
/// impl MetricLabel for Method {
///     fn metric_label(&self) -> &'static str {
///         match self {
///             Method::Card => "card",
///             Method::Transfer => "transfer",
///         }
///     }
/// }
///
/// assert_eq!(Method::Card.metric_label(), "card");
/// assert_eq!((&Method::Transfer).metric_label(), "transfer");
/// assert_eq!(Some(Method::Card).metric_label(), "card");
/// assert_eq!(None::<Method>.metric_label(), "none");
/// assert_eq!(true.metric_label(), "true");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot label a metric: its values are not a fixed set",
    label = "`arg_labels(..)` needs a type implementing `dtx::telemetry::MetricLabel`",
    note = "every distinct label value is a new time series; implement `dtx::telemetry::MetricLabel` for an enum with a `&'static str` per variant and pass that, or put a constant in `labels(key = \"..\")`"
)]
pub trait MetricLabel {
    /// The label value: one of a fixed set.
    fn metric_label(&self) -> &'static str;
}

impl MetricLabel for bool {
    fn metric_label(&self) -> &'static str {
        if *self { "true" } else { "false" }
    }
}

impl<T: MetricLabel + ?Sized> MetricLabel for &T {
    fn metric_label(&self) -> &'static str {
        (**self).metric_label()
    }
}

impl<T: MetricLabel + ?Sized> MetricLabel for &mut T {
    fn metric_label(&self) -> &'static str {
        (**self).metric_label()
    }
}

/// `None` is `"none"`.
impl<T: MetricLabel> MetricLabel for Option<T> {
    fn metric_label(&self) -> &'static str {
        self.as_ref().map_or("none", MetricLabel::metric_label)
    }
}

/// When a measured call started (nothing without feature `otel`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct MetricStart(#[cfg(feature = "otel")] std::time::Instant);

impl MetricStart {
    /// Now.
    #[inline]
    pub(crate) fn now() -> Self {
        Self(
            #[cfg(feature = "otel")]
            std::time::Instant::now(),
        )
    }
}

/// One `#[dtx::metric]` function's instruments, in a `static` of its expansion: created on the
/// first call from the global meter, then one atomic load per call.
#[doc(hidden)]
pub struct MetricSite {
    name: Option<&'static str>,
    path: fn() -> &'static str,
    labels: &'static [(&'static str, &'static str)],
    arg_labels: &'static [&'static str],
    #[cfg(feature = "otel")]
    instruments: OnceLock<Instruments>,
}

#[cfg(feature = "otel")]
struct Instruments {
    calls: Counter<u64>,
    duration: Histogram<f64>,
    /// The constant labels.
    base: Vec<KeyValue>,
    /// The constant labels and `outcome = ok`.
    ok: Vec<KeyValue>,
    /// The constant labels and `outcome = error`.
    error: Vec<KeyValue>,
}

impl std::fmt::Debug for MetricSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricSite")
            .field("name", &self.name())
            .field("labels", &self.labels)
            .field("arg_labels", &self.arg_labels)
            .finish_non_exhaustive()
    }
}

impl MetricSite {
    /// The site of a function: its metric `name` (else derived from `path`, the path of an item
    /// declared in its body), its constant `labels` and the keys of its argument labels.
    pub const fn new(
        name: Option<&'static str>,
        path: fn() -> &'static str,
        labels: &'static [(&'static str, &'static str)],
        arg_labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            path,
            labels,
            arg_labels,
            #[cfg(feature = "otel")]
            instruments: OnceLock::new(),
        }
    }

    /// The metric's name: the `name` option, or the function's path with `.` for `::`.
    pub fn name(&self) -> String {
        self.name
            .map_or_else(|| default_name((self.path)()), str::to_owned)
    }

    /// Records a call that started at `start`: `ok` is `Some(true)` for an `Ok`, `Some(false)`
    /// for an `Err`, `None` when the function returns no `Result`; `values` are the argument
    /// labels' values, in the order of the keys given to [`MetricSite::new`].
    #[inline]
    pub fn record(&self, start: MetricStart, ok: Option<bool>, values: &[&'static str]) {
        #[cfg(feature = "otel")]
        {
            let i = self.instruments.get_or_init(|| self.instruments());
            let seconds = start.0.elapsed().as_secs_f64();
            if values.is_empty() {
                i.duration.record(seconds, &i.base);
                let attributes = match ok {
                    None => &i.base,
                    Some(true) => &i.ok,
                    Some(false) => &i.error,
                };
                i.calls.add(1, attributes);
            } else {
                let mut attributes = Vec::with_capacity(i.base.len() + values.len() + 1);
                attributes.extend_from_slice(&i.base);
                attributes.extend(
                    self.arg_labels
                        .iter()
                        .zip(values)
                        .map(|(key, value)| KeyValue::new(*key, *value)),
                );
                i.duration.record(seconds, &attributes);
                if let Some(ok) = ok {
                    attributes.push(outcome(ok));
                }
                i.calls.add(1, &attributes);
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = (start, ok, values);
    }

    #[cfg(feature = "otel")]
    fn instruments(&self) -> Instruments {
        let name = self.name();
        let meter = opentelemetry::global::meter("dtx");
        let base: Vec<KeyValue> = self
            .labels
            .iter()
            .map(|(key, value)| KeyValue::new(*key, *value))
            .collect();
        let with = |ok| {
            let mut labels = base.clone();
            labels.push(outcome(ok));
            labels
        };
        Instruments {
            calls: meter
                .u64_counter(format!("{name}.calls"))
                .with_unit("{call}")
                .with_description("Calls of a #[dtx::metric] function")
                .build(),
            duration: meter
                .f64_histogram(format!("{name}.duration"))
                .with_unit("s")
                .with_description("Duration of a #[dtx::metric] function")
                .build(),
            ok: with(true),
            error: with(false),
            base,
        }
    }
}

#[cfg(feature = "otel")]
fn outcome(ok: bool) -> KeyValue {
    KeyValue::new("outcome", if ok { "ok" } else { "error" })
}

/// `my_crate::payments::charge::__dtx_here` as `my_crate.payments.charge`: the segments of the
/// path without the marker item, closures and generic arguments, joined by `.`, in the
/// characters OpenTelemetry allows in a name. A trait method (`<Type as Trait>::method`) is
/// named after its type (`Type.method`).
fn default_name(path: &str) -> String {
    let path = path.strip_suffix("::__dtx_here").unwrap_or(path);
    let path = self_type_path(path);
    // Generic arguments dropped: `Vec<u8>::len` as `Vec::len`.
    let mut plain = String::with_capacity(path.len());
    let mut depth = 0_usize;
    for c in path.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut name = String::with_capacity(plain.len());
    for segment in plain.split("::").filter(|s| !s.starts_with('{')) {
        let segment: String = segment
            .chars()
            .filter(|c| !matches!(c, ' ' | '&' | '*'))
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if segment.is_empty() {
            continue;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&segment);
    }
    name.truncate(246);
    name
}

/// `<Type as Trait>::rest` as `Type::rest`; any other path as it is.
fn self_type_path(path: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = path.strip_prefix('<') else {
        return path.into();
    };
    let mut depth = 0_usize;
    let mut self_type_end = None;
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth == 0 => {
                let self_type = &rest[..self_type_end.unwrap_or(i)];
                return format!("{self_type}{}", &rest[i + 1..]).into();
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && self_type_end.is_none() && rest[i..].starts_with(" as ") => {
                self_type_end = Some(i);
            }
            _ => {}
        }
    }
    path.into()
}

/// A measured function's return value, probed by autoref specialisation:
/// `(&&MetricOutcome(&value)).__dtx_outcome()` picks [`MetricResult`] for a `Result`, else
/// [`MetricPlain`].
#[doc(hidden)]
#[derive(Debug)]
pub struct MetricOutcome<'a, T>(pub &'a T);

/// A `Result`: its outcome.
#[doc(hidden)]
pub trait MetricResult {
    /// `Some(true)` for an `Ok`, `Some(false)` for an `Err`.
    fn __dtx_outcome(&self) -> Option<bool>;
}

impl<T, E> MetricResult for &MetricOutcome<'_, Result<T, E>> {
    fn __dtx_outcome(&self) -> Option<bool> {
        Some(self.0.is_ok())
    }
}

/// Any other value: no outcome.
#[doc(hidden)]
pub trait MetricPlain {
    /// `None`.
    fn __dtx_outcome(&self) -> Option<bool> {
        None
    }
}

impl<T> MetricPlain for MetricOutcome<'_, T> {}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names() {
        for (path, name) in [
            ("shop::payments::charge::__dtx_here", "shop.payments.charge"),
            (
                "shop::payments::charge::{{closure}}::__dtx_here",
                "shop.payments.charge",
            ),
            (
                "<shop::Gateway as shop::Pay>::charge::__dtx_here",
                "shop.Gateway.charge",
            ),
            (
                "<alloc::vec::Vec<_> as shop::Pay>::charge::__dtx_here",
                "alloc.vec.Vec.charge",
            ),
            ("shop::Gateway::charge::__dtx_here", "shop.Gateway.charge"),
        ] {
            assert_eq!(super::default_name(path), name, "{path}");
        }
    }
}
