//! Requests refused before the rotator decides anything (an endpoint's 400, 401, 403,
//! 413, or a refusal summary): recorded through the attempt pipeline like every other
//! answer, so [`Attempt::conclude`](super::attempt::Attempt::conclude) stays the one
//! place an audit record is built.

use super::Rotator;
use super::attempt::{Attempt, Request};
use super::context::RequestContext;
use super::error::RotateError;
use super::report::Answer;
use crate::keyring::Snapshot;
use crate::planner::TriggerKind;
use crate::storage::Outcome;

/// A rotation request refused by its caller (an HTTP endpoint, say) before the rotator
/// saw it, as [`Rotator::record_refused`] writes it to the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedRequest {
    /// Whether it asked for a forced rotation (its record's trigger is `force_rotate`).
    pub forced: bool,
    /// The reason the request gave, if any.
    pub reason: Option<String>,
    /// Why it was refused (`"401 invalid_token: …"`), or what a summary counts.
    pub detail: String,
}

impl RefusedRequest {
    /// A refusal described by `detail`.
    pub fn new(forced: bool, detail: impl Into<String>) -> Self {
        Self {
            forced,
            reason: None,
            detail: detail.into(),
        }
    }

    /// With the reason the request gave.
    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }
}

impl Rotator {
    /// Writes the record of a request its caller refused (`ctx` says who asked, with the
    /// request's idempotency key and request id), describing the ring as `seen` (the
    /// caller's snapshot: its generation and Active key). It takes no lock and changes
    /// nothing but the ledger.
    pub async fn record_refused(
        &self,
        ctx: RequestContext,
        refused: RefusedRequest,
        seen: &Snapshot,
    ) -> Result<(), RotateError> {
        let old_kid = seen.active_kid();
        let old_fingerprint = old_kid
            .and_then(|kid| seen.keys().iter().find(|k| k.kid == kid))
            .map(|k| k.fingerprint.clone());
        let answer = Answer {
            generation: seen.generation(),
            old_kid: old_kid.map(str::to_owned),
            old_fingerprint,
            forced: refused.forced,
            detail: Some(refused.detail),
            ..Answer::bare(Outcome::Refused)
        };
        let kind = if refused.forced {
            TriggerKind::ForceRotate
        } else {
            TriggerKind::Rotate
        };
        let request = Request::Recorded {
            kind,
            forced: refused.forced,
            reason: refused.reason,
            answer,
        };
        // Only requests the planner answers check their idempotency key, so `new` cannot
        // refuse this one; the key is recorded as given.
        Attempt::new(self, request, ctx)?.record_refused().await?;
        Ok(())
    }
}

impl Rotator {
    /// Writes the record of a master-key custody operation (`keyrotctl master-key create`,
    /// `import`, `rewrap`) to the ring's ledger: trigger `master_key`, outcome `custody`
    /// when it was carried out and `failed` when not, `detail` saying what (ids and KEKs,
    /// never key material or credentials). It takes no lock and changes nothing but the
    /// ledger.
    pub async fn record_custody(
        &self,
        ctx: RequestContext,
        succeeded: bool,
        detail: impl Into<String>,
    ) -> Result<(), RotateError> {
        let generation = self
            .inner
            .storage
            .generation(&self.inner.ring)
            .await
            .map_err(RotateError::Storage)?;
        let outcome = if succeeded { Outcome::Custody } else { Outcome::Failed };
        let answer = Answer {
            generation,
            detail: Some(detail.into()),
            ..Answer::bare(outcome)
        };
        let request = Request::Recorded {
            kind: TriggerKind::MasterKey,
            forced: false,
            reason: None,
            answer,
        };
        Attempt::new(self, request, ctx)?.record_refused().await?;
        Ok(())
    }
}
