//! The audit ledger as a MAC chain under the master key.

use super::canon::Canon;
use crate::b64;
use crate::planner::TriggerKind;
use crate::seal::{Mac, Sealer};
use crate::storage::{AuditLinker, AuditRecord, StorageError};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

const AUDIT_DOMAIN: &[u8] = b"keyrot/audit/v1";

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
