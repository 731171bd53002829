//! Applying a plan to a ring: the next ring state, and which rows changed.

use super::*;

/// A freshly generated or imported key, sealed, ready to enter the ring.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The kid it enters the ring with (generated, or the imported key's).
    pub kid: String,
    /// The JWS algorithm it signs with.
    pub alg: Algorithm,
    /// RFC 7638 thumbprint.
    pub fingerprint: String,
    /// Public JWK (JSON text).
    pub public_jwk: String,
    /// The sealed private key; `None` for a key an HSM or KMS holds.
    pub sealed: Option<SealedKey>,
    /// The backend's reference to a key an HSM or KMS holds.
    pub remote: Option<String>,
}

/// Why a plan could not be applied to the ring it was made for: a bug or mismatched
/// inputs (a plan applied to another ring state), never a refusal. Nothing is committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The plan adds a key, but no new key was supplied.
    #[error("plan cannot be applied: it adds a key and none was supplied")]
    NewKeyMissing,
    /// The new key's kid is already in the ring.
    #[error("plan cannot be applied: kid {kid} is already in the ring")]
    DuplicateKid {
        /// The new key's kid.
        kid: String,
    },
    /// The plan names a key the ring does not have.
    #[error("plan cannot be applied: no key {kid} in the ring")]
    UnknownKid {
        /// The kid the plan names.
        kid: String,
    },
    /// The key is not in a state the action applies to.
    #[error("plan cannot be applied: key {kid} is {}", state.as_str())]
    WrongState {
        /// The key's kid.
        kid: String,
        /// Its state in the ring the plan was applied to.
        state: KeyState,
    },
}

/// Applies a plan to a ring, giving the next ring state (generation + 1) and the kids
/// whose records changed.
pub(crate) fn apply(
    ring: &Ring,
    plan: &Plan,
    new_key: Option<NewKey>,
    now: DateTime<Utc>,
) -> Result<(Ring, Vec<String>), ApplyError> {
    let mut next = ring.clone();
    next.generation += 1;
    let mut changed = Vec::new();
    let mut new_key = new_key;
    for action in &plan.actions {
        let kid = match action {
            Action::NewKey { target, origin, forced } => {
                let nk = new_key.take().ok_or(ApplyError::NewKeyMissing)?;
                if next.key(&nk.kid).is_some() {
                    return Err(ApplyError::DuplicateKid { kid: nk.kid });
                }
                let record = new_record(nk, *target, *origin, *forced, now);
                let kid = record.kid.clone();
                next.keys.push(record);
                kid
            }
            other => change_existing(&mut next, other, now)?,
        };
        changed.push(kid);
    }
    changed.dedup();
    Ok((next, changed))
}

/// The record of a key entering the ring at `now`.
fn new_record(nk: NewKey, target: Target, origin: KeyOrigin, forced: bool, now: DateTime<Utc>) -> KeyRecord {
    let (state, activate_at, activated_at) = match target {
        Target::Pending { activate_at } => (KeyState::Pending, Some(activate_at), None),
        Target::Active => (KeyState::Active, Some(now), Some(now)),
    };
    KeyRecord {
        kid: nk.kid,
        alg: nk.alg,
        state,
        origin,
        forced,
        fingerprint: nk.fingerprint,
        public_jwk: nk.public_jwk,
        sealed: nk.sealed,
        remote: nk.remote,
        created_at: now,
        activate_at,
        activated_at,
        retired_at: None,
        expires_at: None,
        expired_at: None,
        revoked_at: None,
        revoke_reason: None,
        purged_at: None,
    }
}

/// Applies an action on a key already in the ring; returns its kid.
fn change_existing(next: &mut Ring, action: &Action, now: DateTime<Utc>) -> Result<String, ApplyError> {
    let (kid, allowed): (&str, &[KeyState]) = match action {
        Action::NewKey { .. } => return Err(ApplyError::NewKeyMissing),
        Action::Activate { kid } => (kid, &[KeyState::Pending]),
        Action::Retire { kid, .. } => (kid, &[KeyState::Active]),
        Action::Expire { kid } => (kid, &[KeyState::Retiring]),
        Action::Revoke { kid, .. } => (kid, &[KeyState::Pending, KeyState::Active, KeyState::Retiring]),
        Action::Purge { kid } => (kid, &[KeyState::Expired]),
    };
    let k = next
        .keys
        .iter_mut()
        .find(|k| k.kid == kid)
        .ok_or_else(|| ApplyError::UnknownKid { kid: kid.to_owned() })?;
    if !allowed.contains(&k.state) {
        return Err(ApplyError::WrongState {
            kid: k.kid.clone(),
            state: k.state,
        });
    }
    match action {
        Action::NewKey { .. } => {}
        Action::Activate { .. } => {
            k.state = KeyState::Active;
            k.activated_at = Some(now);
        }
        Action::Retire { expires_at, .. } => {
            k.state = KeyState::Retiring;
            k.retired_at = Some(now);
            k.expires_at = Some(*expires_at);
        }
        Action::Expire { .. } => {
            k.state = KeyState::Expired;
            k.expired_at = Some(now);
        }
        Action::Revoke { reason, .. } => {
            if k.state == KeyState::Active {
                k.retired_at = Some(now);
            }
            k.state = KeyState::Expired;
            k.expired_at = Some(now);
            k.revoked_at = Some(now);
            k.revoke_reason = Some(reason.clone());
        }
        Action::Purge { .. } => {
            k.sealed = None;
            k.purged_at = Some(now);
        }
    }
    Ok(kid.to_owned())
}
