//! The request fingerprint: a key reused with another payload is refused.

use sha2::{Digest, Sha256};
use std::fmt;

/// The SHA-256 of what identifies a request's payload. A key reused with another fingerprint is
/// [`Claim::Mismatch`](super::Claim::Mismatch) (HTTP 422).
///
/// ```
/// use dtx::idempotency::Fingerprint;
/// let a = Fingerprint::builder().part(b"POST").part(b"/orders").part(br#"{"qty":1}"#).finish();
/// let b = Fingerprint::builder().part(b"POST").part(b"/orders").part(br#"{"qty":2}"#).finish();
/// assert_ne!(a, b);
/// // Parts are length-prefixed: moving bytes between parts changes the fingerprint.
/// assert_ne!(Fingerprint::builder().part(b"ab").part(b"c").finish(),
///            Fingerprint::builder().part(b"a").part(b"bc").finish());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one byte string.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The fingerprint of a value's JSON.
    pub fn of_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        let mut hasher = Sha256::new();
        serde_json::to_writer(HashWriter(&mut hasher), value)?;
        Ok(Self(hasher.finalize().into()))
    }

    /// A fingerprint of several parts (method, path, body, ...), each length-prefixed.
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder(Sha256::new())
    }

    /// A fingerprint read back from storage.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds a [`Fingerprint`] from parts; see [`Fingerprint::builder`].
#[derive(Clone)]
pub struct FingerprintBuilder(Sha256);

impl FingerprintBuilder {
    /// Adds one part.
    #[must_use]
    pub fn part(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// The fingerprint.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintBuilder")
    }
}
