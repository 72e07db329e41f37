//! [`PersonalData`]: what an event store does with personal values — seal them before writing,
//! open them after reading, forget a subject.

use super::keys::{DataKey, KeyWrap, SubjectKeys, unwrapped};
use super::{FORGOTTEN, MARK, SEALED, VALUE};
use crate::error::{Error, Result};
use crate::store::{EventData, NewEvent, RecordedEvent, Snapshot, StreamId};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// `"dtx:personal"` as it appears in JSON text: payloads without it are passed by untouched.
const MARKED: &str = "\"dtx:personal\"";

/// The length of an AES-GCM nonce.
const NONCE: usize = 12;

/// How long a key stays cached for sealing (see [`PersonalData`]).
const SEALING_TTL: Duration = Duration::from_secs(60);

/// The personal data of an event store: seals the [`Personal`](super::Personal) values of what
/// it writes (events, snapshots) with their subjects' keys, opens them in what it reads, and
/// forgets a subject by deleting its key. Both event stores hold one; clones share it.
///
/// **Keys and caching.** Sealing needs the subject's key, made on first use: a key is cached
/// for sealing for a minute, so an append of a known subject costs no extra round trip.
/// Opening never uses a cache: every read asks the key store for the keys of the subjects it
/// returns (one query per read, and only for reads that hold personal values), so a key
/// deleted by [`forget`](Self::forget) in any process opens nothing anywhere from the moment
/// the deletion commits. A process that appends for a subject just forgotten elsewhere may
/// seal with the deleted key for the rest of that minute: those values read as forgotten too.
#[derive(Clone)]
pub struct PersonalData {
    keys: Arc<dyn SubjectKeys>,
    wrap: Option<Arc<dyn KeyWrap>>,
    sealing: moka::sync::Cache<Box<str>, Arc<Aes256Gcm>>,
}

impl fmt::Debug for PersonalData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalData")
            .field("wrapped", &self.wrap.is_some())
            .finish_non_exhaustive()
    }
}

/// Keys in memory ([`MemorySubjectKeys`](super::MemorySubjectKeys)), unwrapped.
impl Default for PersonalData {
    fn default() -> Self {
        Self::new(super::MemorySubjectKeys::new())
    }
}

impl PersonalData {
    /// Personal data with its keys in `keys`, stored unwrapped.
    pub fn new(keys: impl SubjectKeys) -> Self {
        Self {
            keys: Arc::new(keys),
            wrap: None,
            sealing: sealing_cache(),
        }
    }

    /// Keeps the keys in `keys` instead (with the same key wrap, if any).
    #[must_use]
    pub fn with_keys(mut self, keys: impl SubjectKeys) -> Self {
        self.keys = Arc::new(keys);
        self.sealing = sealing_cache();
        self
    }

    /// Wraps every key with `wrap` before it is stored (a master key, see
    /// [`MasterKey`](super::MasterKey)).
    #[must_use]
    pub fn with_key_wrap(mut self, wrap: impl KeyWrap) -> Self {
        self.wrap = Some(Arc::new(wrap));
        self.sealing = sealing_cache();
        self
    }

    /// Deletes the key of `subject` (one statement): from then on, every read of every store
    /// sharing the key store yields its values as forgotten. `false` when it had no key.
    ///
    /// # Errors
    /// The key store's.
    pub async fn forget(&self, subject: &str) -> Result<bool> {
        self.sealing.invalidate(subject);
        let forgotten = self.keys.forget(subject).await?;
        self.sealing.invalidate(subject);
        tracing::info!(subject, forgotten, "personal data subject forgotten");
        Ok(forgotten)
    }

    /// Seals the personal values of `events` before they are appended to `stream`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a value that names no subject; the key store's errors.
    pub async fn seal_events(&self, stream: &StreamId, events: &mut [NewEvent]) -> Result<()> {
        for event in events.iter_mut() {
            if !event.data.get().contains(MARKED) {
                continue;
            }
            let Some(sealed) = self.seal_text(event.data.get()).await? else {
                return Err(Error::Invalid {
                    what: "personal value",
                    value: format!(
                        "in event `{}` (id {}) appended to stream `{stream}`",
                        event.event_type, event.event_id
                    ),
                    reason: "it names no data subject: declare `#[event(personal(subject = \
                             field))]` on the event's variant, or make it with `Personal::of`",
                });
            };
            event.data = sealed;
        }
        Ok(())
    }

    /// Seals the personal values of a snapshot's state. `false` when one of them names no
    /// subject: such a snapshot must not be stored (it would hold the value in clear).
    ///
    /// # Errors
    /// The key store's.
    pub async fn seal_snapshot(&self, snapshot: &mut Snapshot) -> Result<bool> {
        if !snapshot.state.get().contains(MARKED) {
            return Ok(true);
        }
        match self.seal_text(snapshot.state.get()).await? {
            Some(sealed) => {
                snapshot.state = sealed;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Opens the personal values of events read from a store.
    ///
    /// # Errors
    /// The key store's, or a stored key that does not unwrap.
    pub async fn open_events(&self, events: &mut [RecordedEvent]) -> Result<()> {
        self.open_texts(events.iter_mut().map(|e| &mut e.data))
            .await
    }

    /// Opens the personal values of events read for an aggregate.
    ///
    /// # Errors
    /// As [`open_events`](Self::open_events).
    pub async fn open_data(&self, events: &mut [EventData]) -> Result<()> {
        self.open_texts(events.iter_mut().map(|e| &mut e.data))
            .await
    }

    /// Opens the personal values of a snapshot's state.
    ///
    /// # Errors
    /// As [`open_events`](Self::open_events).
    pub async fn open_snapshot(&self, snapshot: &mut Snapshot) -> Result<()> {
        if !snapshot.state.get().contains(MARKED) {
            return Ok(());
        }
        let mut text: Box<str> = snapshot.state.get().into();
        self.open_texts(std::iter::once(&mut text)).await?;
        snapshot.state = RawValue::from_string(text.into()).map_err(Error::storage)?;
        Ok(())
    }

    /// Opens the personal values of any JSON text a store read (a raw payload).
    ///
    /// # Errors
    /// As [`open_events`](Self::open_events).
    pub async fn open_json(&self, json: &str) -> Result<String> {
        let mut text: Box<str> = json.into();
        self.open_texts(std::iter::once(&mut text)).await?;
        Ok(text.into())
    }

    /// The payload with every value in clear removed, its sealed form kept: for copies of an
    /// opened payload that are stored again (a saga's awaited event).
    pub fn redact(json: &str) -> std::borrow::Cow<'_, str> {
        if !json.contains(MARKED) {
            return json.into();
        }
        let Ok(mut value) = serde_json::from_str::<Value>(json) else {
            return json.into();
        };
        walk(&mut value, &mut |form| {
            if form.remove(VALUE).is_some() && !form.contains_key(SEALED) {
                form.insert(FORGOTTEN.to_owned(), Value::Bool(true));
            }
        });
        value.to_string().into()
    }

    /// Seals the values in clear of a payload; `None` when one names no subject.
    async fn seal_text(&self, json: &str) -> Result<Option<Box<RawValue>>> {
        let mut value: Value = serde_json::from_str(json).map_err(Error::storage)?;
        let mut subjects = HashSet::new();
        let mut unnamed = false;
        walk(&mut value, &mut |form| {
            if form.contains_key(VALUE) {
                match form.get(MARK).and_then(Value::as_str) {
                    Some(subject) => {
                        subjects.insert(subject.to_owned());
                    }
                    None => unnamed = true,
                }
            }
        });
        if unnamed {
            return Ok(None);
        }
        let mut ciphers = HashMap::with_capacity(subjects.len());
        for subject in subjects {
            let cipher = self.sealing_cipher(&subject).await?;
            ciphers.insert(subject, cipher);
        }
        let mut failed = None;
        walk(&mut value, &mut |form| {
            let Some(clear) = form.remove(VALUE) else {
                return;
            };
            let subject = form.get(MARK).and_then(Value::as_str).unwrap_or_default();
            match ciphers.get(subject).map(|c| seal(c, subject, &clear)) {
                Some(Ok(sealed)) => {
                    form.insert(SEALED.to_owned(), Value::String(sealed));
                }
                _ => failed = Some(subject.to_owned()),
            }
        });
        if let Some(subject) = failed {
            return Err(Error::storage(format!(
                "a personal value of subject `{subject}` could not be sealed"
            )));
        }
        let sealed = serde_json::value::to_raw_value(&value).map_err(Error::storage)?;
        Ok(Some(sealed))
    }

    /// The cipher that seals the values of `subject`: cached, or its key read (made if it has
    /// none).
    async fn sealing_cipher(&self, subject: &str) -> Result<Arc<Aes256Gcm>> {
        if let Some(cipher) = self.sealing.get(subject) {
            return Ok(cipher);
        }
        let fresh = DataKey::generate();
        let stored = match &self.wrap {
            Some(wrap) => wrap.wrap(subject, &fresh).map_err(Error::Storage)?,
            None => fresh.0.to_vec(),
        };
        let stored = self.keys.get_or_insert(subject, stored).await?;
        let key = self.unwrap(subject, &stored)?;
        let cipher = Arc::new(Aes256Gcm::new((&key.0).into()));
        self.sealing.insert(subject.into(), Arc::clone(&cipher));
        Ok(cipher)
    }

    fn unwrap(&self, subject: &str, stored: &[u8]) -> Result<DataKey> {
        match &self.wrap {
            Some(wrap) => wrap.unwrap(subject, stored).map_err(Error::Storage),
            None => unwrapped(subject, stored),
        }
    }

    /// Opens the sealed values of `texts` with the keys the key store holds now: a value whose
    /// key is gone (or does not open it: a key made anew after a forget) becomes forgotten.
    async fn open_texts<'a>(&self, texts: impl Iterator<Item = &'a mut Box<str>>) -> Result<()> {
        let mut marked = Vec::new();
        let mut subjects = HashSet::new();
        for text in texts {
            if !text.contains(MARKED) {
                continue;
            }
            // What does not parse is left for the decoder to report.
            let Ok(mut value) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            walk(&mut value, &mut |form| {
                if form.contains_key(SEALED)
                    && let Some(subject) = form.get(MARK).and_then(Value::as_str)
                {
                    subjects.insert(subject.to_owned());
                }
            });
            marked.push((text, value));
        }
        if marked.is_empty() {
            return Ok(());
        }
        let subjects: Vec<String> = subjects.into_iter().collect();
        let stored = if subjects.is_empty() {
            HashMap::new()
        } else {
            self.keys.get_many(&subjects).await?
        };
        let mut ciphers = HashMap::with_capacity(stored.len());
        for (subject, stored) in stored {
            let key = self.unwrap(&subject, &stored)?;
            ciphers.insert(subject, Aes256Gcm::new((&key.0).into()));
        }
        for (text, mut value) in marked {
            walk(&mut value, &mut |form| {
                if form.contains_key(VALUE) {
                    return;
                }
                let Some(sealed) = form.get(SEALED).and_then(Value::as_str) else {
                    return;
                };
                let subject = form.get(MARK).and_then(Value::as_str).unwrap_or_default();
                let opened = ciphers
                    .get(subject)
                    .and_then(|cipher| open(cipher, subject, sealed));
                if let Some(clear) = opened {
                    form.insert(VALUE.to_owned(), clear);
                } else {
                    form.remove(SEALED);
                    form.insert(FORGOTTEN.to_owned(), Value::Bool(true));
                }
            });
            *text = value.to_string().into_boxed_str();
        }
        Ok(())
    }
}

/// A cache of sealing ciphers by subject, entries kept [`SEALING_TTL`].
fn sealing_cache() -> moka::sync::Cache<Box<str>, Arc<Aes256Gcm>> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(SEALING_TTL)
        .build()
}

/// Calls `visit` on every personal value's form in `value` (an object with the mark), without
/// looking inside one.
fn walk(value: &mut Value, visit: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
    match value {
        Value::Object(map) if map.contains_key(MARK) => visit(map),
        Value::Object(map) => map.values_mut().for_each(|v| walk(v, visit)),
        Value::Array(items) => items.iter_mut().for_each(|v| walk(v, visit)),
        _ => {}
    }
}

/// The sealed form of a value: base64 of a random nonce and the AES-256-GCM ciphertext of its
/// JSON, bound to the subject's id.
fn seal(cipher: &Aes256Gcm, subject: &str, clear: &Value) -> Result<String> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let text = clear.to_string();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: text.as_bytes(),
                aad: subject.as_bytes(),
            },
        )
        .map_err(|_| Error::storage("AES-GCM refused to seal a personal value"))?;
    let mut bytes = Vec::with_capacity(NONCE + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(BASE64.encode(bytes))
}

/// The value a sealed form holds, if `cipher` opens it.
fn open(cipher: &Aes256Gcm, subject: &str, sealed: &str) -> Option<Value> {
    let bytes = BASE64.decode(sealed).ok()?;
    if bytes.len() < NONCE {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE);
    let clear = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: subject.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&clear).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::personal::{MemorySubjectKeys, Personal};

    fn event(data: &Value) -> NewEvent {
        NewEvent::from_json("Registered", data).unwrap()
    }

    async fn sealed(personal: &PersonalData, data: &Value) -> String {
        let stream = StreamId::new("Customer-1").unwrap();
        let mut events = vec![event(data)];
        personal.seal_events(&stream, &mut events).await.unwrap();
        events[0].data.get().to_owned()
    }

    async fn opened(personal: &PersonalData, stored: &str) -> Value {
        serde_json::from_str(&personal.open_json(stored).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn sealed_values_open_while_the_key_exists_and_read_forgotten_after() {
        let personal = PersonalData::new(MemorySubjectKeys::new());
        let data = serde_json::json!({
            "name": { "dtx:personal": "c-1", "value": "Ada" },
            "phones": [{ "dtx:personal": "c-1", "value": ["+44 1"] }],
            "tier": "gold",
        });
        let stored = sealed(&personal, &data).await;
        assert!(
            !stored.contains("Ada") && !stored.contains("+44"),
            "{stored}"
        );
        let read = opened(&personal, &stored).await;
        assert_eq!(read["name"]["value"], "Ada");
        assert_eq!(read["phones"][0]["value"][0], "+44 1");
        assert_eq!(read["tier"], "gold");

        // Opening what is open again changes nothing.
        let again = opened(&personal, &read.to_string()).await;
        assert_eq!(again, read);

        assert!(personal.forget("c-1").await.unwrap());
        let read = opened(&personal, &stored).await;
        assert_eq!(
            read["name"],
            serde_json::json!({ "dtx:personal": "c-1", "forgotten": true })
        );
        assert_eq!(read["tier"], "gold");
        let name: Personal<String> = serde_json::from_value(read["name"].clone()).unwrap();
        assert!(name.is_forgotten());
        assert_eq!(name.subject(), Some("c-1"));
    }

    #[tokio::test]
    async fn a_tampered_value_or_another_key_reads_as_forgotten_never_as_garbage() {
        let personal = PersonalData::new(MemorySubjectKeys::new());
        let data = serde_json::json!({ "name": { "dtx:personal": "c-2", "value": "Grace" } });
        let stored: Value = serde_json::from_str(&sealed(&personal, &data).await).unwrap();
        let mut tampered = stored.clone();
        let blob = tampered["name"]["sealed"].as_str().unwrap().to_owned();
        // One character of the ciphertext changed: the tag no longer matches.
        let flipped = if &blob[20..21] == "A" { "B" } else { "A" };
        tampered["name"]["sealed"] =
            Value::String(format!("{}{flipped}{}", &blob[..20], &blob[21..]));
        assert_eq!(
            opened(&personal, &tampered.to_string()).await["name"]["forgotten"],
            true
        );

        // Bound to its subject: moved under another subject's name, it does not open.
        let mut moved = stored.clone();
        moved["name"]["dtx:personal"] = Value::String("c-3".to_owned());
        let _ = sealed(
            &personal,
            &serde_json::json!({ "x": { "dtx:personal": "c-3", "value": 1 } }),
        )
        .await;
        assert_eq!(
            opened(&personal, &moved.to_string()).await["name"]["forgotten"],
            true
        );
        assert_eq!(
            opened(&personal, &stored.to_string()).await["name"]["value"],
            "Grace"
        );
    }

    #[tokio::test]
    async fn a_value_without_a_subject_is_refused_not_stored_in_clear() {
        let personal = PersonalData::new(MemorySubjectKeys::new());
        let stream = StreamId::new("Customer-4").unwrap();
        let payload = serde_json::json!({ "name": Personal::new("Ada".to_owned()) });
        let mut events = vec![event(&payload)];
        let error = personal
            .seal_events(&stream, &mut events)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("personal(subject = field)"),
            "{error}"
        );
    }

    #[test]
    fn redact_keeps_only_the_sealed_form() {
        let opened = r#"{"a":{"dtx:personal":"c","sealed":"xyz","value":"Ada"},"b":{"dtx:personal":"c","value":"Bob"},"n":1}"#;
        let redacted: Value = serde_json::from_str(&PersonalData::redact(opened)).unwrap();
        assert_eq!(
            redacted,
            serde_json::json!({
                "a": { "dtx:personal": "c", "sealed": "xyz" },
                "b": { "dtx:personal": "c", "forgotten": true },
                "n": 1,
            })
        );
        assert_eq!(PersonalData::redact(r#"{"n":1}"#), r#"{"n":1}"#);
    }
}
