//! Keys an HSM or KMS holds ([`SigningCustody`]): creating the new key there (after
//! destroying the ring's orphans), destroying it when its commit is lost, and driving
//! revocations and purges to the backend. What each step did is a note on the attempt's
//! answer, so the ledger records it with the backend reference.

use super::attempt::Attempt;
use super::error::RotateError;
use crate::custody::{CustodyError, RemoteKey, SigningCustody, key_name_prefix};
use crate::ids::random_hex;
use crate::ring::{KeyRecord, Ring};
use std::sync::Arc;
use std::time::Instant;

/// Runs `op` on the backend, counted and timed by backend and operation.
async fn timed<T>(
    custody: &Arc<dyn SigningCustody>,
    operation: &'static str,
    op: impl std::future::Future<Output = Result<T, CustodyError>>,
) -> Result<T, CustodyError> {
    let started = Instant::now();
    let result = op.await;
    crate::metrics::custody_operation(custody.backend(), operation, result.is_ok(), started.elapsed());
    result
}

impl Attempt<'_> {
    /// The backend that holds the ring's keys, if one does.
    pub(super) fn signing_custody(&self) -> Option<&Arc<dyn SigningCustody>> {
        self.rotator.inner.signing.as_ref()
    }

    /// Creates the plan's new key in the backend. First destroys every key the backend
    /// holds under the ring's name that no row references: the lock is held, so no other
    /// attempt is between creating a key and committing it.
    pub(super) async fn create_remote(
        &self,
        custody: &Arc<dyn SigningCustody>,
        ring: &Ring,
    ) -> Result<RemoteKey, RotateError> {
        let inner = &self.rotator.inner;
        let (alg, bits) = (inner.policy.algorithm(), inner.policy.rsa_bits());
        custody.supports(alg, bits).map_err(RotateError::Custody)?;
        self.destroy_orphans(custody, ring).await?;
        let name = format!("{}{}", key_name_prefix(&ring.name), random_hex(8));
        let created = timed(custody, "create", custody.create(&name, alg, bits))
            .await
            .map_err(RotateError::Custody)?;
        tracing::info!(ring = %ring.name, backend = custody.backend(), reference = %created.reference, "created a signing key in the HSM/KMS");
        self.note(format!("created {} in {}", created.reference, custody.backend()));
        Ok(created)
    }

    async fn destroy_orphans(&self, custody: &Arc<dyn SigningCustody>, ring: &Ring) -> Result<(), RotateError> {
        let held = timed(custody, "list", custody.list(&key_name_prefix(&ring.name)))
            .await
            .map_err(RotateError::Custody)?;
        for reference in held {
            if ring
                .keys
                .iter()
                .any(|k| k.remote.as_deref() == Some(reference.as_str()))
            {
                continue;
            }
            timed(custody, "destroy", custody.destroy(&reference))
                .await
                .map_err(RotateError::Custody)?;
            tracing::warn!(ring = %ring.name, reference = %reference, "destroyed a signing key no row references (a lost commit or a crash before one)");
            self.note(format!("destroyed orphaned {reference}"));
        }
        Ok(())
    }

    /// The commit that would have referenced `created` keys was lost: destroy them.
    pub(super) async fn discard_created(&self, keys: &[KeyRecord], before: &Ring) {
        let Some(custody) = self.signing_custody() else { return };
        for k in keys {
            let Some(reference) = &k.remote else { continue };
            if before.keys.iter().any(|b| b.kid == k.kid) {
                continue;
            }
            match timed(custody, "destroy", custody.destroy(reference)).await {
                Ok(()) => self.note(format!("destroyed {reference}, created for the lost commit")),
                Err(e) => {
                    tracing::warn!(reference = %reference, error = %e, "could not destroy the key of a lost commit; the next rotation does");
                    self.note(format!(
                        "{reference} of the lost commit is left for the next rotation to destroy: {e}"
                    ));
                }
            }
        }
    }

    /// Before a commit that revokes or purges backend keys: destroys each newly purged
    /// one (an Expired key, which signs and verifies nothing whatever the commit's fate; a
    /// failure fails the attempt, so that the purge is retried), and returns the newly
    /// revoked ones, which are disabled only once the commit stands
    /// ([`Attempt::disable_revoked`]): a commit that lost the race must not disable a key
    /// the winner's ring still signs with.
    pub(super) async fn drive_backend(&self, before: &Ring, keys: &[KeyRecord]) -> Result<Vec<String>, RotateError> {
        let Some(custody) = self.signing_custody() else {
            return Ok(Vec::new());
        };
        let mut revoked = Vec::new();
        for k in keys {
            let (Some(reference), Some(old)) = (&k.remote, before.keys.iter().find(|b| b.kid == k.kid)) else {
                continue;
            };
            if k.revoked_at.is_some() && old.revoked_at.is_none() {
                self.note(format!(
                    "{reference} is disabled in {} once this commit stands",
                    custody.backend()
                ));
                revoked.push(reference.clone());
            }
            if k.purged_at.is_some() && old.purged_at.is_none() {
                timed(custody, "destroy", custody.destroy(reference))
                    .await
                    .map_err(RotateError::Custody)?;
                self.note(format!("destroyed {reference}"));
            }
        }
        Ok(revoked)
    }

    /// After the commit that revoked them: disables the keys in the backend, at once.
    /// Best effort: the revocation stands in keyrot either way (no verifier accepts the
    /// key), a key the backend cannot disable is destroyed at purge, and each outcome is
    /// logged and counted (`keyrot_custody_operations_total{operation="disable"}`).
    pub(super) async fn disable_revoked(&self, revoked: &[String]) {
        let Some(custody) = self.signing_custody() else {
            return;
        };
        for reference in revoked {
            match timed(custody, "disable", custody.disable(reference)).await {
                Ok(true) => tracing::info!(reference = %reference, "disabled the revoked key in the HSM/KMS"),
                Ok(false) => {
                    tracing::info!(reference = %reference, "the HSM/KMS cannot disable a key: the revoked key is destroyed at purge")
                }
                Err(e) => {
                    tracing::warn!(reference = %reference, error = %e, "could not disable the revoked key in the HSM/KMS: it is destroyed at purge")
                }
            }
        }
    }
}
