//! The JWKS document: pre-rendered bytes, a strong ETag, and a lifecycle-aware max-age.

use crate::alg::Algorithm;
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
        // Only signing keys are ever published: a MAC or AEAD ring's JWKS is empty.
        let mut published: Vec<_> = ring.published().filter(|k| k.alg.is_signing()).collect();
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
            .map(|mut jwk| {
                if let Some(alg) = jwk
                    .get("alg")
                    .and_then(|a| a.as_str())
                    .and_then(|a| a.parse::<Algorithm>().ok())
                {
                    jwk["alg"] = alg.name_with(policy.eddsa_name()).into();
                }
                jwk
            })
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

    /// Whether an `If-None-Match` field value matches this document, by the weak
    /// comparison RFC 9110 §13.1.2 prescribes for `If-None-Match`: `"x"` and `W/"x"` both
    /// match our `"x"` (a proxy that compresses the body, such as nginx with gzip, weakens
    /// the ETag it forwards). The value is `*` or a comma-separated list of entity-tags
    /// (empty elements and whitespace around them allowed); an element that is not an
    /// entity-tag never matches, and the elements after it are still read.
    pub fn matches_if_none_match(&self, header: &str) -> bool {
        let header = header.trim_matches(is_ows);
        if header == "*" {
            return true;
        }
        let mut rest = header;
        loop {
            rest = rest.trim_start_matches(|c| c == ',' || is_ows(c));
            if rest.is_empty() {
                return false;
            }
            match entity_tag(rest) {
                Some((opaque, after)) => {
                    if opaque == &*self.etag {
                        return true;
                    }
                    rest = after;
                }
                // Not an entity-tag: skip to the next element.
                None => rest = rest.find(',').map_or("", |i| &rest[i..]),
            }
        }
    }
}

/// Optional whitespace (RFC 9110 §5.6.3).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Reads one list element that is an entity-tag (RFC 9110 §8.8.3: `[W/] DQUOTE *etagc
/// DQUOTE`, `etagc = %x21 / %x23-7E / obs-text`) from the start of `s`: its opaque-tag,
/// quotes included, and what follows the element (from the next `,`, or empty). `None`
/// when the element is anything else.
fn entity_tag(s: &str) -> Option<(&str, &str)> {
    let tag = s.strip_prefix("W/").unwrap_or(s);
    let inner = tag.strip_prefix('"')?;
    let end = inner.find('"')?;
    if !inner[..end]
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    let (opaque, after) = tag.split_at(end + 2);
    let after = after.trim_start_matches(is_ows);
    (after.is_empty() || after.starts_with(',')).then_some((opaque, after))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::RingName;

    fn jwks() -> Jwks {
        Jwks::render(&Ring::empty(RingName::new("r").expect("ring")), &Policy::default())
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let j = jwks();
        let etag = j.etag().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
        let inner = etag.trim_matches('"');
        let matching = [
            etag.clone(),
            format!("W/{etag}"),
            format!(" \t{etag}\t "),
            format!("\"other\", W/{etag}"),
            format!("W/\"other\",{etag}"),
            format!("\"a,b\" , W/{etag}"),
            format!(",, \"other\" ,\t,W/{etag},"),
            format!("garbage, W/{etag}"),
            format!("W/\"unterminated, {etag}"),
            "*".to_owned(),
            " * ".to_owned(),
        ];
        for h in &matching {
            assert!(j.matches_if_none_match(h), "{h:?} should match {etag}");
        }
        let not_matching = [
            String::new(),
            ",".to_owned(),
            "\"other\"".to_owned(),
            "W/\"other\", \"x\"".to_owned(),
            inner.to_owned(),
            format!("W/{inner}"),
            format!("w/{etag}"),
            format!("W/ {etag}"),
            format!("W/{etag}x"),
            format!("{etag}{etag}"),
            format!("\"{inner}"),
            format!("{etag}; q=1"),
            format!("\"{inner} \""),
            format!("\"other\" {etag}"),
            format!("*, {etag}x"),
        ];
        for h in &not_matching {
            assert!(!j.matches_if_none_match(h), "{h:?} should not match {etag}");
        }
    }

    #[test]
    fn entity_tags_contain_only_etagc() {
        assert_eq!(entity_tag("\"a\""), Some(("\"a\"", "")));
        assert_eq!(entity_tag("W/\"\" , x"), Some(("\"\"", ", x")));
        assert_eq!(entity_tag("\"\u{e9}\""), Some(("\"\u{e9}\"", "")), "obs-text");
        assert_eq!(entity_tag("\"a b\""), None, "no space inside");
        assert_eq!(entity_tag("\"a\u{7f}\""), None, "no DEL");
        assert_eq!(entity_tag("\"a\"b"), None);
    }
}
