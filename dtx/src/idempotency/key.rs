//! What names a record: the client's key, the caller's scope, and the digest that stands for
//! both in logs.

use super::Fingerprint;
use std::fmt;
use std::sync::Arc;

/// A client-chosen idempotency key: 1 to [`IdempotencyKey::MAX_CHARS`] characters, no control
/// characters (see the [module docs](super#key-format)).
///
/// Its `Debug` output is a [`KeyDigest`], never the key itself.
///
/// ```
/// use dtx::idempotency::IdempotencyKey;
/// assert!(IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324").is_ok());
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("a\nb").is_err());
/// assert!(IdempotencyKey::new("k".repeat(256)).is_err());
/// // The Structured Field string form of the IETF draft, and the bare form.
/// assert_eq!(IdempotencyKey::from_header_value(r#""abc-1""#)?.as_str(), "abc-1");
/// assert_eq!(IdempotencyKey::from_header_value("abc-1")?.as_str(), "abc-1");
/// # Ok::<(), dtx::idempotency::InvalidKey>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The longest key accepted, in characters (Stripe's limit).
    pub const MAX_CHARS: usize = 255;

    /// Validates a key.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidKey> {
        let key: String = key.into();
        check("idempotency key", &key)?;
        Ok(Self(key.into()))
    }

    /// Parses the value of an `Idempotency-Key` header: an RFC 8941 string (`"…"`, with `\"`
    /// and `\\` escapes) or the bare key, surrounding spaces ignored.
    pub fn from_header_value(value: &str) -> Result<Self, InvalidKey> {
        let value = value.trim_matches([' ', '\t']);
        let Some(quoted) = value.strip_prefix('"') else {
            return Self::new(value);
        };
        let malformed = InvalidKey {
            what: "idempotency key",
            reason: "a quoted key must be one Structured Field string: `\"…\"`",
            chars: value.chars().count(),
        };
        let mut key = String::with_capacity(quoted.len());
        let mut chars = quoted.chars();
        loop {
            match chars.next() {
                None => return Err(malformed),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\')) => key.push(c),
                    _ => return Err(malformed),
                },
                Some(c) => key.push(c),
            }
        }
        if chars.next().is_some() {
            return Err(malformed);
        }
        Self::new(key)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", KeyDigest::of("", self.as_str()))
    }
}

/// Whose key it is: the authenticated principal or tenant. Part of the unique key of every
/// record, so equal keys of two scopes never meet.
///
/// Same format as [`IdempotencyKey`]; its `Debug` output is a hash.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Arc<str>);

impl Scope {
    /// Validates a scope.
    pub fn new(scope: impl Into<String>) -> Result<Self, InvalidKey> {
        let scope: String = scope.into();
        check("idempotency scope", &scope)?;
        Ok(Self(scope.into()))
    }

    /// The scope.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", KeyDigest::of(self.as_str(), ""))
    }
}

fn check(what: &'static str, value: &str) -> Result<(), InvalidKey> {
    let chars = value.chars().count();
    let reason = if chars == 0 {
        "must not be empty"
    } else if chars > IdempotencyKey::MAX_CHARS {
        "is longer than 255 characters"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(InvalidKey {
        what,
        reason,
        chars,
    })
}

/// A key or scope that does not match the published format. The value itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} ({chars} characters): {reason}; expected 1 to 255 characters without control characters"
)]
pub struct InvalidKey {
    /// `idempotency key` or `idempotency scope`.
    pub what: &'static str,
    /// Why it was rejected.
    pub reason: &'static str,
    /// Its length in characters.
    pub chars: usize,
}

/// A short hash naming a (scope, key) pair in logs and errors without revealing either.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(u64);

impl KeyDigest {
    /// The digest of a scope and key.
    pub fn of(scope: &str, key: &str) -> Self {
        let hash = Fingerprint::builder()
            .part(scope.as_bytes())
            .part(key.as_bytes())
            .finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        Self(u64::from_be_bytes(first))
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{:016x}", self.0)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_published_format() {
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::new("k".repeat(256)).unwrap_err().reason,
            "is longer than 255 characters"
        );
        assert!(
            IdempotencyKey::new("é".repeat(255)).is_ok(),
            "characters, not bytes"
        );
        assert!(IdempotencyKey::new("a\u{7f}").is_err());
        assert!(IdempotencyKey::new("a\u{85}").is_err());
        assert!(
            IdempotencyKey::from_header_value(r#""a\"b""#)
                .unwrap()
                .as_str()
                == "a\"b"
        );
        for bad in [r#""open"#, r#""a" b"#, r#""a\x""#, r#""""#, "   "] {
            assert!(IdempotencyKey::from_header_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = IdempotencyKey::new("secret-key-material").unwrap();
        let scope = Scope::new("tenant-secret").unwrap();
        let shown = format!("{key:?} {scope:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let error = IdempotencyKey::new("secret\n").unwrap_err().to_string();
        assert!(!error.contains("secret"), "{error}");
    }
}
