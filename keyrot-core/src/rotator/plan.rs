//! The deciding phase of a request the planner answers: plan on the trusted ring, then
//! generate and seal the new key the plan asks for (outside any transaction; RSA on a
//! blocking thread).

use super::Material;
use super::attempt::{Attempt, Change, Step};
use super::error::RotateError;
use super::report::{Answer, NewKid};
use crate::alg::{Algorithm, KeyKind};
use crate::custody::{CustodyError, RemoteKey};
use crate::key::PrivateKey;
use crate::planner::{self, NewKey, Plan, PlanKind, Trigger};
use crate::ring::Ring;
use crate::seal::SealContext;
use crate::storage::Outcome;
use crate::symmetric::SymmetricError;
use tracing::Instrument as _;

impl Attempt<'_> {
    /// Plans `trigger` on the trusted ring: the planner's refusal (rate limits, nothing
    /// due, …) as an answer, or the change with its new key.
    pub(super) async fn plan(&self, trigger: &Trigger, material: Option<super::Material>) -> Result<Step, RotateError> {
        let inner = &self.rotator.inner;
        let (ring, retired) = self.rotator.load_trusted().await?;
        if retired {
            // Nothing is ever due on a retired ring (a tick writes nothing); every request
            // for a key is refused.
            let answer = match trigger {
                Trigger::Tick => Answer {
                    detail: Some("the ring is retired".to_owned()),
                    ..Answer::on(Outcome::NothingDue, &ring)
                },
                _ => Answer::refusal(&ring, planner::Refusal::RingRetired, false),
            };
            return Ok(Step::Answer(answer));
        }
        let kind = inner.policy.algorithm().kind();
        if let Some(other) = ring.keys.iter().map(|k| k.alg.kind()).find(|k| *k != kind) {
            return Err(RotateError::Kind(SymmetricError::WrongKind {
                ring: ring.name.clone(),
                holds: other,
                wanted: kind,
            }));
        }
        let planned = {
            let _s = tracing::info_span!("keyrot.phase", phase = "plan").entered();
            planner::plan(&ring, &inner.policy, self.now, trigger)
        };
        let plan = match planned {
            Ok(p) => p,
            Err(refusal) => {
                let forced = matches!(trigger, Trigger::ForceRotate { .. });
                return Ok(Step::Answer(Answer::refusal(&ring, refusal, forced)));
            }
        };
        let new_key = match plan.new_key() {
            Some(_) => Some(self.new_key(&ring, material, import_kid(trigger)).await?),
            None => None,
        };
        let new_kid = new_key.as_ref().map(|k| k.kid.clone());
        let (next, changed) = planner::apply(&ring, &plan, new_key, self.now)?;
        let answer = Answer {
            forced: plan.new_key().is_some_and(|(_, _, forced)| forced),
            new: new_kid
                .as_deref()
                .or_else(|| activated_kid(&plan))
                .map(|kid| NewKid::in_ring(&next, kid)),
            detail: detail_of(trigger),
            ..Answer::on(outcome_of(&plan), &ring)
        };
        let keys = next.keys.iter().filter(|k| changed.contains(&k.kid)).cloned().collect();
        Ok(Step::Commit(Change {
            before: ring,
            next,
            keys,
            answer,
            retired: false,
        }))
    }

    /// The plan's new key: `material` (an import) or a freshly generated one, sealed.
    async fn new_key(
        &self,
        ring: &Ring,
        material: Option<super::Material>,
        import_kid: Option<&str>,
    ) -> Result<NewKey, RotateError> {
        let inner = &self.rotator.inner;
        let alg = inner.policy.algorithm();
        if !alg.is_signing() {
            return self.new_symmetric_key(ring, alg, material.is_some());
        }
        let material = match (self.signing_custody(), material) {
            (Some(custody), Some(Material::Local(_))) => {
                return Err(RotateError::Custody(CustodyError::Config(format!(
                    "the ring's keys are held by {}: a private key cannot be imported into it (import by reference)",
                    custody.location()
                ))));
            }
            (Some(_), Some(Material::Remote(key))) => {
                if ring
                    .keys
                    .iter()
                    .any(|k| k.remote.as_deref() == Some(key.reference.as_str()))
                {
                    return Err(RotateError::Custody(CustodyError::Config(format!(
                        "{} is already a key of the ring",
                        key.reference
                    ))));
                }
                return Ok(remote_new_key(key, import_kid));
            }
            (Some(custody), None) => return Ok(remote_new_key(self.create_remote(custody, ring).await?, None)),
            (None, Some(Material::Remote(key))) => {
                return Err(RotateError::Custody(CustodyError::Config(format!(
                    "{} is held by an HSM or KMS, and this rotator has none",
                    key.reference
                ))));
            }
            (None, Some(Material::Local(key))) => Some(key),
            (None, None) => None,
        };
        let key = match material {
            Some(k) => k,
            None => {
                let span = tracing::info_span!("keyrot.phase", phase = "generate");
                PrivateKey::generate_async(inner.policy.algorithm(), inner.policy.rsa_bits())
                    .instrument(span)
                    .await?
            }
        };
        let public = key.public_key();
        let fingerprint = public.thumbprint();
        // An imported key keeps the kid it arrived with (the planner checked it is new).
        let kid = import_kid.map_or_else(|| fingerprint.clone(), str::to_owned);
        let _s = tracing::info_span!("keyrot.phase", phase = "seal").entered();
        let plain = key.to_secret_bytes()?;
        let sealed = inner.sealer.seal(
            &plain,
            &SealContext {
                ring: ring.name.as_str(),
                kid: &kid,
                alg: key.algorithm(),
            },
        )?;
        Ok(NewKey {
            public_jwk: public.to_jwk(&kid).to_string(),
            kid,
            alg: key.algorithm(),
            fingerprint,
            sealed: Some(sealed),
            remote: None,
        })
    }
}

impl Attempt<'_> {
    /// A symmetric ring's new key: 32 random bytes under a random 4-byte id, sealed like
    /// a private key. Symmetric keys are made here only: no import, no HSM or KMS.
    fn new_symmetric_key(&self, ring: &Ring, alg: Algorithm, import: bool) -> Result<NewKey, RotateError> {
        if import || self.signing_custody().is_some() {
            return Err(RotateError::Kind(SymmetricError::WrongKind {
                ring: ring.name.clone(),
                holds: alg.kind(),
                wanted: KeyKind::Signing,
            }));
        }
        let (kid, secret, descriptor) = {
            let _s = tracing::info_span!("keyrot.phase", phase = "generate").entered();
            crate::symmetric::new_key(ring, alg).map_err(|_| RotateError::Key(crate::key::KeyError::Rng))?
        };
        let _s = tracing::info_span!("keyrot.phase", phase = "seal").entered();
        let sealed = self.rotator.inner.sealer.seal(
            &secret,
            &SealContext {
                ring: ring.name.as_str(),
                kid: &kid,
                alg,
            },
        )?;
        Ok(NewKey {
            public_jwk: descriptor,
            fingerprint: kid.clone(),
            kid,
            alg,
            sealed: Some(sealed),
            remote: None,
        })
    }
}

/// The new key a backend holds: its reference and public key, no sealed material. An
/// import keeps the kid it was given; a created key's kid is its thumbprint.
fn remote_new_key(key: RemoteKey, import_kid: Option<&str>) -> NewKey {
    let fingerprint = key.public.thumbprint();
    let kid = import_kid.map_or_else(|| fingerprint.clone(), str::to_owned);
    NewKey {
        public_jwk: key.public.to_jwk(&kid).to_string(),
        kid,
        alg: key.public.algorithm(),
        fingerprint,
        sealed: None,
        remote: Some(key.reference),
    }
}

fn import_kid(trigger: &Trigger) -> Option<&str> {
    match trigger {
        Trigger::Import { kid, .. } => Some(kid.as_str()),
        _ => None,
    }
}

/// The detail a committed request's report and record carry.
fn detail_of(trigger: &Trigger) -> Option<String> {
    match trigger {
        Trigger::Revoke { kid, reason } => Some(format!("revoked {kid}: {reason}")),
        Trigger::ForceRotate {
            reason,
            revoke_old: true,
        } => Some(format!("forced; old key revoked: {reason}")),
        Trigger::ForceRotate { reason, .. } => Some(format!("forced: {reason}")),
        _ => None,
    }
}

fn activated_kid(plan: &Plan) -> Option<&str> {
    plan.actions.iter().find_map(|a| match a {
        planner::Action::Activate { kid } => Some(kid.as_str()),
        _ => None,
    })
}

fn outcome_of(plan: &Plan) -> Outcome {
    match plan.kind {
        PlanKind::Bootstrap => Outcome::Bootstrapped,
        PlanKind::Rotated => Outcome::Rotated,
        PlanKind::Scheduled => Outcome::Scheduled,
        PlanKind::Revoked => Outcome::Revoked,
        PlanKind::Imported => Outcome::Imported,
        PlanKind::Maintenance => Outcome::Maintained,
    }
}
