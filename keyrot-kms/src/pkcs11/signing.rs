//! Signing custody on a PKCS#11 token: [`Pkcs11Signing`], its keys made and used on the
//! token through the shared login of [`super::token`].

mod mechanism;
mod public;

use super::token::{Fail, Op, Place, Token};
use super::uri::{self, KeySel};
use async_trait::async_trait;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use keyrot_core::custody::{CustodyError, RemoteKey, SigningCustody};
use keyrot_core::{Algorithm, PublicKey, RsaBits};
use mechanism::{ED25519_NAME, ED25519_OID, Offered, Signer};
use public::Found;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The cache of checked private signing keys, by the key a reference names. Cleared with
/// the session; a stale handle is found again.
pub(crate) type SigningHandles = HashMap<KeySel, Found>;

/// Signing custody on a PKCS#11 token: a ring's private signing keys are key pairs
/// generated on the token, non-extractable and sensitive; keyrot keeps the reference and
/// the public key.
///
/// # Configuration
///
/// The master-key custody's RFC 7512 URI without `object=` (keys are created per kid):
///
/// ```text
/// pkcs11:token=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
/// ```
///
/// It shares the process's login to the token with every other custody on it (one login
/// per process and token, see the [module docs](crate::pkcs11)).
///
/// # Keys
///
/// [`SigningCustody::create`] runs `C_GenerateKeyPair`: the private key is a token object,
/// private, sensitive, non-extractable, for signing only; the public key a token object for
/// verifying. Both carry the name as `CKA_LABEL` and the same 16 random bytes as `CKA_ID`.
/// A key the token made extractable, readable or once-extractable is destroyed and
/// refused. The reference keyrot stores is `pkcs11:token=LABEL;id=%XX…` (no module path,
/// no PIN); `pkcs11:token=LABEL;object=LABEL` is accepted to bring an existing key.
///
/// | alg | key | signature |
/// |---|---|---|
/// | EdDSA | `CKK_EC_EDWARDS`, Ed25519 (`CKA_EC_PARAMS` = OID 1.3.101.112) | `CKM_EDDSA` over the message |
/// | ES256 / ES384 | `CKK_EC`, P-256 / P-384 | `CKM_ECDSA` over SHA-256 / SHA-384 of the message (`R‖S`) |
/// | RS256 | `CKK_RSA` | `CKM_SHA256_RSA_PKCS`, or `CKM_RSA_PKCS` over a DigestInfo |
/// | PS256 | `CKK_RSA` | `CKM_SHA256_RSA_PKCS_PSS`, or `CKM_RSA_PKCS_PSS` over SHA-256; MGF1-SHA-256, 32-byte salt |
///
/// The mechanisms are read once at [`Pkcs11Signing::open`] (`C_GetMechanismInfo`);
/// [`SigningCustody::supports`] answers from them, RSA modulus sizes included.
///
/// [`SigningCustody::disable`] clears `CKA_SIGN` (`false` when the token will not change it,
/// e.g. `CKA_MODIFIABLE=false`); [`SigningCustody::destroy`] destroys the private and the
/// public key. [`SigningCustody::list`] returns the references of every private key whose
/// label starts with the prefix.
///
/// # Errors
///
/// A token that stopped answering is [`CustodyError::Unavailable`]; a key the token does
/// not hold, a disabled key, a reference to another token or a refused PIN
/// [`CustodyError::Denied`]; an extractable or readable key, a key of another type than the
/// algorithm, a mechanism the token lacks [`CustodyError::Config`]. Messages name the URI
/// with its secrets redacted, never the PIN.
pub struct Pkcs11Signing {
    token: Arc<Token>,
    offered: Offered,
    /// The URI, secrets redacted.
    location: Arc<str>,
}

impl fmt::Debug for Pkcs11Signing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signing")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signing {
    /// Loads the module, finds the token by label, logs in (or joins this process's login)
    /// and reads which signing mechanisms the token offers.
    ///
    /// A URI that cannot work (no `module-path`, no PIN, an `object=`) is
    /// [`CustodyError::Config`]; a module that does not load or a token that is not present
    /// is [`CustodyError::Unavailable`]; a wrong PIN is [`CustodyError::Denied`].
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        let at = uri::parse_token(uri)?;
        let (token, location) = super::open_token(uri, at).await?;
        let (t, loc) = (Arc::clone(&token), Arc::clone(&location));
        let offered = super::blocking(move || t.mechanisms(&mechanism::WANTED, &Place { location: &loc })).await?;
        Ok(Self {
            token,
            offered: Offered::new(offered),
            location,
        })
    }

    /// Signs RSA over a digest made here (`CKM_RSA_PKCS` with a DigestInfo,
    /// `CKM_RSA_PKCS_PSS`) even when the token offers the hashing mechanisms: for tests of
    /// that path.
    #[doc(hidden)]
    pub fn with_local_hashing(mut self) -> Self {
        self.offered.local_hashing = true;
        self
    }

    fn place(&self) -> Place<'_> {
        Place {
            location: &self.location,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        op: impl FnMut(&mut Op<'_>) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, CustodyError> {
        super::run(&self.token, &self.location, op).await
    }

    /// The key `reference` names on this token: another token is `Denied`, a string that
    /// is not a reference `Config`.
    fn selector(&self, reference: &str) -> Result<KeySel, CustodyError> {
        let Some((token, sel)) = uri::parse_key_ref(reference) else {
            return Err(CustodyError::Config(format!(
                "{}: {} is not a PKCS#11 key reference: use pkcs11:token=LABEL;id=%XX… or pkcs11:token=LABEL;object=LABEL",
                self.location,
                crate::redact_uri(reference)
            )));
        };
        if token != self.token.label {
            return Err(self.place().denied(format!(
                "the key {reference} is on another token than {:?}: open that token to use it",
                self.token.label
            )));
        }
        Ok(sel)
    }
}

/// A PKCS#11 failure of a key operation: a mechanism the token refuses is a configuration
/// error; a generic failure is `Unavailable` when the token stopped answering.
fn ck(op: &Op<'_>, e: CkError, what: &'static str) -> Fail {
    match e {
        CkError::Pkcs11(
            rv @ (RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::FunctionNotSupported
            | RvError::KeyTypeInconsistent
            | RvError::KeySizeRange
            | RvError::CurveNotSupported
            | RvError::TemplateInconsistent
            | RvError::AttributeValueInvalid),
            _,
        ) => CustodyError::Config(format!(
            "{}: {what}: the token refused the mechanism, the key or its parameters ({rv})",
            op.place.location
        ))
        .into(),
        CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed | RvError::DeviceError, _) => {
            match op.ensure_present() {
                Err(gone) => gone,
                Ok(()) => Fail::Ck(e, what),
            }
        }
        e => Fail::Ck(e, what),
    }
}

fn template(class: ObjectClass, sel: &KeySel) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class), Attribute::Token(true)];
    if let Some(id) = &sel.id {
        t.push(Attribute::Id(id.clone()));
    }
    if let Some(label) = &sel.label {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    t
}

/// The objects of `class` `sel` names. An empty answer is checked: a session that lost
/// its login, or a token that stopped answering, is not "no such key".
fn find_all(op: &Op<'_>, class: ObjectClass, sel: &KeySel) -> Result<Vec<ObjectHandle>, Fail> {
    let found = op
        .session
        .find_objects(&template(class, sel))
        .map_err(|e| Fail::Ck(e, "C_FindObjects"))?;
    if found.is_empty() {
        if !op.logged_in()? {
            return Err(Fail::LoggedOut);
        }
        op.ensure_present()?;
    }
    Ok(found)
}

/// At most one private key: two that match a reference are a configuration error.
fn at_most_one(op: &Op<'_>, found: &[ObjectHandle], reference: &str) -> Result<Option<ObjectHandle>, Fail> {
    match found {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        more => Err(CustodyError::Config(format!(
            "{}: {} private keys match {reference}: give each key a unique CKA_ID",
            op.place.location,
            more.len()
        ))
        .into()),
    }
}

/// The private key `sel` names, checked fit (non-extractable, sensitive), or `Denied`
/// when the token holds none. From the cache unless `fresh`.
fn private_key(op: &mut Op<'_>, sel: &KeySel, reference: &str, fresh: bool) -> Result<Found, Fail> {
    if !fresh && let Some(found) = op.signing.get(sel) {
        return Ok(found.clone());
    }
    let found = find_all(op, ObjectClass::PRIVATE_KEY, sel)?;
    let Some(handle) = at_most_one(op, &found, reference)? else {
        return Err(op
            .place
            .denied(format!(
                "the token holds no private key {reference}: it was destroyed, or is on another token"
            ))
            .into());
    };
    let (found, guard) = public::inspect(op.session, handle)?;
    guard.check(op.place, reference, false)?;
    op.signing.insert(sel.clone(), found.clone());
    Ok(found)
}

/// `Config` unless the key is of `alg`'s type.
fn fits(op: &Op<'_>, found: &Found, alg: Algorithm, reference: &str) -> Result<(), Fail> {
    if found.kind.fits(alg) {
        return Ok(());
    }
    Err(CustodyError::Config(format!(
        "{}: the key {reference} is {}, not a key for {alg}",
        op.place.location,
        found.kind.describe()
    ))
    .into())
}

/// Generates a key pair; Ed25519 with the curve's OID, or its name for modules that want
/// that form.
fn generate(
    op: &Op<'_>,
    alg: Algorithm,
    rsa_bits: RsaBits,
    label: &str,
    id: &[u8],
) -> Result<(ObjectHandle, ObjectHandle), Fail> {
    let (mechanism, public, private) = mechanism::keygen_templates(alg, rsa_bits, label, id, ED25519_OID);
    match op.session.generate_key_pair(&mechanism, &public, &private) {
        Err(CkError::Pkcs11(
            RvError::CurveNotSupported
            | RvError::AttributeValueInvalid
            | RvError::TemplateInconsistent
            | RvError::DomainParamsInvalid,
            _,
        )) if alg == Algorithm::EdDsa => {
            let (mechanism, public, private) = mechanism::keygen_templates(alg, rsa_bits, label, id, ED25519_NAME);
            op.session
                .generate_key_pair(&mechanism, &public, &private)
                .map_err(|e| ck(op, e, "C_GenerateKeyPair"))
        }
        other => other.map_err(|e| ck(op, e, "C_GenerateKeyPair")),
    }
}

/// Creates a key pair labelled `label` with a fresh random `CKA_ID`, checks it and reads
/// its public key; a key that fails a check is destroyed.
fn create_pair(op: &mut Op<'_>, alg: Algorithm, rsa_bits: RsaBits, label: &str) -> Result<(Found, PublicKey), Fail> {
    let id = super::kek::random::<16>(op.place)?;
    let (public_handle, private_handle) = generate(op, alg, rsa_bits, label, &id)?;
    let what = format!("{label:?}");
    let checked = public::inspect(op.session, private_handle).and_then(|(found, guard)| {
        guard.check(op.place, &what, true)?;
        fits(op, &found, alg, &what)?;
        let public = public::read(op.session, &found, alg, op.place, &what)?;
        Ok((found, public))
    });
    if checked.is_err() {
        for handle in [private_handle, public_handle] {
            if let Err(e) = op.session.destroy_object(handle) {
                tracing::warn!(location = op.place.location, key = %what, "could not destroy a refused key: {e}");
            }
        }
    }
    checked
}

/// Clears `CKA_SIGN` of `handle`: `false` when the token does not let it change.
fn clear_sign(op: &Op<'_>, handle: ObjectHandle) -> Result<bool, Fail> {
    match op.session.update_attributes(handle, &[Attribute::Sign(false)]) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::AttributeReadOnly | RvError::ActionProhibited, _)) => return Ok(false),
        Err(e) => return Err(ck(op, e, "C_SetAttributeValue")),
    }
    // A token that accepted the call but kept the flag did not disable the key.
    let attrs = op
        .session
        .get_attributes(handle, &[AttributeType::Sign])
        .map_err(|e| ck(op, e, "C_GetAttributeValue"))?;
    Ok(matches!(attrs.as_slice(), [Attribute::Sign(false)]))
}

/// The private and the public key objects `sel` names (the public key by the private
/// key's `CKA_ID` when the reference names only a label).
fn key_objects(op: &Op<'_>, sel: &KeySel, reference: &str) -> Result<Vec<ObjectHandle>, Fail> {
    let private = find_all(op, ObjectClass::PRIVATE_KEY, sel)?;
    let private = at_most_one(op, &private, reference)?;
    let mut public_sel = sel.clone();
    if public_sel.id.is_none()
        && let Some(handle) = private
    {
        let (found, _) = public::inspect(op.session, handle)?;
        public_sel.id = Some(found.id).filter(|id| !id.is_empty());
    }
    let mut objects = op
        .session
        .find_objects(&template(ObjectClass::PUBLIC_KEY, &public_sel))
        .map_err(|e| Fail::Ck(e, "C_FindObjects"))?;
    objects.extend(private);
    Ok(objects)
}

/// The references of the token's private keys whose label starts with `prefix`.
fn list_keys(op: &Op<'_>, token: &str, prefix: &str) -> Result<Vec<String>, Fail> {
    let all = op
        .session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Token(true)])
        .map_err(|e| Fail::Ck(e, "C_FindObjects"))?;
    if all.is_empty() {
        if !op.logged_in()? {
            return Err(Fail::LoggedOut);
        }
        op.ensure_present()?;
    }
    let mut out = Vec::new();
    for handle in all {
        let attrs = op
            .session
            .get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
            .map_err(|e| ck(op, e, "C_GetAttributeValue"))?;
        let (mut label, mut id) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Label(v) => label = v,
                Attribute::Id(v) => id = v,
                _ => {}
            }
        }
        let Ok(label) = String::from_utf8(label) else { continue };
        if !label.starts_with(prefix) {
            continue;
        }
        let sel = if id.is_empty() {
            KeySel {
                label: Some(label),
                id: None,
            }
        } else {
            KeySel {
                label: None,
                id: Some(id),
            }
        };
        out.push(uri::key_ref(token, &sel));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[async_trait]
impl SigningCustody for Pkcs11Signing {
    fn backend(&self) -> &'static str {
        super::token::BACKEND
    }

    fn location(&self) -> String {
        self.location.to_string()
    }

    fn supports(&self, alg: Algorithm, rsa_bits: RsaBits) -> Result<(), CustodyError> {
        self.offered.supports(alg, rsa_bits, &self.location).map(|_| ())
    }

    async fn create(&self, name: &str, alg: Algorithm, rsa_bits: RsaBits) -> Result<RemoteKey, CustodyError> {
        self.offered.supports(alg, rsa_bits, &self.location)?;
        let (token, label) = (self.token.label.clone(), name.to_owned());
        self.run(move |op| {
            let (found, public) = create_pair(op, alg, rsa_bits, &label)?;
            let sel = KeySel {
                label: None,
                id: Some(found.id.clone()),
            };
            let reference = uri::key_ref(&token, &sel);
            op.signing.insert(sel, found);
            tracing::info!(location = op.place.location, key = %reference, %alg, "created a PKCS#11 signing key (non-extractable)");
            Ok(RemoteKey { reference, public })
        })
        .await
    }

    async fn find(&self, reference: &str, alg: Algorithm) -> Result<RemoteKey, CustodyError> {
        let sel = self.selector(reference)?;
        let (token, reference) = (self.token.label.clone(), reference.to_owned());
        self.run(move |op| {
            let found = private_key(op, &sel, &reference, true)?;
            fits(op, &found, alg, &reference)?;
            if !found.sign {
                return Err(op
                    .place
                    .denied(format!(
                        "the key {reference} may not sign (CKA_SIGN=false): it was disabled"
                    ))
                    .into());
            }
            let public = public::read(op.session, &found, alg, op.place, &reference)?;
            let canonical = if found.id.is_empty() {
                sel.clone()
            } else {
                KeySel {
                    label: None,
                    id: Some(found.id.clone()),
                }
            };
            Ok(RemoteKey {
                reference: uri::key_ref(&token, &canonical),
                public,
            })
        })
        .await
    }

    async fn sign(&self, reference: &str, alg: Algorithm, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let signer: Signer = self.offered.signer(alg, &self.location)?;
        let sel = self.selector(reference)?;
        let (data, reference) = (signer.data(message), reference.to_owned());
        self.run(move |op| {
            let found = private_key(op, &sel, &reference, false)?;
            fits(op, &found, alg, &reference)?;
            let signature = op
                .session
                .sign(&signer.mechanism(), found.handle, &data)
                .map_err(|e| ck(op, e, "C_Sign"))?;
            match signer.fixed_len() {
                Some(len) if signature.len() != len => Err(CustodyError::Config(format!(
                    "{}: the token returned a {}-byte {alg} signature with {reference}, not {len} bytes",
                    op.place.location,
                    signature.len()
                ))
                .into()),
                _ => Ok(signature),
            }
        })
        .await
    }

    async fn disable(&self, reference: &str) -> Result<bool, CustodyError> {
        let sel = self.selector(reference)?;
        let reference = reference.to_owned();
        self.run(move |op| {
            op.signing.remove(&sel);
            let found = find_all(op, ObjectClass::PRIVATE_KEY, &sel)?;
            let Some(handle) = at_most_one(op, &found, &reference)? else {
                tracing::warn!(location = op.place.location, key = %reference, "disabling a key the token no longer holds");
                return Ok(true);
            };
            op.signing.retain(|_, f| f.handle != handle);
            clear_sign(op, handle)
        })
        .await
    }

    async fn destroy(&self, reference: &str) -> Result<(), CustodyError> {
        let sel = self.selector(reference)?;
        let reference = reference.to_owned();
        self.run(move |op| {
            let objects = key_objects(op, &sel, &reference)?;
            op.signing.remove(&sel);
            op.signing.retain(|_, f| !objects.contains(&f.handle));
            for handle in objects {
                match op.session.destroy_object(handle) {
                    Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                    Err(e) => return Err(ck(op, e, "C_DestroyObject")),
                }
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, CustodyError> {
        let (token, prefix) = (self.token.label.clone(), prefix.to_owned());
        self.run(move |op| list_keys(op, &token, &prefix)).await
    }

    /// Asks the token (`C_GetTokenInfo`) and the session (`C_GetSessionInfo`): a session
    /// that lost its login is logged in again.
    async fn check(&self) -> Result<(), CustodyError> {
        self.run(|op| {
            op.ensure_present()?;
            if op.logged_in()? { Ok(()) } else { Err(Fail::LoggedOut) }
        })
        .await
    }
}
