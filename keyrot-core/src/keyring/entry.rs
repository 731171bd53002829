//! One verifying key of a snapshot with its validity window: what the snapshot's
//! verifiers hold and what a cached verification is anchored to (weakly).

use super::RefreshError;
use crate::key::VerifyingKey;
use crate::ring::{KeyRecord, KeyState};
use crate::token::TokenError;
use chrono::{DateTime, Utc};

/// A verifying key and the end of its validity window.
pub(crate) struct VerifierEntry {
    pub(crate) key: VerifyingKey,
    /// A Retiring key verifies only before its `expires_at`, whatever ticks ran and
    /// however old the snapshot is.
    pub(crate) not_after: Option<DateTime<Utc>>,
}

impl VerifierEntry {
    /// The entry for a published row: its parsed public key, and for a Retiring key the
    /// end of its window (`expires_at`, else when it retired, else when it was created).
    pub(crate) fn for_record(k: &KeyRecord) -> Result<Self, RefreshError> {
        let key = k
            .public_key()
            .and_then(|pk| pk.verifying_key())
            .map_err(|source| RefreshError::Key {
                kid: k.kid.clone(),
                source,
            })?;
        let not_after = (k.state == KeyState::Retiring).then(|| retiring_window_end(k));
        Ok(Self { key, not_after })
    }

    pub(crate) fn check(&self, at: DateTime<Utc>) -> Result<&VerifyingKey, TokenError> {
        match self.not_after {
            Some(end) if at >= end => Err(TokenError::KeyExpired),
            _ => Ok(&self.key),
        }
    }
}

/// The end of a Retiring row's window: its `expires_at`, else when it retired, else
/// when it was created.
pub(crate) fn retiring_window_end(k: &KeyRecord) -> DateTime<Utc> {
    k.expires_at.unwrap_or(k.retired_at.unwrap_or(k.created_at))
}
