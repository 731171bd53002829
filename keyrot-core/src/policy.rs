//! Rotation policy: intervals, grace periods and the checks that refuse unsafe ones.

use crate::alg::{Algorithm, EdDsaName, RsaBits};
use chrono::TimeDelta;
use std::time::Duration;

/// A policy that would break a lifecycle guarantee. The message names the settings, the
/// rule and the values to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A duration that must be positive is zero or negative.
    #[error("unsafe rotation policy: {setting} must be positive")]
    NotPositive {
        /// The setting.
        setting: &'static str,
    },
    /// A duration that may be zero is negative.
    #[error("unsafe rotation policy: {setting} must not be negative")]
    Negative {
        /// The setting.
        setting: &'static str,
    },
    /// Scheduled rotations would be refused by the normal rate limit.
    #[error(
        "unsafe rotation policy: min_interval ({}) exceeds rotation_interval ({}): scheduled rotations would be refused",
        human(*min_interval),
        human(*rotation_interval)
    )]
    MinIntervalExceedsRotation {
        /// The configured `min_interval`.
        min_interval: TimeDelta,
        /// The configured `rotation_interval`.
        rotation_interval: TimeDelta,
    },
    /// A new key would sign before every verifier's cached JWKS has it.
    #[error(
        "unsafe rotation policy: publish_lead ({}) must be at least jwks_max_age + verifier_cache + clock_skew ({}), \
         or verifiers with a cached JWKS will meet tokens from a key they have not seen",
        human(*publish_lead),
        human(*needed)
    )]
    PublishLeadTooShort {
        /// The configured `publish_lead`.
        publish_lead: TimeDelta,
        /// `jwks_max_age + verifier_cache + clock_skew`.
        needed: TimeDelta,
    },
    /// The next key would be published before the current one activates.
    #[error(
        "unsafe rotation policy: publish_lead ({}) must be shorter than rotation_interval ({})",
        human(*publish_lead),
        human(*rotation_interval)
    )]
    PublishLeadNotShorterThanRotation {
        /// The configured `publish_lead`.
        publish_lead: TimeDelta,
        /// The configured `rotation_interval`.
        rotation_interval: TimeDelta,
    },
    /// Tokens signed just before a rotation would stop verifying before they expire.
    #[error(
        "unsafe rotation policy: retire_grace ({}) must be at least max_token_ttl + clock_skew + jwks_max_age ({}), \
         or tokens signed just before a rotation would stop verifying before they expire",
        human(*retire_grace),
        human(*needed)
    )]
    RetireGraceTooShort {
        /// The configured `retire_grace`.
        retire_grace: TimeDelta,
        /// `max_token_ttl + clock_skew + jwks_max_age`.
        needed: TimeDelta,
    },
    /// The emergency path would be slower than the normal one.
    #[error(
        "unsafe rotation policy: forced_min_interval ({}) exceeds min_interval ({}): the emergency path would be slower than the normal one",
        human(*forced_min_interval),
        human(*min_interval)
    )]
    ForcedSlowerThanNormal {
        /// The configured `forced_min_interval`.
        forced_min_interval: TimeDelta,
        /// The configured `min_interval`.
        min_interval: TimeDelta,
    },
}

/// How a ring rotates. Build with [`Policy::builder`]; defaults follow the seeds: rotate
/// every 7 days, at most one normal rotation per 6 days, forced at most once per hour,
/// the old key kept one week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    algorithm: Algorithm,
    rsa_bits: RsaBits,
    eddsa_name: EdDsaName,
    rotation_interval: TimeDelta,
    min_interval: TimeDelta,
    forced_min_interval: TimeDelta,
    publish_lead: TimeDelta,
    retire_grace: TimeDelta,
    max_token_ttl: TimeDelta,
    clock_skew: TimeDelta,
    jwks_max_age: TimeDelta,
    verifier_cache: TimeDelta,
    purge_after: TimeDelta,
    lock_ttl: TimeDelta,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::EdDsa,
            rsa_bits: RsaBits::B2048,
            eddsa_name: EdDsaName::EdDsa,
            rotation_interval: TimeDelta::days(7),
            min_interval: TimeDelta::days(6),
            forced_min_interval: TimeDelta::hours(1),
            publish_lead: TimeDelta::days(1),
            retire_grace: TimeDelta::days(7),
            max_token_ttl: TimeDelta::hours(1),
            clock_skew: TimeDelta::minutes(1),
            jwks_max_age: TimeDelta::hours(1),
            verifier_cache: TimeDelta::hours(1),
            purge_after: TimeDelta::days(30),
            lock_ttl: TimeDelta::seconds(30),
        }
    }
}

macro_rules! getters {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        $( $(#[$m])* pub fn $name(&self) -> TimeDelta { self.$name } )*
    };
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder(Policy::default())
    }

    /// Sets [`Policy::eddsa_name`] (for [`crate::KeyRingBuilder::with_eddsa_name`]).
    pub(crate) fn set_eddsa_name(&mut self, name: EdDsaName) {
        self.eddsa_name = name;
    }

    /// Algorithm of newly generated keys.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// RSA size of newly generated keys.
    pub fn rsa_bits(&self) -> RsaBits {
        self.rsa_bits
    }

    /// The `alg` name the ring writes for its Ed25519 keys, in the headers it signs and the
    /// JWKS it publishes (default `EdDSA`; verification accepts both names).
    pub fn eddsa_name(&self) -> EdDsaName {
        self.eddsa_name
    }

    getters! {
        /// How often the scheduler rotates.
        rotation_interval,
        /// Minimum time between normal rotations.
        min_interval,
        /// Minimum time between forced rotations.
        forced_min_interval,
        /// How long a normally rotated key is published before it signs.
        publish_lead,
        /// How long a retired key keeps verifying.
        retire_grace,
        /// Longest lifetime (`exp − iat`) of a token signed by the ring.
        max_token_ttl,
        /// Clock skew allowed between instances and verifiers.
        clock_skew,
        /// Cap on the JWKS `Cache-Control: max-age`.
        jwks_max_age,
        /// How long a verifier may keep serving a cached JWKS beyond `max-age`.
        verifier_cache,
        /// How long after expiry private material is destroyed.
        purge_after,
        /// Bound on how long a crashed holder can keep the rotation lock.
        lock_ttl,
    }

    fn validate(&self) -> Result<(), PolicyError> {
        let positive = [
            ("rotation_interval", self.rotation_interval),
            ("min_interval", self.min_interval),
            ("forced_min_interval", self.forced_min_interval),
            ("publish_lead", self.publish_lead),
            ("retire_grace", self.retire_grace),
            ("max_token_ttl", self.max_token_ttl),
            ("lock_ttl", self.lock_ttl),
        ];
        if let Some((setting, _)) = positive.into_iter().find(|(_, d)| *d <= TimeDelta::zero()) {
            return Err(PolicyError::NotPositive { setting });
        }
        let non_negative = [
            ("clock_skew", self.clock_skew),
            ("jwks_max_age", self.jwks_max_age),
            ("verifier_cache", self.verifier_cache),
            ("purge_after", self.purge_after),
        ];
        if let Some((setting, _)) = non_negative.into_iter().find(|(_, d)| *d < TimeDelta::zero()) {
            return Err(PolicyError::Negative { setting });
        }
        if self.min_interval > self.rotation_interval {
            return Err(PolicyError::MinIntervalExceedsRotation {
                min_interval: self.min_interval,
                rotation_interval: self.rotation_interval,
            });
        }
        let needed = self.jwks_max_age + self.verifier_cache + self.clock_skew;
        if self.publish_lead < needed {
            return Err(PolicyError::PublishLeadTooShort {
                publish_lead: self.publish_lead,
                needed,
            });
        }
        if self.publish_lead >= self.rotation_interval {
            return Err(PolicyError::PublishLeadNotShorterThanRotation {
                publish_lead: self.publish_lead,
                rotation_interval: self.rotation_interval,
            });
        }
        let needed = self.max_token_ttl + self.clock_skew + self.jwks_max_age;
        if self.retire_grace < needed {
            return Err(PolicyError::RetireGraceTooShort {
                retire_grace: self.retire_grace,
                needed,
            });
        }
        if self.forced_min_interval > self.min_interval {
            return Err(PolicyError::ForcedSlowerThanNormal {
                forced_min_interval: self.forced_min_interval,
                min_interval: self.min_interval,
            });
        }
        Ok(())
    }
}

fn human(d: TimeDelta) -> String {
    let s = d.num_seconds();
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Builds a validated [`Policy`].
#[derive(Debug, Clone)]
pub struct PolicyBuilder(Policy);

fn td(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

macro_rules! setters {
    ($($(#[$m:meta])* $fn_name:ident => $field:ident),* $(,)?) => {
        $( $(#[$m])* pub fn $fn_name(mut self, d: Duration) -> Self { self.0.$field = td(d); self } )*
    };
}

impl PolicyBuilder {
    /// Algorithm for new keys.
    pub fn with_algorithm(mut self, alg: Algorithm) -> Self {
        self.0.algorithm = alg;
        self
    }

    /// RSA size for new keys.
    pub fn with_rsa_bits(mut self, bits: RsaBits) -> Self {
        self.0.rsa_bits = bits;
        self
    }

    /// See [`Policy::eddsa_name`]: [`EdDsaName::Ed25519`] signs and publishes RFC 9864's
    /// `Ed25519` instead of `EdDSA`.
    pub fn with_eddsa_name(mut self, name: EdDsaName) -> Self {
        self.0.eddsa_name = name;
        self
    }

    setters! {
        /// See [`Policy::rotation_interval`].
        with_rotation_interval => rotation_interval,
        /// See [`Policy::min_interval`].
        with_min_interval => min_interval,
        /// See [`Policy::forced_min_interval`].
        with_forced_min_interval => forced_min_interval,
        /// See [`Policy::publish_lead`].
        with_publish_lead => publish_lead,
        /// See [`Policy::retire_grace`].
        with_retire_grace => retire_grace,
        /// See [`Policy::max_token_ttl`].
        with_max_token_ttl => max_token_ttl,
        /// See [`Policy::clock_skew`].
        with_clock_skew => clock_skew,
        /// See [`Policy::jwks_max_age`].
        with_jwks_max_age => jwks_max_age,
        /// See [`Policy::verifier_cache`].
        with_verifier_cache => verifier_cache,
        /// See [`Policy::purge_after`].
        with_purge_after => purge_after,
        /// See [`Policy::lock_ttl`].
        with_lock_ttl => lock_ttl,
    }

    /// Validates and returns the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn defaults_are_valid() {
        assert!(Policy::builder().build().is_ok());
    }

    #[test]
    fn unsafe_combinations_are_refused_with_the_rule() {
        let err = |b: PolicyBuilder| b.build().err().map(|e| e.to_string()).unwrap_or_default();
        let e = err(Policy::builder().with_publish_lead(Duration::from_secs(H)));
        assert!(
            e.contains("publish_lead (1h) must be at least jwks_max_age + verifier_cache + clock_skew (121m)"),
            "{e}"
        );
        let e = err(Policy::builder().with_retire_grace(Duration::from_secs(H)));
        assert!(e.contains("retire_grace (1h)"), "{e}");
        let e = err(Policy::builder().with_min_interval(Duration::from_secs(8 * 24 * H)));
        assert!(e.contains("min_interval (8d) exceeds rotation_interval (7d)"), "{e}");
        let e = err(Policy::builder().with_lock_ttl(Duration::ZERO));
        assert!(e.contains("lock_ttl must be positive"), "{e}");
        let e = err(Policy::builder().with_publish_lead(Duration::from_secs(7 * 24 * H)));
        assert!(e.contains("shorter than rotation_interval"), "{e}");
        let e = err(Policy::builder().with_forced_min_interval(Duration::from_secs(7 * 24 * H)));
        assert!(e.contains("forced_min_interval"), "{e}");
    }
}
