//! Idempotency keys: a retried request or call runs once, and every retry gets the first
//! outcome back.
//!
//! An [`IdempotencyStore`] keeps one record per **(scope, key)**: the scope is the caller's
//! principal or tenant (so two clients can never replay each other's results, whatever keys
//! they pick), the key is the client's [`IdempotencyKey`]. Each record holds a [`Fingerprint`]
//! of the request, its status (in progress / completed), the stored result, and its creation and
//! expiry times.
//!
//! A caller [claims](IdempotencyStore::claim) a key before doing the work and gets one of four
//! answers ([`Claim`]):
//!
//! | answer | meaning | HTTP ([`http`], feature `http`) |
//! |---|---|---|
//! | [`Claim::Claimed`] | first request (or the record expired, or its holder's lock timed out): do the work, then [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release) | the handler runs |
//! | [`Claim::Completed`] | a retry: here is the stored result | the stored response, with `Idempotent-Replayed: true` |
//! | [`Claim::InFlight`] | the first request is still running | 409 |
//! | [`Claim::Mismatch`] | the key was used with another request payload | 422 |
//!
//! A claim holds an in-progress **lock with its own timeout** ([`IdempotencyPolicy::lock_timeout`]):
//! if its holder crashes, the key is free again once the lock times out, never locked for good.
//! Records expire after [`IdempotencyPolicy::ttl`] (`IDEMPOTENCY_TTL_HOURS`, default 24); an
//! expired record is as good as absent, and [`IdempotencyStore::cleanup_expired`] deletes them
//! in bounded batches.
//!
//! Three ways to use it:
//!
//! - `#[dtx::idempotent]` on an async fn: the result is stored (serialised with `serde_json`),
//!   a retry returns it without running the body, and concurrent duplicates wait for the first;
//! - the [`http::IdempotencyLayer`] (feature `http`) for axum and other `tower` services,
//!   following the IETF `Idempotency-Key` draft;
//! - the store directly, through [`IdempotencyStore::claim_in`] and
//!   [`complete_in`](IdempotencyStore::complete_in), which claim and complete a key **in the unit
//!   of work that appends the command's events** ([`crate::uow`]), so the stored result and the
//!   state change commit or roll back together.
//!
//! ## Key format
//!
//! A key is 1 to 255 characters (Unicode scalar values) without control characters
//! (U+0000–U+001F, U+007F–U+009F). Over HTTP a key is also limited to visible ASCII and spaces
//! by HTTP itself, and may be sent as a Structured Field string (`"…"`, as the draft writes it)
//! or bare (as most clients send it). Use a random UUID. A key that does not match is rejected
//! before any lookup.
//!
//! Keys, scopes and stored results never appear in logs, spans or error messages: those name
//! a key by a short hash ([`KeyDigest`]).

mod call;
mod fingerprint;
#[cfg(feature = "http")]
pub mod http;
mod key;
mod memory;
mod store;

pub use call::{AlreadyInstalled, IdempotentCall, install, installed, run_once};
#[doc(hidden)]
pub use call::{ResultCodec, run_with};
pub use fingerprint::{Fingerprint, FingerprintBuilder};
pub use key::{IdempotencyKey, InvalidKey, KeyDigest, Scope};
pub use memory::MemoryIdempotencyStore;
pub(crate) use store::traced_claim;
pub use store::{
    Claim, ClaimRequest, IdempotencyError, IdempotencyPolicy, IdempotencyRecord, IdempotencyStatus,
    IdempotencyStore, Lease, SharedIdempotencyStore, spawn_cleanup,
};

/// The largest stored result or response a backend accepts by default: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
