//! The RFC 7512 `pkcs11:` URI of a KEK, and the name a wrap records for its KEK.
//!
//! `pkcs11:token=LABEL;object=LABEL[;id=%01%02][;serial=…][;slot-id=N][;type=secret-key]`
//! `?module-path=/path/to/module.so&pin-source=file:/path/to/pin` (or `pin-value=…`).
//! Values are percent-decoded (RFC 7512 §2.3); an attribute this backend does not know is
//! refused (a misspelt `objet=` must not be ignored), except vendor attributes (`x-…`).

use keyrot_core::SecretBytes;
use keyrot_core::custody::CustodyError;
use std::path::PathBuf;

/// Where the user PIN comes from.
pub(crate) enum PinSource {
    /// `pin-source=file:/path` (or a plain path): the file's first line.
    File(PathBuf),
    /// `pin-value=…` in the URI itself (accepted, warned about).
    Value(SecretBytes),
    /// No PIN given.
    Missing,
}

/// A PKCS#11 object on a token: what a [`KekName`] names and a URI configures.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ObjectRef {
    /// `CKA_LABEL` of the key.
    pub label: String,
    /// `CKA_ID` of the key, when the URI or the row names one.
    pub id: Option<Vec<u8>>,
}

/// Where a token is and how to log in: what every `pkcs11:` URI configures. Deliberately
/// not `Debug`: it may hold a PIN.
pub(crate) struct TokenUri {
    /// `token=`: the token's label.
    pub token: String,
    /// `serial=`: the token's serial number, to tell tokens with one label apart.
    pub serial: Option<String>,
    /// `slot-id=`.
    pub slot_id: Option<u64>,
    /// `module-path=`: the PKCS#11 library.
    pub module_path: PathBuf,
    /// `pin-source=` or `pin-value=`.
    pub pin: PinSource,
}

/// A parsed `pkcs11:` master-key custody URI. Deliberately not `Debug`: it may hold a PIN.
pub(crate) struct Pkcs11Uri {
    /// `token=`: the token's label.
    pub token: String,
    /// `serial=`: the token's serial number, to tell tokens with one label apart.
    pub serial: Option<String>,
    /// `slot-id=`.
    pub slot_id: Option<u64>,
    /// `object=` and `id=`: the KEK.
    pub object: ObjectRef,
    /// `module-path=`: the PKCS#11 library.
    pub module_path: PathBuf,
    /// `pin-source=` or `pin-value=`.
    pub pin: PinSource,
}

impl Pkcs11Uri {
    /// The token part and the KEK.
    pub fn into_parts(self) -> (TokenUri, ObjectRef) {
        let at = TokenUri {
            token: self.token,
            serial: self.serial,
            slot_id: self.slot_id,
            module_path: self.module_path,
            pin: self.pin,
        };
        (at, self.object)
    }
}

/// What a URI configures: the KEK of a master-key custody, or only the token of a signing
/// custody (which creates one key per kid).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Kek,
    Signing,
}

fn config(uri: &str, why: impl std::fmt::Display) -> CustodyError {
    CustodyError::Config(format!("{}: {why}", crate::redact_uri(uri)))
}

/// Parses a master-key custody URI (`object=` required). Every error names the URI with
/// its secrets redacted.
pub(crate) fn parse(uri: &str) -> Result<Pkcs11Uri, CustodyError> {
    let (at, label, id) = parse_any(uri, Purpose::Kek)?;
    let label = label.ok_or_else(|| config(uri, "object=LABEL (the KEK's label) is missing"))?;
    Ok(Pkcs11Uri {
        token: at.token,
        serial: at.serial,
        slot_id: at.slot_id,
        object: ObjectRef { label, id },
        module_path: at.module_path,
        pin: at.pin,
    })
}

/// Parses a signing custody URI: the token only (`object=` and `id=` are refused, keyrot
/// creates a key per kid).
pub(crate) fn parse_token(uri: &str) -> Result<TokenUri, CustodyError> {
    parse_any(uri, Purpose::Signing).map(|(at, _, _)| at)
}

type Parsed = (TokenUri, Option<String>, Option<Vec<u8>>);

fn parse_any(uri: &str, purpose: Purpose) -> Result<Parsed, CustodyError> {
    let (path, query) = split_uri(uri)?;
    let (mut token, mut serial, mut slot_id, mut label, mut id) = (None, None, None, None, None);
    for (name, value) in attributes(uri, path, ';')? {
        match name {
            "token" => set(uri, name, &mut token, text(uri, name, value)?)?,
            "serial" => set(uri, name, &mut serial, text(uri, name, value)?)?,
            "object" | "id" if purpose == Purpose::Signing => {
                return Err(config(
                    uri,
                    format!(
                        "{name}= names one key: a signing custody URI names only the token (keyrot creates a key per kid)"
                    ),
                ));
            }
            "object" => set(uri, name, &mut label, text(uri, name, value)?)?,
            "id" => set(uri, name, &mut id, value)?,
            "slot-id" => {
                let n = text(uri, name, value)?;
                let n = n
                    .parse::<u64>()
                    .map_err(|_| config(uri, "slot-id must be a decimal number"))?;
                set(uri, name, &mut slot_id, n)?;
            }
            "type" if purpose == Purpose::Kek && value == b"secret-key" => {}
            "type" if purpose == Purpose::Signing && value == b"private" => {}
            "type" if purpose == Purpose::Kek => {
                return Err(config(uri, "the KEK is a secret key: type= must be secret-key"));
            }
            "type" => return Err(config(uri, "signing keys are private keys: type= must be private")),
            "manufacturer"
            | "model"
            | "library-manufacturer"
            | "library-description"
            | "library-version"
            | "slot-description"
            | "slot-manufacturer" => {
                return Err(config(
                    uri,
                    format!("the attribute {name} is not supported: use token= (and serial=)"),
                ));
            }
            _ if name.starts_with("x-") => {}
            _ => return Err(config(uri, format!("unknown path attribute {name:?}"))),
        }
    }
    let (module_path, pin) = parse_query(uri, query)?;
    let token = token.ok_or_else(|| config(uri, "token=LABEL is missing"))?;
    let module_path = module_path.ok_or_else(|| {
        config(
            uri,
            "module-path is missing: add ?module-path=/path/to/the/pkcs11/module.so",
        )
    })?;
    let at = TokenUri {
        token,
        serial,
        slot_id,
        module_path,
        pin,
    };
    Ok((at, label, id))
}

/// `module-path=` and the PIN.
fn parse_query(uri: &str, query: &str) -> Result<(Option<PathBuf>, PinSource), CustodyError> {
    let (mut module_path, mut pin) = (None, PinSource::Missing);
    for (name, value) in attributes(uri, query, '&')? {
        match name {
            "module-path" => set(uri, name, &mut module_path, PathBuf::from(text(uri, name, value)?))?,
            "pin-source" if matches!(pin, PinSource::Missing) => pin = PinSource::File(pin_file(uri, value)?),
            "pin-value" if matches!(pin, PinSource::Missing) => pin = PinSource::Value(SecretBytes::new(value)),
            "pin-source" | "pin-value" => return Err(config(uri, "give one of pin-source and pin-value, once")),
            "module-name" => return Err(config(uri, "module-name is not supported: give module-path")),
            _ if name.starts_with("x-") => {}
            _ => return Err(config(uri, format!("unknown query attribute {name:?}"))),
        }
    }
    Ok((module_path, pin))
}

/// The path and query components, without the scheme.
fn split_uri(uri: &str) -> Result<(&str, &str), CustodyError> {
    let rest = match uri.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("pkcs11") => rest,
        _ => return Err(config(uri, "not a pkcs11: URI")),
    };
    if rest.contains('#') {
        return Err(config(uri, "a pkcs11 URI has no fragment ('#' must be written %23)"));
    }
    Ok(rest.split_once('?').unwrap_or((rest, "")))
}

/// `name=value` pairs separated by `sep`, values percent-decoded.
fn attributes<'a>(uri: &str, part: &'a str, sep: char) -> Result<Vec<(&'a str, Vec<u8>)>, CustodyError> {
    let mut out = Vec::new();
    for attr in part.split(sep).filter(|a| !a.is_empty()) {
        let (name, value) = attr.split_once('=').ok_or_else(|| {
            config(
                uri,
                format!("attribute {:?} has no value", attr.split('=').next().unwrap_or("")),
            )
        })?;
        let value = percent_decode(value).ok_or_else(|| config(uri, format!("{name}= has an invalid %-escape")))?;
        out.push((name, value));
    }
    Ok(out)
}

fn set<T>(uri: &str, name: &str, slot: &mut Option<T>, value: T) -> Result<(), CustodyError> {
    if slot.replace(value).is_some() {
        return Err(config(uri, format!("{name}= is given twice")));
    }
    Ok(())
}

fn text(uri: &str, name: &str, value: Vec<u8>) -> Result<String, CustodyError> {
    String::from_utf8(value).map_err(|_| config(uri, format!("{name}= is not UTF-8 once decoded")))
}

fn pin_file(uri: &str, value: Vec<u8>) -> Result<PathBuf, CustodyError> {
    let v = text(uri, "pin-source", value)?;
    let path = v
        .strip_prefix("file://")
        .or_else(|| v.strip_prefix("file:"))
        .unwrap_or(&v);
    if !path.starts_with('/') {
        return Err(config(uri, "pin-source must be file:/absolute/path"));
    }
    Ok(PathBuf::from(path))
}

/// RFC 3986 percent-decoding; `None` for a malformed escape.
pub(crate) fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (canonical form).
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &c in bytes {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The name a wrap records for its KEK (`WrappedKey::kek`):
/// `pkcs11:token=LABEL;object=LABEL[;id=%XX…]`, canonically percent-encoded. No module
/// path, no PIN: it names the key, not how to reach it.
pub(crate) fn kek_name(token: &str, object: &ObjectRef) -> String {
    let mut s = format!(
        "pkcs11:token={};object={}",
        percent_encode(token.as_bytes()),
        percent_encode(object.label.as_bytes())
    );
    push_id(&mut s, object.id.as_deref());
    s
}

fn push_id(s: &mut String, id: Option<&[u8]>) {
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        s.push_str(";id=");
        for b in id {
            s.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The token label and object a recorded KEK name names; `None` when it is not one.
pub(crate) fn parse_kek_name(kek: &str) -> Option<(String, ObjectRef)> {
    let (token, label, id) = parse_name(kek)?;
    Some((token, ObjectRef { label: label?, id }))
}

/// A private signing key a reference names: by `CKA_ID`, by `CKA_LABEL`, or by both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeySel {
    /// `object=`: the key's `CKA_LABEL`.
    pub label: Option<String>,
    /// `id=`: the key's `CKA_ID` (never empty).
    pub id: Option<Vec<u8>>,
}

/// The reference of a signing key (`RemoteKey::reference`): `pkcs11:token=LABEL;id=%XX…`
/// (or `;object=LABEL` for a key without `CKA_ID`). No module path, no PIN.
pub(crate) fn key_ref(token: &str, key: &KeySel) -> String {
    let mut s = format!("pkcs11:token={}", percent_encode(token.as_bytes()));
    if let Some(label) = &key.label {
        s.push_str(";object=");
        s.push_str(&percent_encode(label.as_bytes()));
    }
    push_id(&mut s, key.id.as_deref());
    s
}

/// The token label and key a signing reference names (`id=`, `object=` or both); `None`
/// when it is not one.
pub(crate) fn parse_key_ref(reference: &str) -> Option<(String, KeySel)> {
    let (token, label, id) = parse_name(reference)?;
    if id.as_ref().is_some_and(Vec::is_empty) || (label.is_none() && id.is_none()) {
        return None;
    }
    Some((token, KeySel { label, id }))
}

/// `pkcs11:token=…[;object=…][;id=…]` without a query: the token, the label and the id.
fn parse_name(name: &str) -> Option<(String, Option<String>, Option<Vec<u8>>)> {
    let rest = name.strip_prefix("pkcs11:")?;
    if rest.contains(['?', '#']) {
        return None;
    }
    let (mut token, mut label, mut id) = (None, None, None);
    for (attr, value) in attributes(name, rest, ';').ok()? {
        let old = match attr {
            "token" => token.replace(String::from_utf8(value).ok()?).is_some(),
            "object" => label.replace(String::from_utf8(value).ok()?).is_some(),
            "id" => id.replace(value).is_some(),
            _ => return None,
        };
        if old {
            return None;
        }
    }
    Some((token?, label, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(uri: &str) -> String {
        parse(uri).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_full_uri_parses_and_decodes() {
        let u = parse("pkcs11:token=my%20token;object=kek%2Fone;id=%01%ff;serial=abc;slot-id=7;type=secret-key?module-path=/usr/lib/x%20y.so&pin-source=file:/run/pin")
            .ok()
            .unwrap_or_else(|| panic!("parse"));
        assert_eq!(u.token, "my token");
        assert_eq!(
            u.object,
            ObjectRef {
                label: "kek/one".into(),
                id: Some(vec![1, 0xff])
            }
        );
        assert_eq!(u.serial.as_deref(), Some("abc"));
        assert_eq!(u.slot_id, Some(7));
        assert_eq!(u.module_path, PathBuf::from("/usr/lib/x y.so"));
        assert!(matches!(u.pin, PinSource::File(ref p) if p == &PathBuf::from("/run/pin")));
    }

    #[test]
    fn bad_uris_are_configuration_errors_that_say_why() {
        assert!(err("pkcs11:token=t;object=k").contains("module-path is missing"));
        assert!(err("pkcs11:object=k?module-path=/m").contains("token=LABEL is missing"));
        assert!(err("pkcs11:token=t?module-path=/m").contains("object=LABEL"));
        assert!(err("pkcs11:token=t;objet=k?module-path=/m").contains("unknown path attribute \"objet\""));
        assert!(err("pkcs11:token=t;token=u;object=k?module-path=/m").contains("given twice"));
        assert!(err("pkcs11:token=t%zz;object=k?module-path=/m").contains("invalid %-escape"));
        assert!(err("pkcs11:token=t;object=k;type=private?module-path=/m").contains("secret-key"));
        assert!(err("pkcs11:token=t;object=k?module-path=/m&pin-source=relative").contains("absolute"));
        let e = err("pkcs11:token=t;object=k?module-path=/m&pin-value=s3cr3t&pin-source=file:/p");
        assert!(e.contains("once") && !e.contains("s3cr3t"), "{e}");
        assert!(err("vault-transit:a/b").contains("not a pkcs11: URI"));
    }

    #[test]
    fn kek_names_round_trip_and_are_canonical() {
        let obj = ObjectRef {
            label: "kek 2;x".into(),
            id: Some(vec![0xab, 1]),
        };
        let name = kek_name("tok/en", &obj);
        assert_eq!(name, "pkcs11:token=tok%2Fen;object=kek%202%3Bx;id=%AB%01");
        assert_eq!(parse_kek_name(&name), Some(("tok/en".to_owned(), obj)));
        let plain = ObjectRef {
            label: "kek".into(),
            id: None,
        };
        assert_eq!(kek_name("t", &plain), "pkcs11:token=t;object=kek");
        assert_eq!(
            parse_kek_name("pkcs11:token=t;object=kek"),
            Some(("t".to_owned(), plain))
        );
        assert_eq!(parse_kek_name("pkcs11:token=t;object=k?module-path=/m"), None);
        assert_eq!(parse_kek_name("pkcs11:token=t;object=k;object=j"), None);
        assert_eq!(parse_kek_name("aws-kms:k"), None);
    }

    #[test]
    fn a_signing_uri_names_only_the_token() {
        let at = parse_token("pkcs11:token=sig;serial=42?module-path=/m.so&pin-value=1234")
            .ok()
            .unwrap_or_else(|| panic!("parse"));
        assert_eq!((at.token.as_str(), at.serial.as_deref()), ("sig", Some("42")));
        assert!(matches!(at.pin, PinSource::Value(_)));
        let err = |uri: &str| parse_token(uri).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("pkcs11:token=t;object=k?module-path=/m").contains("names only the token"));
        assert!(err("pkcs11:token=t;id=%01?module-path=/m").contains("names only the token"));
        assert!(err("pkcs11:token=t;type=secret-key?module-path=/m").contains("type= must be private"));
        assert!(parse_token("pkcs11:token=t;type=private?module-path=/m").is_ok());
        assert!(err("pkcs11:token=t").contains("module-path is missing"));
        // The master-key custody still needs its KEK.
        assert!(err("pkcs11:token=t?module-path=/m").is_empty());
        assert!(
            parse("pkcs11:token=t?module-path=/m")
                .err()
                .is_some_and(|e| e.to_string().contains("object=LABEL"))
        );
    }

    #[test]
    fn key_references_round_trip() {
        let by_id = KeySel {
            label: None,
            id: Some(vec![0x00, 0xfe, 0x41]),
        };
        let r = key_ref("my tok", &by_id);
        assert_eq!(r, "pkcs11:token=my%20tok;id=%00%FE%41");
        assert_eq!(parse_key_ref(&r), Some(("my tok".to_owned(), by_id)));
        let by_label = KeySel {
            label: Some("keyrot-a-1".into()),
            id: None,
        };
        assert_eq!(key_ref("t", &by_label), "pkcs11:token=t;object=keyrot-a-1");
        assert_eq!(
            parse_key_ref("pkcs11:token=t;object=keyrot-a-1"),
            Some(("t".to_owned(), by_label))
        );
        for bad in [
            "pkcs11:token=t",
            "pkcs11:token=t;id=",
            "pkcs11:object=k",
            "pkcs11:token=t;id=%01?module-path=/m",
            "pkcs11:token=t;id=%01;id=%02",
            "pkcs11:token=t;serial=1;id=%01",
            "aws-kms:k",
        ] {
            assert_eq!(parse_key_ref(bad), None, "{bad}");
        }
    }
}
