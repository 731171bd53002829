//! PKCS#11 custody: the KEK is a non-extractable AES-256 key on a token of any HSM
//! (SoftHSM2, AWS CloudHSM, YubiHSM, Luna, the cloud HSMs), used through the `cryptoki`
//! crate. [`Pkcs11Signing`] keeps a ring's signing keys on a token the same way.
//!
//! # Configuration
//!
//! An RFC 7512 URI:
//!
//! ```text
//! pkcs11:token=LABEL;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
//! ```
//!
//! `token=` is the token's label (add `serial=` when two tokens share it), `object=` the
//! KEK's label (add `id=%01%02` when two keys share it). The user PIN is the first line of
//! the `pin-source` file; `pin-value=PIN` is accepted but logged as a warning (the URI
//! then carries a secret; the PIN itself is never logged).
//!
//! # The KEK
//!
//! An AES-256 secret key with `CKA_EXTRACTABLE=false` and `CKA_SENSITIVE=true`; any other
//! key is refused ([`CustodyError::Config`]). [`KeyCustody::ensure_kek`] creates it when
//! missing (a token object, private, sensitive, non-extractable, encrypt/decrypt only);
//! an operator may instead run
//! `pkcs11-tool --module M --login --keygen --key-type AES:32 --label LABEL --sensitive`.
//!
//! # Blob format
//!
//! AES-GCM (`CKM_AES_GCM`), a random 96-bit IV from the operating system, a 128-bit tag,
//! and as associated data [`binding`]`(master_key_id, kek)`, where `kek` is the name the
//! wrap records in [`WrappedKey::kek`]:
//!
//! ```text
//! blob = 0x01 (version) || IV (12 bytes) || ciphertext (as long as the key) || tag (16 bytes)
//! kek  = pkcs11:token=LABEL;object=LABEL[;id=%XX…]   (the key's CKA_ID when it has one)
//! ```
//!
//! The name holds neither the module path nor the PIN. A 32-byte master key makes a
//! 61-byte blob.
//!
//! # Rotation
//!
//! A new KEK is a new object: create it under a new label, point `object=` at it, and
//! `rewrap` each stored master key (unwrapped with the object its row names, wrapped with
//! the configured one). Delete the old object once no row names it.
//!
//! # Sessions
//!
//! The module is loaded and initialised once per process, and each token logged in once
//! (custodies on the same token, [`Pkcs11Custody`] and [`Pkcs11Signing`] alike, share one
//! session and must know the same PIN). Calls run in `spawn_blocking`, one at a time per
//! token. A session the HSM closed, or a login another component undid, is logged in
//! again once per call; if that fails the call is [`CustodyError::Unavailable`].

mod kek;
mod signing;
mod token;
mod uri;

pub use signing::Pkcs11Signing;

use async_trait::async_trait;
use cryptoki::object::ObjectHandle;
use kek::Use;
use keyrot_core::SecretBytes;
use keyrot_core::custody::{CustodyError, KeyCustody, WrappedKey, binding};
use std::fmt;
use std::sync::Arc;
use token::{Fail, Op, Place, Token};
use uri::{ObjectRef, PinSource};

/// Master keys wrapped by a non-extractable AES-256 key on a PKCS#11 token. See the
/// [module docs](self) for the URI, the blob format and rotation.
pub struct Pkcs11Custody {
    token: Arc<Token>,
    object: ObjectRef,
    /// The URI, secrets redacted.
    location: Arc<str>,
}

impl fmt::Debug for Pkcs11Custody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Custody")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Custody {
    /// Loads the module, finds the token by label and logs in. Does not require the KEK
    /// to exist ([`KeyCustody::check`] does; [`KeyCustody::ensure_kek`] creates it).
    ///
    /// A URI that cannot work (no `module-path`, no PIN, an unreadable PIN file) is
    /// [`CustodyError::Config`]; a module that does not load or a token that is not present
    /// is [`CustodyError::Unavailable`]; a wrong PIN is [`CustodyError::Denied`].
    pub async fn open(uri: &str) -> Result<Self, CustodyError> {
        let (at, object) = uri::parse(uri)?.into_parts();
        let (token, location) = open_token(uri, at).await?;
        Ok(Self {
            token,
            object,
            location,
        })
    }

    fn place(&self) -> Place<'_> {
        Place {
            location: &self.location,
        }
    }

    /// Runs `op` on the token's session, off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnMut(&mut Op<'_>) -> Result<T, Fail> + Send + 'static,
    ) -> Result<T, CustodyError> {
        run(&self.token, &self.location, op).await
    }

    /// The configured KEK and its recorded name, or `Denied` saying how to create it.
    fn configured(op: &mut Op<'_>, token: &str, object: &ObjectRef) -> Result<(ObjectHandle, String), Fail> {
        let place = op.place;
        match kek::find(op, object, Use::Both)? {
            Some((handle, id)) => Ok((
                handle,
                uri::kek_name(
                    token,
                    &ObjectRef {
                        label: object.label.clone(),
                        id: Some(id),
                    },
                ),
            )),
            None => Err(place
                .denied(format!(
                    "no AES key labelled {:?} on token {token:?}: create it with `keyrotctl master-key create` \
                     or `pkcs11-tool --keygen --key-type AES:32 --label {} --sensitive` (non-extractable)",
                    object.label, object.label
                ))
                .into()),
        }
    }
}

/// Reads the PIN `at` names, loads the module, finds the token and logs in (or joins this
/// process's login to it). Returns the token and the URI with its secrets redacted.
///
/// A URI that cannot work (no PIN, an unreadable PIN file) is [`CustodyError::Config`]; a
/// module that does not load or a token that is not present is
/// [`CustodyError::Unavailable`]; a wrong PIN is [`CustodyError::Denied`].
async fn open_token(uri: &str, at: uri::TokenUri) -> Result<(Arc<Token>, Arc<str>), CustodyError> {
    let location: Arc<str> = crate::redact_uri(uri).into();
    let pin = match at.pin {
        PinSource::File(path) => read_pin(&path, &location).await?,
        PinSource::Value(pin) => {
            tracing::warn!(location = %location, "the PKCS#11 URI carries its PIN in pin-value: use pin-source=file:… so the PIN stays out of the configuration");
            pin
        }
        PinSource::Missing => {
            return Err(CustodyError::Config(format!(
                "{location}: no PIN: add pin-source=file:/path/to/a/file/holding/the/user/pin"
            )));
        }
    };
    let loc = Arc::clone(&location);
    let token = blocking(move || {
        let spec = token::TokenSpec {
            module: &at.module_path,
            label: &at.token,
            serial: at.serial.as_deref(),
            slot_id: at.slot_id,
            pin,
        };
        token::open(spec, &Place { location: &loc })
    })
    .await?;
    Ok((token, location))
}

/// Runs `op` on the token's session, off the async runtime.
async fn run<T: Send + 'static>(
    token: &Arc<Token>,
    location: &Arc<str>,
    op: impl FnMut(&mut Op<'_>) -> Result<T, Fail> + Send + 'static,
) -> Result<T, CustodyError> {
    let (token, location) = (Arc::clone(token), Arc::clone(location));
    blocking(move || token.run(&Place { location: &location }, op)).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CustodyError> + Send + 'static,
) -> Result<T, CustodyError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CustodyError::Config(format!("a PKCS#11 call panicked: {e}"))))
}

/// The PIN file's content without its trailing newline.
async fn read_pin(path: &std::path::Path, location: &str) -> Result<SecretBytes, CustodyError> {
    let bytes = tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || std::fs::read(path).map(SecretBytes::new)
    })
    .await
    .map_err(|e| CustodyError::Config(format!("{location}: reading the PIN file panicked: {e}")))?
    .map_err(|e| {
        CustodyError::Config(format!(
            "{location}: cannot read the PIN file {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    let pin = bytes.expose();
    let end = pin
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(CustodyError::Config(format!(
            "{location}: the PIN file {} is empty",
            path.display()
        )));
    }
    Ok(SecretBytes::from_slice(&pin[..end]))
}

/// The blob's IV and sealed part (ciphertext || tag); `None` when it is not a version-1 blob.
fn split_blob(blob: &[u8]) -> Option<([u8; kek::IV_LEN], &[u8])> {
    let (&version, rest) = blob.split_first()?;
    if version != kek::VERSION || rest.len() < kek::IV_LEN + kek::TAG_LEN {
        return None;
    }
    let (iv, sealed) = rest.split_at(kek::IV_LEN);
    Some((iv.try_into().ok()?, sealed))
}

#[async_trait]
impl KeyCustody for Pkcs11Custody {
    fn backend(&self) -> &'static str {
        token::BACKEND
    }

    fn location(&self) -> String {
        self.location.to_string()
    }

    async fn wrap(&self, master_key_id: &str, key: &SecretBytes) -> Result<WrappedKey, CustodyError> {
        let iv = kek::random::<{ kek::IV_LEN }>(&self.place())?;
        let (token, object, id, key) = (
            self.token.label.clone(),
            self.object.clone(),
            master_key_id.to_owned(),
            key.clone(),
        );
        self.run(move |op| {
            let (handle, kek) = Self::configured(op, &token, &object)?;
            let sealed = kek::encrypt(op.session, handle, iv, &binding(&id, &kek), &key)?;
            let mut blob = Vec::with_capacity(1 + iv.len() + sealed.len());
            blob.push(kek::VERSION);
            blob.extend_from_slice(&iv);
            blob.extend_from_slice(&sealed);
            Ok(WrappedKey { kek, blob })
        })
        .await
    }

    async fn unwrap(&self, master_key_id: &str, wrapped: &WrappedKey) -> Result<SecretBytes, CustodyError> {
        let refused = || CustodyError::Refused {
            id: master_key_id.to_owned(),
            kek: wrapped.kek.clone(),
        };
        let (row_token, object) = uri::parse_kek_name(&wrapped.kek).ok_or_else(refused)?;
        if row_token != self.token.label {
            return Err(self.place().denied(format!(
                "the master key {master_key_id:?} is wrapped under {}, on another token than {:?}: \
                 open that token to unwrap it",
                wrapped.kek, self.token.label
            )));
        }
        let (iv, sealed) = split_blob(&wrapped.blob).ok_or_else(refused)?;
        let (aad, sealed) = (binding(master_key_id, &wrapped.kek), sealed.to_vec());
        let (kek_name, id) = (wrapped.kek.clone(), master_key_id.to_owned());
        self.run(move |op| {
            let Some((handle, _)) = kek::find(op, &object, Use::Decrypt)? else {
                return Err(op
                    .place
                    .denied(format!(
                        "the master key {id:?} is wrapped under {kek_name}, which is not on the token \
                         (deleted before every master key was rewrapped?)"
                    ))
                    .into());
            };
            kek::decrypt(op, handle, iv, &aad, &sealed)?.ok_or_else(|| {
                Fail::Custody(CustodyError::Refused {
                    id: id.clone(),
                    kek: kek_name.clone(),
                })
            })
        })
        .await
    }

    /// Finds the KEK and uses it (one AES-GCM encryption of a probe): a handle cached by
    /// a token that went away would still be found.
    async fn check(&self) -> Result<(), CustodyError> {
        let iv = kek::random::<{ kek::IV_LEN }>(&self.place())?;
        let (token, object) = (self.token.label.clone(), self.object.clone());
        self.run(move |op| {
            let (handle, _) = Self::configured(op, &token, &object)?;
            let probe = SecretBytes::new(vec![0; 16]);
            kek::encrypt(op.session, handle, iv, b"keyrot custody probe", &probe).map(|_| ())
        })
        .await
    }

    async fn ensure_kek(&self) -> Result<bool, CustodyError> {
        let object = self.object.clone();
        self.run(move |op| {
            if kek::find(op, &object, Use::Both)?.is_some() {
                return Ok(false);
            }
            kek::create(op.session, &object, op.place)?;
            tracing::info!(location = op.place.location, label = %object.label, "created the PKCS#11 KEK (AES-256, non-extractable)");
            Ok(true)
        })
        .await
    }
}
