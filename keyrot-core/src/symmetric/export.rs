//! What an explicit, audited export of a symmetric ring's secrets hands out
//! ([`crate::Rotator::export_secrets`]).

use crate::ring::KeyState;
use chrono::{DateTime, Utc};
use std::fmt;
use zeroize::Zeroizing;

/// The form exported secrets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretFormat {
    /// A MAC ring's keys as Standard Webhooks receivers configure them: `whsec_` and the
    /// secret in base64.
    StandardWebhooks,
}

impl SecretFormat {
    /// The name `keyrotctl export-secret --format` takes (`standard-webhooks`).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretFormat::StandardWebhooks => "standard-webhooks",
        }
    }
}

impl std::str::FromStr for SecretFormat {
    type Err = UnknownSecretFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard-webhooks" => Ok(SecretFormat::StandardWebhooks),
            _ => Err(UnknownSecretFormat),
        }
    }
}

/// A secret format other than `standard-webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown secret format: use standard-webhooks")]
pub struct UnknownSecretFormat;

/// One exported secret: which key, and the secret in the asked-for form. `Debug` shows
/// the kid and state only; the text is zeroised on drop.
pub struct ExportedSecret {
    /// The key.
    pub kid: String,
    /// Its state when exported.
    pub state: KeyState,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The secret (`whsec_…`).
    pub secret: Zeroizing<String>,
}

impl fmt::Debug for ExportedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportedSecret")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .field("secret", &"[redacted]")
            .finish()
    }
}
