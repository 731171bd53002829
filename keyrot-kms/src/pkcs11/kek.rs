//! The KEK on the token: found by label (and id), checked fit (AES-256, non-extractable,
//! sensitive), created when missing, and used for AES-GCM.

use super::token::{Fail, Op, Place};
use super::uri::ObjectRef;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyrot_core::SecretBytes;
use keyrot_core::custody::CustodyError;
use std::collections::HashMap;

/// The cache of validated keys: handle and `CKA_ID` by label and id.
pub(crate) type Handles = HashMap<ObjectRef, (ObjectHandle, Vec<u8>)>;

/// Blob format version 1: `0x01 || IV (12 bytes) || ciphertext || tag (16 bytes)`.
pub(crate) const VERSION: u8 = 1;
pub(crate) const IV_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
const TAG_BITS: u64 = 128;
/// AES-256.
const KEY_LEN: u64 = 32;

/// What the key must allow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Wrap and unwrap: the configured KEK.
    Both,
    /// Unwrap only: an older KEK a row names (an operator may retire it by clearing
    /// `CKA_ENCRYPT`).
    Decrypt,
}

fn template(obj: &ObjectRef) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(obj.label.as_bytes().to_vec()),
    ];
    if let Some(id) = &obj.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

/// The handle and `CKA_ID` of the KEK `obj`, checked fit; `None` when the token holds no
/// such key.
pub(crate) fn find(op: &mut Op<'_>, obj: &ObjectRef, usage: Use) -> Result<Option<(ObjectHandle, Vec<u8>)>, Fail> {
    if let Some(found) = op.handles.get(obj) {
        return Ok(Some(found.clone()));
    }
    let (session, place) = (op.session, op.place);
    let found = session
        .find_objects(&template(obj))
        .map_err(|e| Fail::Ck(e, "C_FindObjects"))?;
    let handle = match found.as_slice() {
        [] if !op.logged_in()? => return Err(Fail::LoggedOut),
        [] => return op.ensure_present().map(|()| None),
        [h] => *h,
        more => {
            return Err(CustodyError::Config(format!(
                "{}: {} secret keys are labelled {:?}: give the KEK a unique label, or add id= to the URI",
                place.location,
                more.len(),
                obj.label
            ))
            .into());
        }
    };
    let id = check_fit(session, handle, obj, usage, place)?;
    op.handles.insert(obj.clone(), (handle, id.clone()));
    Ok(Some((handle, id)))
}

/// Refuses a key that is not AES-256, may leave the token, or may not be used as needed.
/// Returns its `CKA_ID`.
fn check_fit(
    session: &Session,
    handle: ObjectHandle,
    obj: &ObjectRef,
    usage: Use,
    place: &Place<'_>,
) -> Result<Vec<u8>, Fail> {
    use AttributeType as T;
    let wanted = [
        T::KeyType,
        T::ValueLen,
        T::Extractable,
        T::Sensitive,
        T::Encrypt,
        T::Decrypt,
        T::Id,
    ];
    let attrs = session
        .get_attributes(handle, &wanted)
        .map_err(|e| Fail::Ck(e, "C_GetAttributeValue"))?;
    let (mut aes, mut len, mut extractable, mut sensitive) = (false, 0u64, true, false);
    let (mut encrypt, mut decrypt, mut id) = (false, false, Vec::new());
    for a in attrs {
        match a {
            Attribute::KeyType(k) => aes = k == KeyType::AES,
            Attribute::ValueLen(n) => len = n.into(),
            Attribute::Extractable(b) => extractable = b,
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Encrypt(b) => encrypt = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Id(v) => id = v,
            _ => {}
        }
    }
    let unfit = |why: &str| {
        Fail::Custody(CustodyError::Config(format!(
            "{}: the key labelled {:?} {why}",
            place.location, obj.label
        )))
    };
    if !aes || len != KEY_LEN {
        return Err(unfit("is not an AES-256 key (CKA_KEY_TYPE=CKK_AES, CKA_VALUE_LEN=32)"));
    }
    if extractable {
        return Err(unfit(
            "is extractable (CKA_EXTRACTABLE=true): its value can leave the HSM, so it cannot guard master keys; \
             create a non-extractable key under a new label and point object= at it",
        ));
    }
    if !sensitive {
        return Err(unfit(
            "is not sensitive (CKA_SENSITIVE=false): its value can be read off the token",
        ));
    }
    if !decrypt || (usage == Use::Both && !encrypt) {
        return Err(unfit("may not encrypt and decrypt (CKA_ENCRYPT, CKA_DECRYPT)"));
    }
    Ok(id)
}

/// Creates the KEK `obj` on the token: AES-256, a token object, private, sensitive,
/// non-extractable, for encryption and decryption only. Its `CKA_ID` is the URI's id, or
/// 8 random bytes so that a key made again under the same label has another name.
pub(crate) fn create(session: &Session, obj: &ObjectRef, place: &Place<'_>) -> Result<ObjectHandle, Fail> {
    let id = match &obj.id {
        Some(id) => id.clone(),
        None => random::<8>(place)?.to_vec(),
    };
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(KEY_LEN.into()),
        Attribute::Label(obj.label.as_bytes().to_vec()),
        Attribute::Id(id),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| Fail::Ck(e, "C_GenerateKey"))
}

pub(crate) fn random<const N: usize>(place: &Place<'_>) -> Result<[u8; N], CustodyError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| place.unavailable("the system random number generator failed"))?;
    Ok(out)
}

/// AES-GCM under `key` with `iv` and `aad`: ciphertext || tag.
pub(crate) fn encrypt(
    session: &Session,
    key: ObjectHandle,
    iv: [u8; IV_LEN],
    aad: &[u8],
    plain: &SecretBytes,
) -> Result<Vec<u8>, Fail> {
    let mut iv = iv;
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| Fail::Ck(e, "AES-GCM parameters"))?;
    session
        .encrypt(&Mechanism::AesGcm(params), key, plain.expose())
        .map_err(|e| Fail::Ck(e, "C_Encrypt"))
}

/// `CKR_AEAD_DECRYPT_FAILED` (PKCS#11 3.0), which cryptoki does not name.
const CKR_AEAD_DECRYPT_FAILED: u64 = 0x35;

/// The plaintext of ciphertext || tag, or `None` when the tag does not verify.
pub(crate) fn decrypt(
    op: &Op<'_>,
    key: ObjectHandle,
    iv: [u8; IV_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Option<SecretBytes>, Fail> {
    let mut iv = iv;
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(|e| Fail::Ck(e, "AES-GCM parameters"))?;
    match op.session.decrypt(&Mechanism::AesGcm(params), key, sealed) {
        Ok(plain) => Ok(Some(SecretBytes::new(plain))),
        Err(CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange,
            _,
        )) => Ok(None),
        Err(CkError::Pkcs11(RvError::UnknownErrorCode(CKR_AEAD_DECRYPT_FAILED), _)) => Ok(None),
        // SoftHSM2 (and other modules) answer a tag that does not verify with
        // CKR_GENERAL_ERROR: it is the tag if the token still answers.
        Err(CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)) => {
            op.ensure_present()?;
            Ok(None)
        }
        Err(e) => Err(Fail::Ck(e, "C_Decrypt")),
    }
}
