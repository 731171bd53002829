//! The rotation policy from the environment.

use crate::SetupError;
use std::time::Duration;

/// The rotation policy: keyrot's defaults, each duration overridable in milliseconds by
/// `KEYROT_POLICY_<NAME>_MS` (`ROTATION_INTERVAL`, `MIN_INTERVAL`, `FORCED_MIN_INTERVAL`,
/// `PUBLISH_LEAD`, `RETIRE_GRACE`, `MAX_TOKEN_TTL`, `CLOCK_SKEW`, `JWKS_MAX_AGE`,
/// `VERIFIER_CACHE`, `PURGE_AFTER`). Demos and end-to-end tests shorten them; the policy
/// is validated, so unsafe combinations are refused with the rule they break.
pub fn policy_from_env(alg: Option<keyrot_core::Algorithm>) -> Result<keyrot_core::Policy, SetupError> {
    type Setter = fn(keyrot_core::PolicyBuilder, Duration) -> keyrot_core::PolicyBuilder;
    let fields: [(&str, Setter); 10] = [
        ("ROTATION_INTERVAL", |b, d| b.with_rotation_interval(d)),
        ("MIN_INTERVAL", |b, d| b.with_min_interval(d)),
        ("FORCED_MIN_INTERVAL", |b, d| b.with_forced_min_interval(d)),
        ("PUBLISH_LEAD", |b, d| b.with_publish_lead(d)),
        ("RETIRE_GRACE", |b, d| b.with_retire_grace(d)),
        ("MAX_TOKEN_TTL", |b, d| b.with_max_token_ttl(d)),
        ("CLOCK_SKEW", |b, d| b.with_clock_skew(d)),
        ("JWKS_MAX_AGE", |b, d| b.with_jwks_max_age(d)),
        ("VERIFIER_CACHE", |b, d| b.with_verifier_cache(d)),
        ("PURGE_AFTER", |b, d| b.with_purge_after(d)),
    ];
    let mut builder = keyrot_core::Policy::builder();
    if let Some(alg) = alg {
        builder = builder.with_algorithm(alg);
    }
    for (name, set) in fields {
        let var = format!("KEYROT_POLICY_{name}_MS");
        if let Ok(value) = std::env::var(&var) {
            let ms: u64 = value
                .trim()
                .parse()
                .map_err(|source| SetupError::PolicyValue { var, value, source })?;
            builder = set(builder, Duration::from_millis(ms));
        }
    }
    builder.build().map_err(SetupError::Policy)
}
