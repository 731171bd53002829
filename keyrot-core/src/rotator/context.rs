//! Who asks ([`RequestContext`]) and how a [`Rotator`] is built ([`RotatorBuilder`]).

use super::{Inner, Rotator};
use crate::clock::{Clock, SystemClock};
use crate::ids::random_hex;
use crate::integrity::SealerLinker;
use crate::keyring::KeyRing;
use crate::policy::Policy;
use crate::ring::RingName;
use crate::seal::Sealer;
use crate::storage::{Lock, Storage};
use std::sync::Arc;

/// Who asked and how to correlate the request.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The actor (OAuth client id, `cli:user`, …).
    pub actor: String,
    /// An `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// A request id for correlation.
    pub request_id: Option<String>,
}

impl RequestContext {
    /// A context for `actor`.
    pub fn actor(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            ..Self::default()
        }
    }

    /// With an idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With a request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// Builds a [`Rotator`].
pub struct RotatorBuilder {
    /// Everything but the instance name, which defaults when the rotator is built.
    inner: Inner,
    instance: Option<String>,
}

impl std::fmt::Debug for RotatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatorBuilder")
            .field("ring", &self.inner.ring)
            .field("instance", &self.instance)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// The default propagation bound ([`RotatorBuilder::with_propagation`]).
pub const DEFAULT_PROPAGATION: std::time::Duration = std::time::Duration::from_secs(30);

impl RotatorBuilder {
    /// The defaults: system clock, default policy, random instance name, no key ring.
    pub(super) fn new(ring: RingName, storage: Arc<dyn Storage>, lock: Arc<dyn Lock>, sealer: Arc<dyn Sealer>) -> Self {
        Self {
            inner: Inner {
                ring,
                storage,
                lock,
                linker: SealerLinker::new(sealer.clone()),
                sealer,
                clock: Arc::new(SystemClock),
                policy: Policy::default(),
                instance: String::new(),
                keyring: None,
                served: std::sync::atomic::AtomicU64::new(0),
                propagation: DEFAULT_PROPAGATION,
                signing: None,
            },
            instance: None,
        }
    }

    /// Clock (default: system).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.inner.clock = clock;
        self
    }

    /// Policy (default: [`Policy::default`]).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.inner.policy = policy;
        self
    }

    /// A name for this instance in audit records and lock holders (default: random).
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// The longest a commit takes to reach every instance's key ring: the change feed's
    /// delay (PostgreSQL `NOTIFY`: about a second), or the refresher's poll interval where
    /// there is no feed. Stated in the blast radius of a revocation (default 30 s, the
    /// examples' poll interval).
    pub fn with_propagation(mut self, bound: std::time::Duration) -> Self {
        self.inner.propagation = bound;
        self
    }

    /// A local key ring to update at once after each commit. Its HSM or KMS
    /// ([`crate::KeyRingBuilder::with_signing_custody`]) becomes the rotator's unless
    /// [`RotatorBuilder::with_signing_custody`] names one.
    pub fn with_keyring(mut self, keyring: KeyRing) -> Self {
        if self.inner.signing.is_none() {
            self.inner.signing = keyring.signing_custody().cloned();
        }
        self.inner.keyring = Some(keyring);
        self
    }

    /// New keys are created in this HSM or KMS, non-extractable, instead of in this
    /// process ([`crate::custody::SigningCustody`]); the rows hold only the reference and
    /// the public key. A key that loses the commit race is destroyed there, and each
    /// attempt that creates a key first destroys the keys the backend holds under the
    /// ring's name that no row references (a crash between creation and commit). Revoking
    /// a key disables it there, purging destroys it.
    pub fn with_signing_custody(mut self, custody: Arc<dyn crate::custody::SigningCustody>) -> Self {
        self.inner.signing = Some(custody);
        self
    }

    /// The rotator.
    pub fn build(self) -> Rotator {
        let instance = self.instance.unwrap_or_else(|| format!("instance-{}", random_hex(4)));
        Rotator {
            inner: Arc::new(Inner { instance, ..self.inner }),
        }
    }
}
