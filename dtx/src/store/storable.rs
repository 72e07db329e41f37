//! What every backend can store: the JSON and text PostgreSQL refuses are refused up front, by
//! every backend alike, so that a payload the in-memory store takes is one PostgreSQL takes.
//!
//! PostgreSQL's `jsonb` refuses `\u0000` (in a string or a key), a UTF-16 surrogate escape that
//! is not part of a pair (`"\ud800"`), and a number beyond `numeric`'s range (more than 131 072
//! digits before the decimal point or 16 383 after it); `text` refuses the NUL character.

use crate::error::{Error, Result};
use crate::store::StreamId;

const NUL_ESCAPE: &str = "it contains the escape \\u0000, which PostgreSQL's jsonb cannot store";
const LONE_SURROGATE: &str =
    "it contains a UTF-16 surrogate escape (\\ud800 to \\udfff) that is not part of a pair";
const NUMBER_RANGE: &str = "it contains a number beyond PostgreSQL's numeric range (131072 digits before the point, 16383 after)";
const NUL_CHARACTER: &str = "it contains the NUL character, which PostgreSQL cannot store";

/// Most digits `numeric` holds before the decimal point.
const MAX_INTEGER_DIGITS: i128 = 131_072;
/// Most digits `numeric` holds after the decimal point.
const MAX_FRACTION_DIGITS: i128 = 16_383;

/// Why PostgreSQL's `jsonb` would refuse this (syntactically valid) JSON text, if it would.
pub(crate) fn json_refusal(json: &str) -> Option<&'static str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => match string_end(bytes, i + 1) {
                Ok(end) => i = end,
                Err(reason) => return Some(reason),
            },
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |n| i + n);
                if !number_fits(&json[i..end]) {
                    return Some(NUMBER_RANGE);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    None
}

/// Scans the string whose opening quote is at `start - 1`: the index after its closing quote,
/// or why `jsonb` refuses one of its escapes.
fn string_end(bytes: &[u8], start: usize) -> Result<usize, &'static str> {
    let mut i = start;
    // A high surrogate escape waiting for its low half.
    let mut high = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' if !high => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let code = bytes
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(u16::MAX);
                match code {
                    0 => return Err(NUL_ESCAPE),
                    0xD800..=0xDBFF if !high => high = true,
                    0xDC00..=0xDFFF if high => high = false,
                    0xD800..=0xDFFF => return Err(LONE_SURROGATE),
                    _ if high => return Err(LONE_SURROGATE),
                    _ => {}
                }
                i += 6;
            }
            _ if high => return Err(LONE_SURROGATE),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(bytes.len())
}

/// Whether a JSON number fits PostgreSQL's `numeric`.
fn number_fits(number: &str) -> bool {
    let number = number.strip_prefix('-').unwrap_or(number);
    let (mantissa, exponent) = match number.find(['e', 'E']) {
        Some(at) => (&number[..at], &number[at + 1..]),
        None => (number, "0"),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent: i128 = exponent
        .trim_start_matches('+')
        .parse()
        .unwrap_or_else(|_| {
            if exponent.starts_with('-') {
                i128::MIN / 4
            } else {
                i128::MAX / 4
            }
        });
    let fraction_digits = digits(fraction.len()) - exponent;
    if fraction_digits > MAX_FRACTION_DIGITS {
        return false;
    }
    let significant = integer.trim_start_matches('0');
    let integer_digits = if significant.is_empty() {
        match fraction.find(|c| c != '0') {
            // 0.0…0d: the first digit is this far behind the point
            Some(zeros) => exponent - digits(zeros),
            // zero, whatever its exponent
            None => return true,
        }
    } else {
        digits(significant.len()) + exponent
    };
    integer_digits <= MAX_INTEGER_DIGITS
}

fn digits(count: usize) -> i128 {
    i128::try_from(count).unwrap_or(i128::MAX / 4)
}

/// Why PostgreSQL's `text` would refuse this, if it would.
pub(crate) fn text_refusal(text: &str) -> Option<&'static str> {
    text.contains('\0').then_some(NUL_CHARACTER)
}

/// [`Error::Unstorable`] unless PostgreSQL's `jsonb` stores `json`; `what` names it.
pub(crate) fn check_json(
    stream: Option<&StreamId>,
    json: &str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    refuse(stream, json_refusal(json), what)
}

/// [`Error::Unstorable`] unless PostgreSQL's `jsonb` stores `value` (once serialised): a
/// `serde_json::Value` can only break the rules with a NUL character in a string or a key.
pub(crate) fn check_value(
    stream: Option<&StreamId>,
    value: &serde_json::Value,
    what: impl FnOnce() -> String,
) -> Result<()> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) => text.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    refuse(stream, has_nul(value).then_some(NUL_ESCAPE), what)
}

/// [`Error::Unstorable`] unless PostgreSQL's `text` stores `text`; `what` names it.
pub(crate) fn check_text(
    stream: Option<&StreamId>,
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    refuse(stream, text_refusal(text), what)
}

fn refuse(
    stream: Option<&StreamId>,
    reason: Option<&'static str>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::Unstorable {
            stream: stream.cloned(),
            what: what(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_jsonb_refuses() {
        for json in [
            r#""a\u0000b""#,
            r#"{"\u0000": 1}"#,
            r#"["\ud800"]"#,
            r#""\udc00""#,
            r#""\ud800x""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            "1e1000000",
            "1e-1000000",
            "1e-16384",
            "0e-16384",
            "0.5e-16383",
            "1e131072",
            "10e131071",
            r#"{"n": [1, -1e131072]}"#,
        ] {
            assert!(json_refusal(json).is_some(), "{json} is refused");
        }
    }

    #[test]
    fn accepts_what_jsonb_accepts() {
        for json in [
            r#""\\u0000""#,
            r#""\ud83d\ude00""#,
            r#"{"a\"\\": "\u0041\n"}"#,
            "1e-16383",
            "1e131071",
            "9e131071",
            "0.5e131072",
            "0e200000",
            "-0.000123e-16376",
            r#"{"total": 12.50, "items": [1, 2, {"e": "1e999999"}]}"#,
            "null",
        ] {
            assert_eq!(json_refusal(json), None, "{json} is accepted");
        }
        assert!(text_refusal("a\0b").is_some());
        assert_eq!(text_refusal("00-abc-01"), None);
    }
}
