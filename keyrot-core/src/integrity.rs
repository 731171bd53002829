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
//!   ([`Sealer::authenticate`]). When a snapshot is built, a row whose digest is not in
//!   the manifest (altered, inserted, or replayed from an older image) is *tampered*: it
//!   never verifies and is reported. A manifest that fails its MAC, or names another
//!   generation than the ring row, makes every row untrusted.
//! - **Audit chain.** Each ledger record carries a sequence number and a MAC over its
//!   content and its predecessor's MAC. [`verify_chain`] finds the first record that was
//!   deleted, altered, inserted or reordered.

use crate::b64;
use crate::planner::TriggerKind;
use crate::ring::{KeyRecord, Ring};
use crate::seal::{Mac, SealError, Sealer};
use crate::storage::{AuditLinker, AuditRecord, StorageError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

const MANIFEST_DOMAIN: &[u8] = b"keyrot/manifest/v1";
const ROW_DOMAIN: &[u8] = b"keyrot/key-row/v1";
const AUDIT_DOMAIN: &[u8] = b"keyrot/audit/v1";

/// A length-prefixed canonical encoding: no two field sequences encode alike.
struct Canon(Vec<u8>);

impl Canon {
    fn new(domain: &[u8]) -> Self {
        let mut c = Self(Vec::with_capacity(256));
        c.bytes(domain);
        c
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn time(&mut self, t: DateTime<Utc>) -> &mut Self {
        self.int(t.timestamp_millis())
    }

    fn opt_time(&mut self, t: Option<DateTime<Utc>>) -> &mut Self {
        match t {
            Some(t) => {
                self.0.push(1);
                self.time(t)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    fn flag(&mut self, b: bool) -> &mut Self {
        self.0.push(u8::from(b));
        self
    }
}

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
    mac: String,
}

fn manifest_message(ring: &str, generation: u64, audit: &str, keys: &BTreeMap<String, String>) -> Vec<u8> {
    let mut c = Canon::new(MANIFEST_DOMAIN);
    c.str(ring).u64(generation).str(audit);
    c.u64(keys.len() as u64);
    for (kid, digest) in keys {
        c.str(kid).str(digest);
    }
    c.0
}

/// Writes the authenticated manifest of `ring` at its generation (the rotator calls this
/// on the ring state it is about to commit), naming `audit_id`, the id of the audit
/// record the same commit writes (so the ledger cannot lose its newest commit record
/// unnoticed).
pub fn seal_manifest(ring: &Ring, sealer: &dyn Sealer, audit_id: &str) -> Result<String, SealError> {
    let keys: BTreeMap<String, String> = ring
        .keys
        .iter()
        .map(|k| (k.kid.clone(), row_digest(ring.name.as_str(), k)))
        .collect();
    let mac = sealer.authenticate(&manifest_message(ring.name.as_str(), ring.generation, audit_id, &keys))?;
    let stored = StoredManifest {
        v: 1,
        generation: ring.generation,
        audit: audit_id.to_owned(),
        keys,
        mac: mac.to_text(),
    };
    serde_json::to_string(&stored).map_err(|_| SealError::Format)
}

/// How far a loaded ring can be trusted as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RingIntegrity {
    /// The manifest checks out; rows not listed in [`IntegrityReport::tampered`] are
    /// authentic.
    Authenticated,
    /// A ring with no keys and no manifest (never initialised).
    Empty,
    /// Keys but no manifest: written before keyrot authenticated rings, or the manifest
    /// was deleted. Nothing verifies until someone holding the master key runs the
    /// explicit, audited migration ([`crate::Rotator::authenticate_ring`]).
    Unauthenticated,
    /// The manifest is unreadable, fails its MAC, or names another generation: no row is
    /// trusted.
    ManifestInvalid(String),
    /// The manifest is authenticated under a master key this process does not have: a
    /// configuration error (configure that key; old keys open by id). Fails closed.
    UnknownMasterKey(String),
}

/// A key row that failed the integrity check. It never verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TamperedKey {
    /// The row's kid (as stored: it may itself be forged).
    pub kid: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The outcome of checking a loaded ring against its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    /// The ring as a whole.
    pub integrity: RingIntegrity,
    /// Rows that failed (every row, when the manifest itself is bad).
    pub tampered: Vec<TamperedKey>,
    /// Kids the manifest lists with no row in storage (deleted rows).
    pub missing: Vec<String>,
    /// The generation the manifest authenticates (`None` without a valid manifest). It,
    /// not the ring row's generation column, is what an instance never goes back from.
    pub manifest_generation: Option<u64>,
    /// The generation the ring row claims.
    pub ring_generation: u64,
    /// The id of the audit record the last commit wrote, as the manifest authenticates it.
    pub manifest_audit_id: Option<String>,
    /// The kids of `tampered`, for constant-time lookups.
    #[serde(skip)]
    tampered_kids: std::collections::HashSet<String>,
}

impl IntegrityReport {
    /// Whether the row with `kid` may be used.
    pub fn trusts(&self, kid: &str) -> bool {
        matches!(self.integrity, RingIntegrity::Authenticated | RingIntegrity::Empty)
            && !self.tampered_kids.contains(kid)
    }

    /// Records one more row that fails (e.g. found when its key is unsealed).
    pub fn add_tampered(&mut self, t: TamperedKey) {
        self.tampered_kids.insert(t.kid.clone());
        self.tampered.push(t);
    }

    fn with_index(mut self) -> Self {
        self.tampered_kids = self.tampered.iter().map(|t| t.kid.clone()).collect();
        self
    }

    /// Whether everything checks out (no tampered, missing or unauthenticated rows, and
    /// the ring row's generation is the authenticated one).
    pub fn is_intact(&self) -> bool {
        match self.integrity {
            RingIntegrity::Empty => true,
            RingIntegrity::Authenticated => {
                self.tampered.is_empty()
                    && self.missing.is_empty()
                    && self.manifest_generation == Some(self.ring_generation)
            }
            _ => false,
        }
    }

    /// The authenticated generation (0 for an empty ring), if there is one.
    pub fn authenticated_generation(&self) -> Option<u64> {
        match self.integrity {
            RingIntegrity::Empty => Some(0),
            _ => self.manifest_generation,
        }
    }

    /// One line for logs and errors (kids only, never key material).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match &self.integrity {
            RingIntegrity::Authenticated | RingIntegrity::Empty => {}
            RingIntegrity::Unauthenticated => parts
                .push("the ring has no manifest (run the integrity migration: keyrotctl authenticate-ring)".to_owned()),
            RingIntegrity::ManifestInvalid(why) => parts.push(format!("the ring manifest is invalid: {why}")),
            RingIntegrity::UnknownMasterKey(id) => parts.push(format!(
                "the ring manifest is authenticated under master key {id:?}, which is not configured"
            )),
        }
        if !self.tampered.is_empty() {
            let kids: Vec<String> = self
                .tampered
                .iter()
                .take(MAX_LISTED)
                .map(|t| format!("{} ({})", shown(&t.kid), t.reason))
                .collect();
            parts.push(format!(
                "tampered key rows: {}{}",
                kids.join(", "),
                more(self.tampered.len())
            ));
        }
        if !self.missing.is_empty() {
            let kids: Vec<String> = self.missing.iter().take(MAX_LISTED).map(|k| shown(k)).collect();
            parts.push(format!(
                "key rows missing: {}{}",
                kids.join(", "),
                more(self.missing.len())
            ));
        }
        if let Some(m) = self.manifest_generation
            && m != self.ring_generation
        {
            parts.push(format!(
                "the ring row says generation {} but the manifest authenticates generation {m}",
                self.ring_generation
            ));
        }
        if parts.is_empty() {
            "intact".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// How many kids a summary lists (the rest are counted).
const MAX_LISTED: usize = 10;

/// A stored (possibly forged) kid as it may appear in logs: control characters escaped,
/// at most 80 characters.
fn shown(kid: &str) -> String {
    let escaped: String = kid.chars().flat_map(char::escape_default).collect();
    if escaped.chars().count() > 80 {
        format!("{}…", escaped.chars().take(80).collect::<String>())
    } else {
        escaped
    }
}

fn more(total: usize) -> String {
    if total > MAX_LISTED {
        format!(" and {} more", total - MAX_LISTED)
    } else {
        String::new()
    }
}

/// Checks every row of a loaded ring against its manifest. Pure apart from the MAC check;
/// runs when a snapshot is built or a rotation loads the ring, never per token.
pub fn check_ring(ring: &Ring, sealer: &dyn Sealer) -> IntegrityReport {
    check_rows(ring, sealer).with_index()
}

fn check_rows(ring: &Ring, sealer: &dyn Sealer) -> IntegrityReport {
    let all_tampered = |why: &str| IntegrityReport {
        integrity: RingIntegrity::ManifestInvalid(why.to_owned()),
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
        tampered_kids: Default::default(),
    };
    let Some(text) = ring.manifest.as_deref() else {
        let integrity = if ring.keys.is_empty() && ring.generation == 0 {
            RingIntegrity::Empty
        } else {
            RingIntegrity::Unauthenticated
        };
        let tampered = ring
            .keys
            .iter()
            .map(|k| TamperedKey {
                kid: k.kid.clone(),
                reason: "not authenticated (the ring has no manifest)".into(),
            })
            .collect();
        return IntegrityReport {
            integrity,
            tampered,
            missing: Vec::new(),
            manifest_generation: None,
            ring_generation: ring.generation,
            manifest_audit_id: None,
            tampered_kids: Default::default(),
        };
    };
    let Ok(stored) = serde_json::from_str::<StoredManifest>(text) else {
        return all_tampered("the manifest is unreadable");
    };
    let Some(mac) = Mac::parse(&stored.mac).filter(|_| stored.v == 1) else {
        return all_tampered("the manifest has an unknown format");
    };
    let message = manifest_message(ring.name.as_str(), stored.generation, &stored.audit, &stored.keys);
    match sealer.check_authentication(&mac, &message) {
        Ok(()) => {}
        Err(SealError::UnknownMasterKey(id)) => {
            let mut r = all_tampered(&format!(
                "the manifest is authenticated under unknown master key {id:?}"
            ));
            r.integrity = RingIntegrity::UnknownMasterKey(id);
            return r;
        }
        Err(_) => return all_tampered("the manifest fails authentication"),
    }
    // A generation column that disagrees with the manifest is reported (the ring is not
    // intact) but rows that match the manifest stay trusted: the manifest's generation is
    // the authenticated one, and instances refuse to go back from it.
    let mut tampered = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for k in &ring.keys {
        if !seen.insert(k.kid.as_str()) {
            tampered.push(TamperedKey {
                kid: k.kid.clone(),
                reason: "the kid appears in more than one row".into(),
            });
            continue;
        }
        match stored.keys.get(&k.kid) {
            None => tampered.push(TamperedKey {
                kid: k.kid.clone(),
                reason: "the row is not in the ring manifest (inserted)".into(),
            }),
            Some(d) if *d != row_digest(ring.name.as_str(), k) => tampered.push(TamperedKey {
                kid: k.kid.clone(),
                reason: "the row differs from the ring manifest (altered or replayed)".into(),
            }),
            Some(_) => {}
        }
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
        tampered_kids: Default::default(),
    }
}

/// The message an audit record's chain MAC covers: its content, its position and its
/// predecessor's MAC.
fn audit_message(record: &AuditRecord, seq: u64, prev_mac: Option<&str>) -> Vec<u8> {
    let mut c = Canon::new(AUDIT_DOMAIN);
    c.str(&record.ring)
        .u64(seq)
        .opt_str(prev_mac)
        .str(&record.id)
        .time(record.at)
        .str(&record.actor)
        .str(record.trigger.as_str())
        .str(record.outcome.as_str())
        .flag(record.forced)
        .opt_str(record.reason.as_deref())
        .opt_str(record.old_kid.as_deref())
        .opt_str(record.old_fingerprint.as_deref())
        .opt_str(record.new_kid.as_deref())
        .opt_str(record.new_fingerprint.as_deref())
        .u64(record.generation)
        .opt_str(record.idempotency_key.as_deref())
        .opt_str(record.request_id.as_deref())
        .opt_str(record.detail.as_deref())
        .str(&record.instance);
    c.0
}

/// What the integrity migration records about the ledger it starts the chain over: how
/// many records had no MAC, and the SHA-256 of their canonical content (sorted by id).
pub fn legacy_ledger_note(records: &[&AuditRecord]) -> String {
    let mut sorted: Vec<&&AuditRecord> = records.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut h = Sha256::new();
    for r in sorted {
        let m = audit_message(r, 0, None);
        h.update((m.len() as u64).to_be_bytes());
        h.update(&m);
    }
    format!(
        "legacy ledger: {} record(s), sha256 {}",
        records.len(),
        b64::encode(&h.finalize())
    )
}

/// The [`AuditLinker`] keyrot uses: HMAC under the master key.
#[derive(Debug, Clone)]
pub struct SealerLinker {
    sealer: Arc<dyn Sealer>,
}

impl SealerLinker {
    /// Links with `sealer`'s primary master key.
    pub fn new(sealer: Arc<dyn Sealer>) -> Self {
        Self { sealer }
    }
}

impl AuditLinker for SealerLinker {
    fn link(&self, record: &AuditRecord, seq: u64, prev_mac: Option<&str>) -> Result<String, StorageError> {
        self.sealer
            .authenticate(&audit_message(record, seq, prev_mac))
            .map(|m| m.to_text())
            .map_err(|e| StorageError::Corrupt(format!("cannot authenticate the audit record: {e}")))
    }
}

/// Where an audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("audit chain broken at record {id} (seq {seq}): {reason}")]
pub struct ChainBreak {
    /// The first record that does not check out (its id as stored).
    pub id: String,
    /// Its sequence number as stored (0 when it has none).
    pub seq: u64,
    /// What does not check out, in words (a MAC mismatch, a gap in `seq`, …).
    pub reason: String,
}

/// A chain that checks out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Chained records checked.
    pub records: usize,
    /// Records written before the ring's ledger was chained (not authenticated).
    pub unchained: usize,
    /// The newest record's sequence number and MAC: record them elsewhere to detect a
    /// later truncation of the ledger's newest records.
    pub head: Option<(u64, String)>,
}

/// Checks a ring's whole audit chain (`records` in any order; all of them). Records
/// without a MAC are accepted only before the chain's first record (they predate the
/// integrity migration); anything else that does not check out is a break.
pub fn verify_chain(records: &[AuditRecord], sealer: &dyn Sealer) -> Result<ChainReport, ChainBreak> {
    if let Some(r) = records.iter().find(|r| r.mac.is_none() && r.seq != 0) {
        return Err(ChainBreak {
            id: r.id.clone(),
            seq: r.seq,
            reason: "the record has a chain position but no MAC (inserted)".into(),
        });
    }
    let mut chained: Vec<&AuditRecord> = records.iter().filter(|r| r.mac.is_some()).collect();
    chained.sort_by_key(|r| r.seq);
    let mut legacy: Vec<&AuditRecord> = records.iter().filter(|r| r.mac.is_none()).collect();
    legacy.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    let unchained = legacy.len();
    if let Some(first) = legacy.first()
        && !chained.is_empty()
    {
        // Records without a MAC are history from before the ledger was chained: the
        // integrity migration's (authenticated) record names how many there were and
        // their digest; without it, or if they differ, someone wrote them.
        let migration = chained
            .iter()
            .find(|r| r.trigger == TriggerKind::Authenticate && r.outcome == crate::storage::Outcome::Authenticated);
        let vouched = migration.is_some_and(|m| {
            m.detail
                .as_deref()
                .is_some_and(|d| d.contains(&legacy_ledger_note(&legacy)))
        });
        if !vouched {
            return Err(ChainBreak {
                id: first.id.clone(),
                seq: 0,
                reason: "records without a MAC differ from the ones the integrity migration vouched for (inserted, \
                         altered or deleted)"
                    .into(),
            });
        }
    }
    let mut prev: Option<&str> = None;
    for (i, r) in chained.iter().enumerate() {
        let expected = i as u64 + 1;
        if r.seq != expected {
            let reason = if r.seq < expected {
                "two records share this sequence number (inserted)".to_owned()
            } else {
                format!("records {expected}..{} are missing (deleted)", r.seq - 1)
            };
            return Err(ChainBreak {
                id: r.id.clone(),
                seq: r.seq,
                reason,
            });
        }
        let ok = r
            .mac
            .as_deref()
            .and_then(Mac::parse)
            .is_some_and(|m| sealer.check_authentication(&m, &audit_message(r, r.seq, prev)).is_ok());
        if !ok {
            return Err(ChainBreak {
                id: r.id.clone(),
                seq: r.seq,
                reason:
                    "the MAC does not match the record's content and its predecessor (altered, inserted or reordered)"
                        .into(),
            });
        }
        prev = r.mac.as_deref();
    }
    Ok(ChainReport {
        records: chained.len(),
        unchained,
        head: chained.last().map(|r| (r.seq, r.mac.clone().unwrap_or_default())),
    })
}
