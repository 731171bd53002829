//! Low-level pieces for tests (feature `test-util`): forging tokens with a chosen header,
//! writing a manifest for a hand-made commit.
//!
//! None of this is needed to use keyrot; it exists so tests (keyrot's own, and those of a
//! store or an adapter) can build inputs the public API deliberately refuses to build,
//! such as a token signed by a key that is not in any ring.

/// Strict base64url (RFC 4648 §5, no padding, canonical trailing bits), as keyrot reads
/// and writes it.
pub mod b64 {
    pub use crate::b64::{decode, encode, encode_into};
}

/// Token encoding without a ring: sign with any key, under any header.
pub mod token {
    pub use crate::token::{encode_header, encode_header_with_type, sign};
}

pub use crate::integrity::seal_manifest;

mod counting;
pub use counting::Counting;
mod soft_custody;
mod soft_signing;
pub use soft_custody::SoftCustody;
pub use soft_signing::SoftSigning;

/// A [`Verified`](crate::Verified) token with these parts, as if a verifier had checked
/// it: for tests of what consumes verified tokens (extractors, scope checks).
pub fn verified(
    kid: &str,
    alg: crate::Algorithm,
    claims: serde_json::Map<String, serde_json::Value>,
) -> crate::Verified {
    crate::Verified::new(kid.to_owned(), alg, claims)
}

/// Appends `record` to the ledger of `rotator`'s ring exactly as given, linked into the
/// chain under the rotator's sealer: the records other instances (or a flood within
/// their budgets) would have written, for tests of what reads the ledger.
pub async fn append_audit(rotator: &crate::Rotator, record: &crate::AuditRecord) -> Result<(), crate::StorageError> {
    rotator.append_audit(record).await
}

/// Reading metrics out of the Prometheus text format in tests.
pub mod metrics {
    /// The value of the sample of `name` whose labels include every `name="value"` pair of
    /// `labels` (the first such sample), from Prometheus text exposition.
    pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (series, v) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let all = labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")));
            all.then(|| v.parse().ok()).flatten()
        })
    }
}

/// The secret of a master key, for tests that check it appears nowhere.
pub fn master_key_secret(key: &crate::MasterKey) -> crate::SecretBytes {
    key.secret().clone()
}
