//! Integrity of what is stored: key rows authenticated through a ring manifest, and the
//! audit ledger as a MAC chain, both under the master key.
//!
//! Sealing keeps private keys confidential; this module keeps the database honest. Someone
//! who can write to the database but does not hold the master key can delete rows (deny
//! service) but cannot forge, swap or resurrect a key, and cannot alter the ledger without
//! detection.
//!
//! - **Ring manifest.** Every commit writes, beside the changed key rows, a manifest of the
//!   whole ring: its name, the new generation, and for every key the SHA-256 digest of every
//!   field that decides what verifies (kid, algorithm, state, origin, forced flag,
//!   fingerprint, public JWK, all lifecycle times, revocation). The manifest is
//!   authenticated with HMAC-SHA-256 under a key derived from the master key
//!   ([`Sealer::authenticate`](crate::seal::Sealer::authenticate)). When a snapshot is built, a row whose digest is not in
//!   the manifest (altered, inserted, or replayed from an older image) is *tampered*: it
//!   never verifies and is reported. A manifest that fails its MAC, or names another
//!   generation than the ring row, makes every row untrusted.
//! - **Audit chain.** Each ledger record carries a sequence number and a MAC over its
//!   content and its predecessor's MAC. [`verify_chain`] finds the first record that was
//!   deleted, altered, inserted or reordered.

mod canon;
mod chain;
mod manifest;
mod report;

pub use chain::{ChainBreak, ChainReport, SealerLinker, legacy_ledger_note, verify_chain};
pub use manifest::{check_ring, rows_digest, seal_manifest, seal_retired_manifest};
pub use report::{IntegrityReport, RingIntegrity, TamperedKey};

/// The highest generation a ring can have: 2^62. A ring that commits once a millisecond
/// reaches it after 146 million years, so a stored generation above it was altered, and
/// every integrity check says so (the ring is not intact; [`IntegrityReport::summary`]
/// names it). A manifest naming a generation above it is invalid. The bound keeps a
/// generation and every successor far from the `BIGINT` (`i64`) maximum the stores keep
/// it in, so no `+ 1` and no conversion can overflow.
pub const MAX_GENERATION: u64 = 1 << 62;
