//! The JWKS document: pre-rendered bytes, a strong ETag, and a lifecycle-aware max-age.

use crate::b64;
use crate::policy::Policy;
use crate::ring::{KeyState, Ring};
use chrono::{DateTime, Utc};
use sha2::Digest as _;
use std::sync::Arc;

/// The media type keyrot serves the JWKS with (RFC 7517 §8.5.1).
pub const JWKS_CONTENT_TYPE: &str = "application/jwk-set+json";

/// A rendered JWKS, shared by every request until the ring changes.
#[derive(Debug, Clone)]
pub struct Jwks {
    body: Arc<[u8]>,
    etag: Arc<str>,
    max_age_cap_secs: i64,
    next_change: Option<DateTime<Utc>>,
}

impl Jwks {
    /// Renders the published keys of `ring` (Active, then Pending, then Retiring).
    pub fn render(ring: &Ring, policy: &Policy) -> Self {
        let mut published: Vec<_> = ring.published().collect();
        published.sort_by_key(|k| {
            let order = match k.state {
                KeyState::Active => 0,
                KeyState::Pending => 1,
                _ => 2,
            };
            (order, k.created_at)
        });
        let keys: Vec<serde_json::Value> = published
            .iter()
            .filter_map(|k| k.public_key().ok().map(|pk| pk.to_jwk(&k.kid)))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
        let etag = format!("\"{}\"", b64::encode(&sha2::Sha256::digest(&body)[..18]));
        Self {
            body: body.into(),
            etag: etag.into(),
            max_age_cap_secs: policy.jwks_max_age().num_seconds(),
            next_change: next_publication_change(ring, policy),
        }
    }

    /// The JSON bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Shared handle to the bytes (no copy).
    pub fn body_arc(&self) -> Arc<[u8]> {
        self.body.clone()
    }

    /// The strong ETag, quoted.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// `max-age` at `now`: the cap, shortened so no cache outlives the next planned change
    /// of the published set (a new Pending key, a Retiring key's expiry).
    pub fn max_age_secs(&self, now: DateTime<Utc>) -> u64 {
        let until = self
            .next_change
            .map_or(self.max_age_cap_secs, |t| (t - now).num_seconds());
        until.clamp(0, self.max_age_cap_secs.max(0)) as u64
    }

    /// The `Cache-Control` value at `now`.
    pub fn cache_control(&self, now: DateTime<Utc>) -> String {
        format!("public, max-age={}", self.max_age_secs(now))
    }

    /// Whether an `If-None-Match` header value matches this document (strong comparison;
    /// a list and `*` are understood).
    pub fn matches_if_none_match(&self, header: &str) -> bool {
        header.split(',').map(str::trim).any(|t| t == "*" || t == &*self.etag)
    }
}

fn next_publication_change(ring: &Ring, policy: &Policy) -> Option<DateTime<Utc>> {
    let expiries = ring.in_state(KeyState::Retiring).filter_map(|k| k.expires_at);
    let next_pending = match (ring.active(), ring.pending().is_empty()) {
        (Some(a), true) => {
            let since = a.activated_at.unwrap_or(a.created_at);
            Some(since + policy.rotation_interval() - policy.publish_lead())
        }
        _ => None,
    };
    expiries.chain(next_pending).min()
}
