//! The explicit export of a symmetric ring's secrets (`keyrotctl export-secret`): the one
//! way a MAC key leaves the process, written to the ledger before anything is handed out.

use super::Rotator;
use super::attempt::{Attempt, Request};
use super::context::RequestContext;
use super::error::RotateError;
use super::report::Answer;
use crate::alg::{Algorithm, KeyKind};
use crate::keyring::retiring_window_end;
use crate::planner::TriggerKind;
use crate::ring::KeyState;
use crate::seal::SealContext;
use crate::storage::Outcome;
use crate::symmetric::{ExportedSecret, SecretFormat, SymmetricError, standard_webhooks_secret};

impl Rotator {
    /// The secrets of the ring's keys inside their window (Pending, Active, Retiring before
    /// its window ends), newest first, in `format`. Refused for a ring that is not a MAC
    /// ring. The export is recorded in the ledger (trigger `export_secret`, outcome
    /// `exported`, the kids in its detail) before it is returned: when the record cannot
    /// be written, nothing is exported.
    pub async fn export_secrets(
        &self,
        ctx: RequestContext,
        format: SecretFormat,
    ) -> Result<Vec<ExportedSecret>, RotateError> {
        let (ring, _) = self.load_trusted().await?;
        let wanted = match format {
            SecretFormat::StandardWebhooks => KeyKind::Mac,
        };
        let holds = ring
            .keys
            .first()
            .map_or(self.inner.policy.algorithm().kind(), |k| k.alg.kind());
        if holds != wanted || ring.keys.iter().any(|k| k.alg.kind() != wanted) {
            return Err(RotateError::Kind(SymmetricError::WrongKind {
                ring: ring.name.clone(),
                holds,
                wanted,
            }));
        }
        let now = self.inner.clock.now();
        let mut keys: Vec<_> = ring
            .published()
            .filter(|k| k.state != KeyState::Retiring || now < retiring_window_end(k))
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(sealed) = k.sealed.as_ref() else { continue };
            let secret = self.inner.sealer.open(
                sealed,
                &SealContext {
                    ring: ring.name.as_str(),
                    kid: &k.kid,
                    alg: Algorithm::HmacSha256,
                },
            )?;
            out.push(ExportedSecret {
                kid: k.kid.clone(),
                state: k.state,
                created_at: k.created_at,
                secret: standard_webhooks_secret(&secret),
            });
        }
        let kids: Vec<&str> = out.iter().map(|s| s.kid.as_str()).collect();
        let answer = Answer {
            generation: ring.generation,
            detail: Some(format!(
                "export-secret --format {}: {} secret(s), newest first: {}",
                format.as_str(),
                kids.len(),
                kids.join(" ")
            )),
            ..Answer::bare(Outcome::Exported)
        };
        let request = Request::Recorded {
            kind: TriggerKind::ExportSecret,
            forced: false,
            reason: None,
            answer,
        };
        Attempt::new(self, request, ctx)?.record_refused().await?;
        Ok(out)
    }
}
