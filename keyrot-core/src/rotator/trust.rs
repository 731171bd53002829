//! Whether the stored ring can be built on: its integrity check, and no rollback below
//! what this instance served or what the ledger proves was committed.

use super::Rotator;
use super::error::RotateError;
use crate::integrity::{ChainBreak, ChainReport, IntegrityReport};
use crate::ring::Ring;
use crate::storage::{AuditQuery, AuditRecord, StorageError};
use std::sync::atomic::Ordering;
use tracing::Instrument as _;

impl Rotator {
    /// Checks the ring's whole audit chain (see [`crate::integrity::verify_chain`]): `Ok`
    /// when intact, the first broken record otherwise.
    pub async fn verify_audit_chain(&self) -> Result<Result<ChainReport, ChainBreak>, StorageError> {
        let ring = self.load().await?;
        let records = self.ledger().await?;
        let report = crate::integrity::verify_chain(&records, &*self.inner.sealer);
        // The authenticated manifest names the record of the last commit: deleting the
        // newest records (a truncation of the ledger) cannot take it away unnoticed.
        let integrity = crate::integrity::check_ring(&ring, &*self.inner.sealer);
        if let (Ok(_), Some(id)) = (&report, &integrity.manifest_audit_id)
            && !records.iter().any(|r| &r.id == id && r.mac.is_some())
        {
            return Ok(Err(ChainBreak {
                id: id.clone(),
                seq: 0,
                reason: format!(
                    "the record of the last commit (generation {}) is missing: the newest records were deleted",
                    integrity.manifest_generation.unwrap_or(0)
                ),
            }));
        }
        Ok(report)
    }

    /// Loads the ring as stored, in the `load` phase.
    pub(super) async fn load(&self) -> Result<Ring, StorageError> {
        let span = tracing::info_span!("keyrot.phase", phase = "load");
        self.inner.storage.load(&self.inner.ring).instrument(span).await
    }

    /// The ring's whole audit ledger, newest first.
    pub(super) async fn ledger(&self) -> Result<Vec<AuditRecord>, StorageError> {
        self.inner
            .storage
            .audit_log(&self.inner.ring, AuditQuery { limit: usize::MAX })
            .await
    }

    /// Loads the ring fresh and refuses to build on it if it fails its integrity check
    /// or is older than what this instance served; with whether its authenticated
    /// manifest says it is retired.
    pub(super) async fn load_trusted(&self) -> Result<(Ring, bool), RotateError> {
        let ring = self.load().await?;
        let report = crate::integrity::check_ring(&ring, &*self.inner.sealer);
        self.check_not_rolled_back(&report).await?;
        if !report.is_intact() {
            tracing::error!(ring = %ring.name, integrity = %report.summary(), "stored ring fails its integrity check");
            return Err(RotateError::Integrity(report.summary()));
        }
        Ok((ring, report.retired))
    }

    /// The highest authenticated generation this rotator (or its key ring) has seen.
    fn served(&self) -> u64 {
        let own = self.inner.served.load(Ordering::Acquire);
        self.inner
            .keyring
            .as_ref()
            .map_or(own, |kr| kr.highest_generation().max(own))
    }

    /// Refuses a ring whose authenticated state is older than what this process served,
    /// or than what the ledger proves was committed: the newest chained record of a
    /// commit must be the one the manifest names. A whole-ring rollback (old rows and
    /// their old manifest restored together) is caught here even by a process that never
    /// served the newer state, unless the ledger was truncated as well.
    pub(super) async fn check_not_rolled_back(&self, report: &IntegrityReport) -> Result<(), RotateError> {
        let found = report.authenticated_generation().unwrap_or(0);
        let served = self.served();
        if found < served {
            return Err(RotateError::Rollback { found, served });
        }
        if let (Some(generation), Some(id)) = (report.manifest_generation, &report.manifest_audit_id) {
            let newest = self.newest_commit_record().await?;
            self.check_ledger_names(generation, id, newest)?;
        }
        self.inner.served.fetch_max(found, Ordering::AcqRel);
        Ok(())
    }

    /// The ledger's newest commit record must be the one the manifest names (record
    /// `id`, `generation`).
    fn check_ledger_names(&self, generation: u64, id: &str, newest: Option<AuditRecord>) -> Result<(), RotateError> {
        match newest {
            Some(r) if r.id == id && r.generation == generation => Ok(()),
            Some(r) if r.generation > generation => {
                tracing::error!(
                    ring = %self.inner.ring,
                    manifest = generation,
                    ledger = r.generation,
                    "the ledger records a newer commit than the stored ring: a rollback"
                );
                Err(RotateError::Rollback {
                    found: generation,
                    served: r.generation,
                })
            }
            Some(r) => Err(RotateError::Integrity(format!(
                "the ledger's newest commit (record {}, generation {}) is not the one the manifest names (record \
                 {id}, generation {generation})",
                r.id, r.generation
            ))),
            None => Err(RotateError::Integrity(format!(
                "the ledger holds no record of the commit the manifest names (record {id}, generation {generation})"
            ))),
        }
    }

    /// The newest chained audit record of a change to the ring.
    async fn newest_commit_record(&self) -> Result<Option<AuditRecord>, StorageError> {
        let mut limit = 64;
        loop {
            let records = self
                .inner
                .storage
                .audit_log(&self.inner.ring, AuditQuery { limit })
                .await?;
            if let Some(r) = records.iter().find(|r| r.mac.is_some() && r.outcome.changed_ring()) {
                return Ok(Some(r.clone()));
            }
            if records.len() < limit || limit >= 1 << 22 {
                return Ok(None);
            }
            limit *= 8;
        }
    }
}
