//! The immutable snapshot a key ring serves from: verifiers with their validity windows,
//! the Active signer, the JWKS, and the integrity verdict of the rows it was built from.

use super::entry::VerifierEntry;
use super::public::{Verifiers, trusted_rows};
use super::{MANIFEST, RefreshError};
use crate::alg::{Algorithm, KeyKind};
use crate::integrity::{IntegrityReport, TamperedKey};
use crate::jwks::Jwks;
use crate::key::{KeyError, PrivateKey, SigningKey};
use crate::policy::Policy;
use crate::ring::{KeyOrigin, KeyRecord, KeyState, Ring, RingName};
use crate::seal::{SealContext, SealError, Sealer};
use crate::symmetric::SymmetricKeys;
use crate::token;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) struct ActiveSigner {
    pub(super) kid: String,
    pub(super) header_b64: String,
    /// The header of access tokens (`typ` `at+jwt`, RFC 9068), whatever the ring's type.
    pub(super) access_header_b64: String,
    pub(super) alg: Algorithm,
    pub(super) key: SignerKey,
}

/// What signs: a key in this process, or the reference to a key an HSM or KMS holds.
pub(super) enum SignerKey {
    Local(SigningKey),
    Remote(String),
}

/// Public facts about one key (no key material), for status pages and CLIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyStatus {
    /// Key id.
    pub kid: String,
    /// The JWS algorithm the key signs with (its `alg` in the JWKS).
    pub alg: Algorithm,
    /// Where the key is in its life: Pending, Active, Retiring or Expired.
    pub state: KeyState,
    /// How the key entered the ring (bootstrap, scheduled, rotation request, forced,
    /// imported).
    pub origin: KeyOrigin,
    /// Whether the key was activated by the forced path (emergency rotation or an import
    /// made Active at once), which bypasses `publish_lead` and `min_interval`.
    pub forced: bool,
    /// The RFC 7638 thumbprint of the public key.
    pub fingerprint: String,
    /// When the key was created; it is published (in the JWKS) from then on.
    pub created_at: DateTime<Utc>,
    /// When the key is (or was) due to activate: set when it is added, Pending or Active;
    /// `None` only for rows written without one (read as `publish_lead` after creation).
    pub activate_at: Option<DateTime<Utc>>,
    /// When the key started signing; `None` if it never became Active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When the key stopped signing (Active → Retiring, or revoked while Active); `None`
    /// while it has not.
    pub retired_at: Option<DateTime<Utc>>,
    /// When a Retiring key's grace ends and it leaves the JWKS (`retire_grace` after it
    /// retired); `None` for a key that never retired normally.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key became Expired (grace over, or revoked); `None` while it is published.
    pub expired_at: Option<DateTime<Utc>>,
    /// When the key was revoked; `None` if it was not (a revoked key is also Expired).
    pub revoked_at: Option<DateTime<Utc>>,
    /// The reason given for the revocation; `None` if the key was not revoked.
    pub revoke_reason: Option<String>,
    /// When the private material was destroyed (`purge_after` after expiry); `None` while
    /// it is still stored. The metadata stays.
    pub purged_at: Option<DateTime<Utc>>,
    /// Why the row failed its integrity check, if it did: it never verifies.
    pub tampered: Option<String>,
}

impl From<&KeyRecord> for KeyStatus {
    fn from(k: &KeyRecord) -> Self {
        KeyStatus {
            kid: k.kid.clone(),
            alg: k.alg,
            state: k.state,
            origin: k.origin,
            forced: k.forced,
            fingerprint: k.fingerprint.clone(),
            created_at: k.created_at,
            activate_at: k.activate_at,
            activated_at: k.activated_at,
            retired_at: k.retired_at,
            expires_at: k.expires_at,
            expired_at: k.expired_at,
            revoked_at: k.revoked_at,
            revoke_reason: k.revoke_reason.clone(),
            purged_at: k.purged_at,
            tampered: None,
        }
    }
}

/// An immutable view of a ring at one generation, with every key pre-parsed.
pub struct Snapshot {
    pub(super) ring: RingName,
    pub(super) generation: u64,
    pub(super) signer: Option<Arc<ActiveSigner>>,
    /// A MAC or AEAD ring's keys inside their window, unsealed (`None` for a signing ring).
    pub(super) symmetric: Option<Arc<SymmetricKeys>>,
    /// The verifying keys, with their windows and known headers.
    pub(super) public: Verifiers,
    /// The authentic rows (without sealed material), to re-render the JWKS when a
    /// snapshot is narrowed ([`Snapshot::narrowed_by`]).
    pub(super) trusted_keys: Vec<KeyRecord>,
    pub(super) jwks: Jwks,
    pub(super) keys: Vec<KeyStatus>,
    pub(super) integrity: IntegrityReport,
    pub(super) loaded_at: DateTime<Utc>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("ring", &self.ring)
            .field("generation", &self.generation)
            .field("active", &self.signer.as_ref().map(|s| &s.kid))
            .field("verifying", &self.public.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Snapshot {
    /// Builds a snapshot: checks every row against the ring's authenticated manifest,
    /// parses every published key that passes, unseals only the Active one (and checks
    /// that its public key is the stored one). A row that fails never verifies, is
    /// reported ([`Snapshot::integrity`], an error event) and does not stop the others.
    ///
    /// This is a read-only view (`keyrotctl status` inspects a ring with it); only the
    /// ring's own [`KeyRing`](crate::KeyRing) and rotator install snapshots.
    pub fn build(ring: &Ring, policy: &Policy, sealer: &dyn Sealer, now: DateTime<Utc>) -> Result<Self, RefreshError> {
        Self::build_with_type(ring, policy, sealer, now, token::DEFAULT_TOKEN_TYPE)
    }

    /// [`Snapshot::build`] for a ring that signs tokens with header `typ` `token_type`
    /// (explicit typing, RFC 8725 §3.11, e.g. `at+jwt`).
    pub(crate) fn build_with_type(
        ring: &Ring,
        policy: &Policy,
        sealer: &dyn Sealer,
        now: DateTime<Utc>,
        token_type: &str,
    ) -> Result<Self, RefreshError> {
        let mut integrity = crate::integrity::check_ring(ring, sealer);
        if let crate::integrity::RingIntegrity::UnknownMasterKey(id) = &integrity.integrity {
            return Err(RefreshError::Seal {
                kid: MANIFEST.into(),
                source: SealError::UnknownMasterKey(id.clone()),
            });
        }
        let candidates: Vec<&KeyRecord> = ring.published().filter(|k| integrity.trusts(&k.kid)).collect();
        let mut public = Verifiers::parse(candidates.iter().copied(), token_type)?;
        let mut signer = None;
        for k in candidates
            .iter()
            .filter(|k| k.state == KeyState::Active && k.alg.is_signing())
        {
            let header = (k.alg.name_with(policy.eddsa_name()), token_type);
            if let Some(s) = Self::admit_active(ring, k, sealer, header, &mut integrity)? {
                signer = Some(Arc::new(s));
            }
        }
        let symmetric = Self::open_symmetric(ring, policy, &candidates, sealer, &mut integrity)?;
        // An Active row that cannot sign is now reported as tampered: it does not verify.
        public.retain(|kid| integrity.trusts(kid));
        if !integrity.is_intact() {
            tracing::error!(
                ring = %ring.name,
                generation = ring.generation,
                integrity = %integrity.summary(),
                "key ring fails its integrity check: the rows named never verify"
            );
        }
        let (trusted_keys, jwks) = trusted_rows(ring, policy, |kid| integrity.trusts(kid));
        let keys = Self::statuses(ring, &integrity.tampered);
        Ok(Self {
            ring: ring.name.clone(),
            generation: ring.generation,
            signer,
            symmetric,
            public,
            jwks,
            trusted_keys,
            keys,
            integrity,
            loaded_at: now,
        })
    }

    /// The Active key's signer, or `None` when its row cannot sign (it is then reported
    /// as tampered and neither signs nor verifies; the rest of the ring serves). A master
    /// key this process lacks is a configuration error: the whole build fails closed.
    pub(super) fn admit_active(
        ring: &Ring,
        k: &KeyRecord,
        sealer: &dyn Sealer,
        header: (&str, &str),
        integrity: &mut IntegrityReport,
    ) -> Result<Option<ActiveSigner>, RefreshError> {
        let reason = match Self::active_signer(ring, k, sealer, header) {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) => "the public key does not match the private key the row holds".to_owned(),
            Err(
                e @ RefreshError::Seal {
                    source: SealError::UnknownMasterKey(_),
                    ..
                },
            ) => return Err(e),
            Err(e) => format!("the private key cannot be used: {}", crate::ErrorChain(&e)),
        };
        integrity.add_tampered(TamperedKey {
            kid: k.kid.clone(),
            reason,
        });
        Ok(None)
    }

    /// A symmetric ring's keys: every trusted published row of a MAC or AEAD algorithm,
    /// unsealed. A row that does not open is reported as tampered and never used; a master
    /// key this process lacks fails the whole build, as for the Active signing key. `None`
    /// for a signing ring.
    fn open_symmetric(
        ring: &Ring,
        policy: &Policy,
        candidates: &[&KeyRecord],
        sealer: &dyn Sealer,
        integrity: &mut IntegrityReport,
    ) -> Result<Option<Arc<SymmetricKeys>>, RefreshError> {
        let kind = policy.algorithm().kind();
        if kind == KeyKind::Signing && candidates.iter().all(|k| k.alg.is_signing()) {
            return Ok(None);
        }
        let mut opened = Vec::new();
        for k in candidates.iter().filter(|k| !k.alg.is_signing()) {
            let reason = match (k.alg.kind() == kind, &k.sealed) {
                (false, _) => format!("a {} key in a ring of {kind} keys", k.alg.kind()),
                (true, None) => "the key has no sealed material".to_owned(),
                (true, Some(sealed)) => {
                    let ctx = SealContext {
                        ring: ring.name.as_str(),
                        kid: &k.kid,
                        alg: k.alg,
                    };
                    match sealer.open(sealed, &ctx) {
                        Ok(secret) if secret.len() == crate::symmetric::KEY_BYTES => {
                            opened.push((*k, secret));
                            continue;
                        }
                        Ok(_) => "the key has the wrong length".to_owned(),
                        Err(source @ SealError::UnknownMasterKey(_)) => {
                            return Err(RefreshError::Seal {
                                kid: k.kid.clone(),
                                source,
                            });
                        }
                        Err(e) => format!("the key cannot be opened: {e}"),
                    }
                }
            };
            integrity.add_tampered(TamperedKey {
                kid: k.kid.clone(),
                reason,
            });
        }
        Ok(Some(Arc::new(SymmetricKeys::new(&ring.name, kind, opened))))
    }

    /// Every row's public status, with the verdict of the integrity check on it.
    pub(crate) fn statuses(ring: &Ring, tampered: &[TamperedKey]) -> Vec<KeyStatus> {
        ring.keys
            .iter()
            .map(|k| {
                let mut st = KeyStatus::from(k);
                st.tampered = tampered.iter().find(|t| t.kid == k.kid).map(|t| t.reason.clone());
                st
            })
            .collect()
    }

    /// Unseals the Active key; `None` when its public half is not the stored public key.
    /// `header` is the `alg` name and the `typ` the signer writes.
    pub(super) fn active_signer(
        ring: &Ring,
        k: &KeyRecord,
        sealer: &dyn Sealer,
        (alg_name, token_type): (&str, &str),
    ) -> Result<Option<ActiveSigner>, RefreshError> {
        if let Some(reference) = &k.remote {
            // The manifest authenticated the reference and the public key; the backend's
            // key was checked against this public key when it entered the ring.
            if k.sealed.is_some() {
                return Ok(None);
            }
            return Ok(Some(ActiveSigner {
                kid: k.kid.clone(),
                header_b64: token::encode_header_named(alg_name, &k.kid, token_type),
                access_header_b64: token::encode_header_named(alg_name, &k.kid, crate::ACCESS_TOKEN_TYPE),
                alg: k.alg,
                key: SignerKey::Remote(reference.clone()),
            }));
        }
        let sealed = k.sealed.as_ref().ok_or_else(|| RefreshError::Key {
            kid: k.kid.clone(),
            source: KeyError::Invalid(crate::key::InvalidKey::NoPrivateMaterial),
        })?;
        let ctx = SealContext {
            ring: ring.name.as_str(),
            kid: &k.kid,
            alg: k.alg,
        };
        let bytes = sealer.open(sealed, &ctx).map_err(|source| RefreshError::Seal {
            kid: k.kid.clone(),
            source,
        })?;
        let pk = PrivateKey::from_secret_bytes(k.alg, &bytes).map_err(|source| RefreshError::Key {
            kid: k.kid.clone(),
            source,
        })?;
        let stored = k.public_key().map_err(|source| RefreshError::Key {
            kid: k.kid.clone(),
            source,
        })?;
        if pk.public_key().thumbprint() != stored.thumbprint() {
            return Ok(None);
        }
        Ok(Some(ActiveSigner {
            kid: k.kid.clone(),
            header_b64: token::encode_header_named(alg_name, &k.kid, token_type),
            access_header_b64: token::encode_header_named(alg_name, &k.kid, crate::ACCESS_TOKEN_TYPE),
            alg: k.alg,
            key: SignerKey::Local(pk.signing_key()),
        }))
    }

    /// Whether the ring is retired (tenant offboarded), as its authenticated manifest
    /// says: it has no key that signs or verifies, and never will again.
    pub fn is_retired(&self) -> bool {
        self.integrity.retired
    }

    /// The generation the snapshot's manifest authenticates (0 without one): what an
    /// instance never goes back from.
    pub fn authenticated_generation(&self) -> u64 {
        self.integrity.authenticated_generation().unwrap_or(0)
    }

    /// The verifying keys narrowed by `raw` ([`Snapshot::narrowed_by`]), and whether any
    /// changed.
    fn narrowed_verifiers(&self, raw: &Ring, now: DateTime<Utc>) -> (HashMap<String, Arc<VerifierEntry>>, bool) {
        let mut verifiers = HashMap::new();
        let mut changed = false;
        for (kid, entry) in &self.public.by_kid {
            let Some(row) = raw.key(kid) else {
                changed = true;
                continue;
            };
            if !row.state.is_published() {
                changed = true;
                continue;
            }
            let mut not_after = entry.not_after;
            if row.state == KeyState::Retiring {
                let end = row.expires_at.unwrap_or(now);
                if not_after.is_none_or(|n| end < n) {
                    not_after = Some(end);
                    changed = true;
                }
            }
            if not_after == entry.not_after {
                verifiers.insert(kid.clone(), entry.clone());
            } else {
                verifiers.insert(
                    kid.clone(),
                    Arc::new(VerifierEntry {
                        key: entry.key.clone(),
                        not_after,
                    }),
                );
            }
        }
        (verifiers, changed)
    }

    /// This snapshot with every change that can only *remove* trust applied from `raw`, a
    /// newer stored state that could not be accepted (it fails authentication, or goes
    /// back to an older authenticated generation): keys whose stored row is gone or no
    /// longer published stop verifying, a Retiring key's window only shrinks, and the
    /// signer stops unless its stored row is still the Active one. Nothing is added. So
    /// a revocation reaches an instance even while someone corrupts the manifest. `None`
    /// when nothing would change.
    pub fn narrowed_by(&self, raw: &Ring, policy: &Policy, now: DateTime<Utc>) -> Option<Snapshot> {
        let (verifiers, mut changed) = self.narrowed_verifiers(raw, now);
        let signer = self
            .signer
            .as_ref()
            .filter(|s| raw.key(&s.kid).is_some_and(|r| r.state == KeyState::Active) && verifiers.contains_key(&s.kid))
            .cloned();
        if signer.is_none() && self.signer.is_some() {
            changed = true;
        }
        let symmetric = self.symmetric.as_ref().map(|keys| match keys.narrowed_by(raw, now) {
            Some(narrowed) => {
                changed = true;
                Arc::new(narrowed)
            }
            None => keys.clone(),
        });
        if !changed {
            return None;
        }
        let trusted_keys: Vec<KeyRecord> = self
            .trusted_keys
            .iter()
            .filter(|k| !k.state.is_published() || verifiers.contains_key(&k.kid))
            .cloned()
            .collect();
        let ring = Ring {
            name: self.ring.clone(),
            generation: self.generation,
            keys: trusted_keys.clone(),
            manifest: None,
        };
        let known_headers = self
            .public
            .known_headers
            .iter()
            .filter(|(_, kid)| verifiers.contains_key(*kid))
            .map(|(h, kid)| (h.clone(), kid.clone()))
            .collect();
        Some(Snapshot {
            ring: self.ring.clone(),
            generation: self.generation,
            signer,
            symmetric,
            public: Verifiers {
                by_kid: verifiers,
                known_headers,
                token_type: self.public.token_type.clone(),
            },
            trusted_keys,
            jwks: Jwks::render(&ring, policy),
            keys: self.keys.clone(),
            integrity: self.integrity.clone(),
            loaded_at: now,
        })
    }

    /// The result of the integrity check this snapshot was built with.
    pub fn integrity(&self) -> &IntegrityReport {
        &self.integrity
    }

    /// The generation this snapshot shows.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Active kid (of a signing, MAC or AEAD ring).
    pub fn active_kid(&self) -> Option<&str> {
        match (&self.signer, &self.symmetric) {
            (Some(s), _) => Some(s.kid.as_str()),
            (None, Some(keys)) => keys.active().ok().map(|k| k.kid.as_str()),
            (None, None) => None,
        }
    }

    /// The JWKS.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// Every key's public facts.
    pub fn keys(&self) -> &[KeyStatus] {
        &self.keys
    }

    /// Whether `kid` is one of the snapshot's verifying keys (published and authentic),
    /// whatever its validity window; [`Snapshot::verifies_at`] also applies the window.
    pub fn verifies(&self, kid: &str) -> bool {
        self.public.contains(kid)
    }

    /// Whether a token of `kid` verifies at `at`: a verifying key, and a Retiring key
    /// only before its `expires_at`.
    pub fn verifies_at(&self, kid: &str, at: DateTime<Utc>) -> bool {
        self.public.by_kid.get(kid).is_some_and(|e| e.check(at).is_ok())
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> DateTime<Utc> {
        self.loaded_at
    }
}
