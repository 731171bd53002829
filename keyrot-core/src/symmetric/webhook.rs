//! Signed webhooks in the Standard Webhooks scheme (<https://www.standardwebhooks.com>,
//! used by Svix and others): headers `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,SIG …`, where `SIG` is the base64 HMAC-SHA-256 of
//! `id.timestamp.payload` under a secret the receiver holds as `whsec_…`.
//!
//! During a rotation the sender signs with the Active key *and* every Pending one, so a
//! receiver that already holds the new secret verifies before the switch, and one that
//! does not yet verifies with the old secret; after it, Retiring keys stay accepted by a
//! keyrot receiver until their window ends.

use super::SymmetricError;
use super::aead::counted;
use super::counts::Use;
use super::keys::{SymmetricKey, SymmetricKeys};
use super::mac::keyed;
use crate::alg::KeyKind;
use crate::keyring::KeyRing;
use crate::ring::KeyState;
use crate::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::Mac as _;
use std::time::Duration;

/// How far a webhook's timestamp may be from the receiver's clock, either way (5 minutes,
/// as the Standard Webhooks libraries default to).
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);
/// The longest `webhook-id` accepted (characters).
const MAX_ID: usize = 256;
/// The most signatures a `webhook-signature` header may list.
const MAX_SIGNATURES: usize = 16;

/// The three headers of a signed webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// `webhook-id`: the message's unique id.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds.
    pub timestamp: i64,
    /// `webhook-signature`: `v1,SIG` entries separated by spaces.
    pub signature: String,
}

impl WebhookHeaders {
    /// The header names, in the order [`WebhookHeaders::pairs`] gives them.
    pub const NAMES: [&'static str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

    /// `(name, value)` for each header.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (Self::NAMES[0], self.id.clone()),
            (Self::NAMES[1], self.timestamp.to_string()),
            (Self::NAMES[2], self.signature.clone()),
        ]
    }

    /// Reads the three headers through `get` (a header map's lookup by lowercase name).
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, WebhookError> {
        let id = get(Self::NAMES[0]).ok_or(WebhookError::MissingHeader(Self::NAMES[0]))?;
        let timestamp = get(Self::NAMES[1]).ok_or(WebhookError::MissingHeader(Self::NAMES[1]))?;
        let signature = get(Self::NAMES[2]).ok_or(WebhookError::MissingHeader(Self::NAMES[2]))?;
        let timestamp = parse_timestamp(timestamp)?;
        Ok(Self {
            id: id.to_owned(),
            timestamp,
            signature: signature.to_owned(),
        })
    }
}

fn parse_timestamp(s: &str) -> Result<i64, WebhookError> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::InvalidHeader("webhook-timestamp"));
    }
    s.parse().map_err(|_| WebhookError::InvalidHeader("webhook-timestamp"))
}

/// Why a webhook was not signed or not accepted. Never carries a secret or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header's value breaks its rule (the id: 1-256 visible ASCII characters; the
    /// timestamp: Unix seconds; the signature: `v1,BASE64` entries).
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// The timestamp is further from now than the tolerance (a replay, or a clock off).
    #[error("webhook timestamp is outside the tolerance")]
    Timestamp,
    /// No `v1` signature matches a key inside its window.
    #[error("no signature matches")]
    NoMatch,
    /// The ring could not sign or verify.
    #[error(transparent)]
    Symmetric(#[from] SymmetricError),
}

/// Signs and receives Standard Webhooks with a MAC ring. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Webhooks {
    ring: KeyRing,
    tolerance: Duration,
}

impl Webhooks {
    /// The webhook handle of `ring`; refused unless the ring makes MAC keys.
    pub fn new(ring: KeyRing) -> Result<Self, SymmetricError> {
        ring.check_kind(KeyKind::Mac)?;
        Ok(Self {
            ring,
            tolerance: DEFAULT_WEBHOOK_TOLERANCE,
        })
    }

    /// How far a received timestamp may be from now ([`DEFAULT_WEBHOOK_TOLERANCE`]).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Signs `payload` as message `id` sent now.
    pub fn sign(&self, id: &str, payload: &[u8]) -> Result<WebhookHeaders, WebhookError> {
        self.sign_at(id, self.ring.now().timestamp(), payload)
    }

    /// Signs `payload` as message `id` sent at `timestamp` (Unix seconds): one `v1`
    /// signature under the Active key, then one under each Pending key.
    pub fn sign_at(&self, id: &str, timestamp: i64, payload: &[u8]) -> Result<WebhookHeaders, WebhookError> {
        check_id(id)?;
        if timestamp < 0 {
            return Err(WebhookError::InvalidHeader("webhook-timestamp"));
        }
        let signed = self.ring.with_symmetric(KeyKind::Mac, |keys| {
            let active = keys.active()?;
            let ts = timestamp.to_string();
            let mut signature = String::new();
            let pending = keys.keys.iter().filter(|k| k.state == KeyState::Pending);
            for key in std::iter::once(active).chain(pending) {
                let tag = signing(key, id, &ts, payload)?.finalize().into_bytes();
                if !signature.is_empty() {
                    signature.push(' ');
                }
                signature.push_str("v1,");
                STANDARD.encode_string(tag, &mut signature);
            }
            Ok::<_, WebhookError>((signature, active.state))
        });
        Ok(WebhookHeaders {
            id: id.to_owned(),
            timestamp,
            signature: counted(&self.ring, Use::Sign, signed)?,
        })
    }

    /// Accepts a received webhook: its timestamp within the tolerance of now, and one of
    /// its `v1` signatures made by a key of the ring inside its window. The same message
    /// verifies again inside the tolerance: as the specification asks, a receiver that
    /// must act once deduplicates on `webhook-id`.
    pub fn verify(&self, headers: &WebhookHeaders, payload: &[u8]) -> Result<(), WebhookError> {
        self.verify_at(headers, payload, self.ring.now())
    }

    /// [`Webhooks::verify`] as of `at` (for tests: never the webhook's own timestamp).
    pub fn verify_at(&self, headers: &WebhookHeaders, payload: &[u8], at: DateTime<Utc>) -> Result<(), WebhookError> {
        let checked = self
            .ring
            .with_symmetric(KeyKind::Mac, |keys| check(keys, headers, payload, at, self.tolerance));
        counted(&self.ring, Use::Verify, checked.map(|state| ((), state)))
    }
}

/// HMAC-SHA-256 over the Standard Webhooks signed content, `id.timestamp.payload`.
pub(super) fn signing(
    key: &SymmetricKey,
    id: &str,
    timestamp: &str,
    payload: &[u8],
) -> Result<super::mac::HmacSha256, SymmetricError> {
    Ok(keyed(key)?
        .chain_update(id.as_bytes())
        .chain_update(b".")
        .chain_update(timestamp.as_bytes())
        .chain_update(b".")
        .chain_update(payload))
}

fn check_id(id: &str) -> Result<(), WebhookError> {
    if (1..=MAX_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(WebhookError::InvalidHeader("webhook-id"))
    }
}

fn check(
    keys: &SymmetricKeys,
    headers: &WebhookHeaders,
    payload: &[u8],
    at: DateTime<Utc>,
    tolerance: Duration,
) -> Result<KeyState, WebhookError> {
    check_id(&headers.id)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if headers.timestamp.abs_diff(at.timestamp()) > tolerance.unsigned_abs() {
        return Err(WebhookError::Timestamp);
    }
    let mut offered = Vec::new();
    for entry in headers.signature.split(' ').filter(|e| !e.is_empty()) {
        let Some((version, sig)) = entry.split_once(',') else {
            return Err(WebhookError::InvalidHeader("webhook-signature"));
        };
        if version != "v1" {
            // Another scheme (v1a: asymmetric): not one this ring checks.
            continue;
        }
        let sig = STANDARD
            .decode(sig)
            .map_err(|_| WebhookError::InvalidHeader("webhook-signature"))?;
        offered.push(sig);
        if offered.len() > MAX_SIGNATURES {
            return Err(WebhookError::InvalidHeader("webhook-signature"));
        }
    }
    let ts = headers.timestamp.to_string();
    for key in keys.accepted_at(at) {
        let mac = signing(key, &headers.id, &ts, payload)?;
        if offered.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
            return Ok(key.state);
        }
    }
    Err(WebhookError::NoMatch)
}

/// The Standard Webhooks form of a MAC key, as receivers configure it: `whsec_` and the
/// secret in base64.
pub fn standard_webhooks_secret(secret: &SecretBytes) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(6 + secret.len().div_ceil(3) * 4));
    out.push_str("whsec_");
    STANDARD.encode_string(secret.expose(), &mut out);
    out
}
