//! The subjects' keys: where they are kept ([`SubjectKeys`]), and how they may be wrapped by a
//! master key of the user's ([`KeyWrap`]).

use crate::error::{BoxError, Error, Result};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A subject's data key: 32 random bytes for AES-256-GCM. Its `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(pub(crate) [u8; 32]);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Aes256Gcm::generate_key(OsRng).into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from stored bytes; `None` unless there are exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Where the subjects' keys are kept, as the bytes [`KeyWrap`] made of them (the raw key when
/// there is no master key). A subject has at most one key; deleting it forgets the subject.
///
/// Backends: [`MemorySubjectKeys`] (the in-memory event store's), and the `subject_keys` table
/// of `dtx-postgres`.
#[async_trait]
pub trait SubjectKeys: Send + Sync + 'static {
    /// The stored key of `subject`; when it has none, stores `new` and returns it. Two callers
    /// racing for a new subject get the same key.
    async fn get_or_insert(&self, subject: &str, new: Vec<u8>) -> Result<Vec<u8>>;

    /// The stored keys of those of `subjects` that have one (a forgotten subject has none).
    async fn get_many(&self, subjects: &[String]) -> Result<HashMap<String, Vec<u8>>>;

    /// Deletes the key of `subject`, in one statement: every value sealed with it is unreadable
    /// from then on. `false` when it had none.
    async fn forget(&self, subject: &str) -> Result<bool>;
}

/// The in-memory [`SubjectKeys`]: a map shared by clones.
#[derive(Debug, Clone, Default)]
pub struct MemorySubjectKeys {
    keys: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl MemorySubjectKeys {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SubjectKeys for MemorySubjectKeys {
    async fn get_or_insert(&self, subject: &str, new: Vec<u8>) -> Result<Vec<u8>> {
        Ok(self.lock().entry(subject.to_owned()).or_insert(new).clone())
    }

    async fn get_many(&self, subjects: &[String]) -> Result<HashMap<String, Vec<u8>>> {
        let keys = self.lock();
        Ok(subjects
            .iter()
            .filter_map(|s| keys.get(s).map(|k| (s.clone(), k.clone())))
            .collect())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        Ok(self.lock().remove(subject).is_some())
    }
}

/// Wraps the subjects' keys before they are stored, and unwraps them when they are read: a
/// master key (in a KMS, an HSM, a secret store) that the database never sees.
///
/// Set it before the first key is made: a key stored unwrapped does not unwrap.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not wrap subject keys",
    note = "implement `dtx::personal::KeyWrap` for `{Self}`, or use `dtx::personal::MasterKey`"
)]
pub trait KeyWrap: Send + Sync + 'static {
    /// The bytes to store for `key`, the key of `subject`.
    ///
    /// # Errors
    /// Why it cannot be wrapped; the append that needed it fails with it.
    fn wrap(&self, subject: &str, key: &DataKey) -> std::result::Result<Vec<u8>, BoxError>;

    /// The key of `subject` from its stored bytes.
    ///
    /// # Errors
    /// Why it cannot be unwrapped (another master key, say); the read fails with it.
    fn unwrap(&self, subject: &str, stored: &[u8]) -> std::result::Result<DataKey, BoxError>;
}

/// A [`KeyWrap`] with a 32-byte master key of the user's: each subject key sealed with
/// AES-256-GCM, the subject's id as associated data.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl MasterKey {
    /// The master key from its 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(Aes256Gcm::new(key.into()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl KeyWrap for MasterKey {
    fn wrap(&self, subject: &str, key: &DataKey) -> std::result::Result<Vec<u8>, BoxError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: &key.0,
                    aad: subject.as_bytes(),
                },
            )
            .map_err(|_| format!("the key of subject `{subject}` could not be wrapped"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    fn unwrap(&self, subject: &str, stored: &[u8]) -> std::result::Result<DataKey, BoxError> {
        let refused = || -> BoxError {
            format!(
                "the stored key of subject `{subject}` does not unwrap with this master key \
                 (another master key, or a key stored before the master key was set)"
            )
            .into()
        };
        if stored.len() < 12 {
            return Err(refused());
        }
        let (nonce, sealed) = stored.split_at(12);
        let key = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: subject.as_bytes(),
                },
            )
            .map_err(|_| refused())?;
        DataKey::from_slice(&key).ok_or_else(refused)
    }
}

/// No master key: the key is stored as it is.
pub(crate) fn unwrapped(subject: &str, stored: &[u8]) -> Result<DataKey> {
    DataKey::from_slice(stored).ok_or_else(|| {
        Error::storage(format!(
            "the stored key of subject `{subject}` is not 32 bytes: was it wrapped by a master \
             key this store was not given?"
        ))
    })
}
