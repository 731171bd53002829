//! Key rows authenticated through the ring manifest: the row digests, writing the
//! manifest, and checking a loaded ring against it.

use super::canon::Canon;
use super::report::{IntegrityReport, RingIntegrity, TamperedKey};
use crate::b64;
use crate::ring::{KeyRecord, Ring};
use crate::seal::{Mac, SealError, Sealer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

const MANIFEST_DOMAIN: &[u8] = b"keyrot/manifest/v1";
const ROW_DOMAIN: &[u8] = b"keyrot/key-row/v1";

/// The digest of every field of a key row, bound to the ring's name: everything that
/// decides what verifies, and the sealed private key (its master key id and a digest of
/// the ciphertext), so a row whose material was swapped or corrupted is a tampered row,
/// not a ring that fails to load.
pub fn row_digest(ring: &str, k: &KeyRecord) -> String {
    let mut c = Canon::new(ROW_DOMAIN);
    c.str(ring)
        .str(&k.kid)
        .str(k.alg.as_str())
        .str(k.state.as_str())
        .str(k.origin.as_str())
        .flag(k.forced)
        .str(&k.fingerprint)
        .str(&k.public_jwk)
        .flag(k.sealed.is_some());
    if let Some(sealed) = &k.sealed {
        c.str(&sealed.master_key_id).bytes(&Sha256::digest(&sealed.ciphertext));
    }
    c.time(k.created_at)
        .opt_time(k.activate_at)
        .opt_time(k.activated_at)
        .opt_time(k.retired_at)
        .opt_time(k.expires_at)
        .opt_time(k.expired_at)
        .opt_time(k.revoked_at)
        .opt_str(k.revoke_reason.as_deref())
        .opt_time(k.purged_at);
    // Appended only when present, so the digests of rows without it are unchanged.
    if let Some(remote) = &k.remote {
        c.str("remote").str(remote);
    }
    b64::encode(&Sha256::digest(&c.0))
}

/// A digest of every row of `ring` as stored (kids and row digests, sorted): what a
/// reviewer of the integrity migration saw, so the migration can refuse rows that changed
/// after the review.
pub fn rows_digest(ring: &Ring) -> String {
    let rows: BTreeMap<&str, String> = ring
        .keys
        .iter()
        .map(|k| (k.kid.as_str(), row_digest(ring.name.as_str(), k)))
        .collect();
    let mut c = Canon::new(b"keyrot/rows/v1");
    c.str(ring.name.as_str()).u64(rows.len() as u64);
    for (kid, d) in rows {
        c.str(kid).str(&d);
    }
    b64::encode(&Sha256::digest(&c.0))
}

/// The stored form of a manifest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredManifest {
    v: u8,
    generation: u64,
    /// The id of the audit record the commit wrote.
    audit: String,
    keys: BTreeMap<String, String>,
    /// The ring was retired (its tenant offboarded): it takes no new key, ever. Written
    /// only when true, so the manifests of rings never retired read and authenticate as
    /// before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    retired: bool,
    mac: String,
}

/// A retired ring's manifest authenticates this marker after the keys: removing it (or
/// adding it) fails the MAC.
const RETIRED_MARKER: &str = "retired";

fn manifest_message(
    ring: &str,
    generation: u64,
    audit: &str,
    keys: &BTreeMap<String, String>,
    retired: bool,
) -> Vec<u8> {
    let mut c = Canon::new(MANIFEST_DOMAIN);
    c.str(ring).u64(generation).str(audit);
    c.u64(keys.len() as u64);
    for (kid, digest) in keys {
        c.str(kid).str(digest);
    }
    if retired {
        c.str(RETIRED_MARKER);
    }
    c.0
}

/// Writes the authenticated manifest of `ring` at its generation (the rotator calls this
/// on the ring state it is about to commit), naming `audit_id`, the id of the audit
/// record the same commit writes (so the ledger cannot lose its newest commit record
/// unnoticed).
pub fn seal_manifest(ring: &Ring, sealer: &dyn Sealer, audit_id: &str) -> Result<String, SealError> {
    seal(ring, sealer, audit_id, false)
}

/// [`seal_manifest`] for a retired ring: the manifest also authenticates that the ring is
/// retired ([`IntegrityReport::retired`]), which every later manifest of the ring keeps.
pub fn seal_retired_manifest(ring: &Ring, sealer: &dyn Sealer, audit_id: &str) -> Result<String, SealError> {
    seal(ring, sealer, audit_id, true)
}

fn seal(ring: &Ring, sealer: &dyn Sealer, audit_id: &str, retired: bool) -> Result<String, SealError> {
    let keys: BTreeMap<String, String> = ring
        .keys
        .iter()
        .map(|k| (k.kid.clone(), row_digest(ring.name.as_str(), k)))
        .collect();
    let mac = sealer.authenticate(&manifest_message(
        ring.name.as_str(),
        ring.generation,
        audit_id,
        &keys,
        retired,
    ))?;
    let stored = StoredManifest {
        v: 1,
        generation: ring.generation,
        audit: audit_id.to_owned(),
        keys,
        retired,
        mac: mac.to_text(),
    };
    serde_json::to_string(&stored).map_err(|_| SealError::Format)
}

/// Checks every row of a loaded ring against its manifest. Pure apart from the MAC check;
/// runs when a snapshot is built or a rotation loads the ring, never per token.
pub fn check_ring(ring: &Ring, sealer: &dyn Sealer) -> IntegrityReport {
    let report = match ring.manifest.as_deref() {
        None => unauthenticated(ring),
        Some(text) => match open_manifest(ring, text, sealer) {
            Ok(stored) => check_rows(ring, stored),
            Err((integrity, why)) => all_tampered(ring, integrity, &why),
        },
    };
    report.with_index()
}

/// A report on `ring` in which every row fails for `why`.
fn all_tampered(ring: &Ring, integrity: RingIntegrity, why: &str) -> IntegrityReport {
    IntegrityReport {
        integrity,
        tampered: ring
            .keys
            .iter()
            .map(|k| TamperedKey {
                kid: k.kid.clone(),
                reason: why.to_owned(),
            })
            .collect(),
        missing: Vec::new(),
        manifest_generation: None,
        ring_generation: ring.generation,
        manifest_audit_id: None,
        retired: false,
        tampered_kids: Default::default(),
    }
}

/// A ring without a manifest: empty, or no row is authenticated.
fn unauthenticated(ring: &Ring) -> IntegrityReport {
    if ring.keys.is_empty() && ring.generation == 0 {
        return all_tampered(ring, RingIntegrity::Empty, "");
    }
    all_tampered(
        ring,
        RingIntegrity::Unauthenticated,
        "not authenticated (the ring has no manifest)",
    )
}

/// The manifest, if it is readable and its MAC checks out; otherwise how the ring fails
/// as a whole and why (every row then fails for that reason).
fn open_manifest(ring: &Ring, text: &str, sealer: &dyn Sealer) -> Result<StoredManifest, (RingIntegrity, String)> {
    let invalid = |why: &str| (RingIntegrity::ManifestInvalid(why.to_owned()), why.to_owned());
    let Ok(stored) = serde_json::from_str::<StoredManifest>(text) else {
        return Err(invalid("the manifest is unreadable"));
    };
    let Some(mac) = Mac::parse(&stored.mac).filter(|_| stored.v == 1) else {
        return Err(invalid("the manifest has an unknown format"));
    };
    if stored.generation > super::MAX_GENERATION {
        return Err(invalid(
            "the manifest names a generation above 2^62, which no ring reaches",
        ));
    }
    let message = manifest_message(
        ring.name.as_str(),
        stored.generation,
        &stored.audit,
        &stored.keys,
        stored.retired,
    );
    match sealer.check_authentication(&mac, &message) {
        Ok(()) => Ok(stored),
        Err(SealError::UnknownMasterKey(id)) => {
            let why = format!("the manifest is authenticated under unknown master key {id:?}");
            Err((RingIntegrity::UnknownMasterKey(id), why))
        }
        Err(_) => Err(invalid("the manifest fails authentication")),
    }
}

/// Checks every row against an authenticated manifest.
fn check_rows(ring: &Ring, stored: StoredManifest) -> IntegrityReport {
    // A generation column that disagrees with the manifest is reported (the ring is not
    // intact) but rows that match the manifest stay trusted: the manifest's generation is
    // the authenticated one, and instances refuse to go back from it.
    let mut tampered = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in &ring.keys {
        let reason = if !seen.insert(k.kid.as_str()) {
            "the kid appears in more than one row"
        } else {
            match stored.keys.get(&k.kid) {
                None => "the row is not in the ring manifest (inserted)",
                Some(d) if *d != row_digest(ring.name.as_str(), k) => {
                    "the row differs from the ring manifest (altered or replayed)"
                }
                Some(_) => continue,
            }
        };
        tampered.push(TamperedKey {
            kid: k.kid.clone(),
            reason: reason.into(),
        });
    }
    let missing = stored
        .keys
        .keys()
        .filter(|kid| !seen.contains(kid.as_str()))
        .cloned()
        .collect();
    IntegrityReport {
        integrity: RingIntegrity::Authenticated,
        tampered,
        missing,
        manifest_generation: Some(stored.generation),
        ring_generation: ring.generation,
        manifest_audit_id: Some(stored.audit),
        retired: stored.retired,
        tampered_kids: Default::default(),
    }
}
