//! Why an attempt failed (as opposed to being refused).

use super::idempotency::MAX_IDEMPOTENCY_KEY_LEN;
use crate::key::KeyError;
use crate::planner::ApplyError;
use crate::seal::SealError;
use crate::storage::StorageError;
use std::error::Error as _;

/// Why an attempt failed (as opposed to being refused). Carries no key material.
///
/// Each variant's message says what failed and what to do; a wrapped error is not part
/// of the message but its [`source`](std::error::Error::source), so walking the chain
/// prints every cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// Storage failed; nothing was changed. Rotation fails closed.
    #[error("rotation failed closed: the key store failed and nothing was changed; retry once it is reachable")]
    Storage(#[from] StorageError),
    /// Sealing or unsealing failed.
    #[error(
        "sealing, opening or authenticating under the master key failed, so nothing was changed: check the configured \
         master keys"
    )]
    Seal(#[from] SealError),
    /// Key generation or import failed.
    #[error("the new key could not be generated or imported, so nothing was changed")]
    Key(#[from] KeyError),
    /// The HSM or KMS holding the ring's signing keys failed (unreachable, refused, or
    /// unable to make a key of the ring's algorithm). Rotation fails closed.
    #[error("the HSM or KMS holding the ring's signing keys failed, so nothing was changed")]
    Custody(#[source] crate::custody::CustodyError),
    /// The request does not fit the kind of key the ring holds: a ring of one kind under
    /// a policy of another, a key import into a symmetric ring, a signing ring's secrets
    /// asked for. Nothing was changed.
    #[error("the request does not fit the kind of key the ring holds, so nothing was changed")]
    Kind(#[source] crate::symmetric::SymmetricError),
    /// Internal inconsistency between plan and ring.
    #[error("the plan does not fit the stored ring, so nothing was changed: retry the request")]
    Apply(#[from] ApplyError),
    /// The idempotency key was used before for a different request.
    #[error("idempotency key was already used for a different request: use a new key for a new request")]
    IdempotencyKeyReused,
    /// The idempotency key is empty, too long, or not printable ASCII.
    #[error("idempotency key must be 1-{max} printable ASCII characters", max = MAX_IDEMPOTENCY_KEY_LEN)]
    InvalidIdempotencyKey,
    /// The stored ring fails its integrity check (tampered, missing or unauthenticated
    /// rows): nothing is written on top of it. Fails closed.
    #[error(
        "rotation refused: the stored ring fails its integrity check: {0}; nothing was written (inspect it with \
         keyrotctl status, then repair it or restore a backup)"
    )]
    Integrity(String),
    /// Storage shows an older generation than this instance already served (a rollback
    /// of the database): nothing is written. Fails closed.
    #[error(
        "rotation refused: storage is at generation {found}, older than generation {served} this instance already \
         served; nothing was written (restore the newest backup)"
    )]
    Rollback {
        /// What storage shows.
        found: u64,
        /// What this instance served.
        served: u64,
    },
}

impl RotateError {
    /// The message and its direct cause, for the audit ledger and logs (deeper causes,
    /// a backend's own errors, stay out of the ledger).
    pub(crate) fn described(&self) -> String {
        match self.source() {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }

    /// Whether the error persists until someone fixes the stored ring (a tampered or
    /// rolled-back ring fails every attempt).
    pub(crate) fn is_persistent(&self) -> bool {
        matches!(self, RotateError::Integrity(_) | RotateError::Rollback { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    fn chain(e: &dyn Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(cause) = next {
            out.push(cause.to_string());
            next = cause.source();
        }
        out
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused by 10.0.0.7:5432")]
    struct Backend;

    fn every_variant() -> Vec<RotateError> {
        vec![
            RotateError::Storage(StorageError::unavailable("database unreachable", Backend)),
            RotateError::Storage(StorageError::Corrupt("stored idempotent response".into())),
            RotateError::Seal(SealError::UnknownMasterKey("mk1".into())),
            RotateError::Seal(SealError::Authentication),
            RotateError::Key(KeyError::Rng),
            RotateError::Key(KeyError::Invalid(crate::key::InvalidKey::Rule("bad modulus"))),
            RotateError::Apply(ApplyError::UnknownKid { kid: "k1".into() }),
            RotateError::Custody(crate::custody::CustodyError::Config("no EdDSA on this token".into())),
            RotateError::IdempotencyKeyReused,
            RotateError::InvalidIdempotencyKey,
            RotateError::Integrity("tampered key rows: k1 (altered)".into()),
            RotateError::Rollback { found: 2, served: 3 },
        ]
    }

    #[test]
    fn no_message_repeats_along_a_source_chain() {
        for e in every_variant() {
            let messages = chain(&e);
            for (i, m) in messages.iter().enumerate() {
                for later in &messages[i + 1..] {
                    assert!(
                        !m.contains(later.as_str()),
                        "{e:?}: {m:?} repeats its cause {later:?} (chain {messages:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn wrapping_variants_keep_their_typed_source() {
        for e in every_variant() {
            let wraps = matches!(
                e,
                RotateError::Storage(_)
                    | RotateError::Seal(_)
                    | RotateError::Key(_)
                    | RotateError::Apply(_)
                    | RotateError::Custody(_)
            );
            assert_eq!(e.source().is_some(), wraps, "{e:?}");
        }
        let e = RotateError::Storage(StorageError::unavailable("database unreachable", Backend));
        assert!(e.source().is_some_and(|s| s.downcast_ref::<StorageError>().is_some()));
        assert_eq!(
            e.described(),
            "rotation failed closed: the key store failed and nothing was changed; retry once it is reachable: \
             storage unavailable: database unreachable"
        );
        assert_eq!(
            chain(&e).len(),
            3,
            "the backend's error is the last link: {:?}",
            chain(&e)
        );
    }
}
