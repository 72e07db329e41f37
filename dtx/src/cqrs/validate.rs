//! Command validation that runs before the handler: [`Validate`].

use std::fmt;

/// Validation rules of a command, checked before its handler runs; every failed rule is
/// reported, and nothing is stored.
///
/// Implementing the trait is all it takes: the generated handler calls it.
///
/// ```
/// use dtx::cqrs::{Validate, Validator};
///
/// struct AddLine { sku: String, quantity: u32 }
///
/// impl Validate for AddLine {
///     fn validate(&self, v: &mut Validator) {
///         v.check(!self.sku.is_empty(), "sku", "must not be empty");
///         v.check(self.quantity > 0, "quantity", "must be at least 1");
///     }
/// }
///
/// let errors = AddLine { sku: String::new(), quantity: 0 }.validated().unwrap_err();
/// assert_eq!(errors.violations().len(), 2);
/// ```
pub trait Validate {
    /// Records every broken rule in `v`.
    fn validate(&self, v: &mut Validator);

    /// Runs [`Validate::validate`] and collects the result.
    fn validated(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::default();
        self.validate(&mut v);
        v.finish()
    }
}

/// Collects rule violations.
#[derive(Debug, Default)]
pub struct Validator {
    violations: Vec<RuleViolation>,
}

impl Validator {
    /// Records a violation of `field` unless `ok`.
    pub fn check(
        &mut self,
        ok: bool,
        field: &'static str,
        message: impl Into<String>,
    ) -> &mut Self {
        if !ok {
            self.fail(field, message);
        }
        self
    }

    /// Records a violation of `field`.
    pub fn fail(&mut self, field: &'static str, message: impl Into<String>) -> &mut Self {
        self.violations.push(RuleViolation {
            field,
            message: message.into(),
        });
        self
    }

    /// `Ok` when no rule was broken.
    pub fn finish(self) -> Result<(), ValidationErrors> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.violations))
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    /// The field (or rule) name.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Every rule a command broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(Vec<RuleViolation>);

impl ValidationErrors {
    /// The broken rules, in the order they were checked.
    pub fn violations(&self) -> &[RuleViolation] {
        &self.0
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
