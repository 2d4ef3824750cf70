//! Errors shared by every checked parameter struct.

use thiserror::Error;

/// A parameter outside its documented range. Names the field, the allowed range and the value.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field} must be {expected}, got {value}")]
pub struct ParamError {
    /// Dotted path of the field, e.g. `framer.hop`.
    pub field: String,
    pub expected: &'static str,
    pub value: String,
}

impl ParamError {
    pub fn new(field: &'static str, expected: &'static str, value: impl ToString) -> Self {
        Self {
            field: field.to_string(),
            expected,
            value: value.to_string(),
        }
    }
}

impl ParamError {
    /// Prefixes the field with the section it belongs to (`hop` → `framer.hop`).
    pub fn in_section(mut self, section: &str) -> Self {
        self.field = format!("{section}.{}", self.field);
        self
    }
}

/// Returns an error naming `field` unless `lo <= value <= hi`.
pub(crate) fn check_range<T: PartialOrd + ToString>(
    field: &'static str,
    expected: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ParamError> {
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(ParamError::new(field, expected, value))
    }
}
