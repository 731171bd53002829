//! Another issuer's key set: a whole JWKS document parsed strictly, once, into an
//! immutable `kid` → verifying-key map, and verified with every rule of
//! [`crate::KeyRing::verify`] (the same decoding and checking functions).
//!
//! A document is accepted whole or refused whole, never applied in part. It is refused
//! when it is not strict JSON (duplicate members), has no `keys` array, has more than
//! [`MAX_JWKS_KEYS`] keys, has two keys with one `kid`, a key that carries a private
//! member, or a key keyrot can use that does not parse. Keys are skipped (ignored, the
//! rest of the document still applies) when they cannot verify keyrot tokens: no `kid`,
//! a `use` other than `sig`, `key_ops` without `verify`, a key type or curve or `alg`
//! keyrot does not support, an `alg` outside [`Validation::with_algorithms`], or no
//! `alg` and no allowed algorithm of the key's type.

use crate::alg::Algorithm;
use crate::json::{JsonError, parse_strict};
use crate::key::{InvalidKey, KeyError, PublicKey, VerifyingKey};
use crate::keyring::{Anchor, Standing, TokenCache};
use crate::token::{self, AsMap, AsType, HeaderHash, ReadClaims, TokenError, Validation, Verified};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Most keys a JWKS document may hold (each usable key is parsed when it arrives).
pub const MAX_JWKS_KEYS: usize = 100;

/// JWK members that only private or symmetric keys carry (RFC 7518 §6.2.2, §6.3.2, §6.4,
/// RFC 8037 §2). A document that publishes one is refused whole.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWKS document was refused (whole). Names keys by their position, never by their
/// contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    /// Not strict JSON, or not an object.
    #[error("JWKS is not a JSON object without duplicate members")]
    NotJson(#[source] JsonError),
    /// No `keys` array.
    #[error("JWKS has no \"keys\" array")]
    NoKeys,
    /// More than [`MAX_JWKS_KEYS`] keys.
    #[error("JWKS has more than {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
    /// A member of `keys` is not a JSON object.
    #[error("JWKS key #{index} is not a JSON object")]
    NotAnObject {
        /// Its position in `keys`.
        index: usize,
    },
    /// A `kid` that is not a string of 1 to 256 characters.
    #[error("JWKS key #{index} has a \"kid\" that is not a string of 1 to 256 characters")]
    BadKid {
        /// Its position in `keys`.
        index: usize,
    },
    /// Two keys share one `kid`: which one a token names would be ambiguous.
    #[error("JWKS keys #{first} and #{second} have the same kid")]
    DuplicateKid {
        /// The first key's position.
        first: usize,
        /// The second key's position.
        second: usize,
    },
    /// A key carries a private (or symmetric) member.
    #[error("JWKS key #{index} carries the private member \"{member}\"")]
    PrivateMember {
        /// Its position in `keys`.
        index: usize,
        /// The member.
        member: &'static str,
    },
    /// `use` or `key_ops` is not of the type RFC 7517 gives it.
    #[error("JWKS key #{index} has a malformed \"use\" or \"key_ops\"")]
    BadUsage {
        /// Its position in `keys`.
        index: usize,
    },
    /// A key keyrot would use does not parse (bad members, a weak or too small key, an
    /// `alg` that does not fit its type).
    #[error("JWKS key #{index} is invalid")]
    InvalidKey {
        /// Its position in `keys`.
        index: usize,
        /// Why.
        #[source]
        source: KeyError,
    },
}

/// An immutable set of verifying keys by `kid`, parsed from a JWKS document. Cheap to
/// clone; verification takes no lock and does no I/O.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Each kid's keys: one per algorithm it may verify (several only for a JWK without
    /// `alg` whose type fits several allowed algorithms, e.g. RS256 and PS256).
    keys: Arc<HashMap<String, Vec<VerifyingKey>>>,
    /// The header segments keyrot itself writes for each key ([`KNOWN_TYPES`]), to the
    /// kid, the key's index and the header's `typ`: a token from a keyrot issuer skips
    /// the header decoding, as [`crate::KeyRing::verify`] does.
    known_headers: Arc<HashMap<String, (String, usize, &'static str), HeaderHash>>,
}

/// The `typ` values whose keyrot-written headers [`KeySet`] recognises without decoding.
const KNOWN_TYPES: [&str; 2] = [token::DEFAULT_TOKEN_TYPE, "at+jwt"];

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.kids().collect();
        kids.sort_unstable();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a whole JWKS document (see the module rules), with `v`'s algorithm
    /// allow-list deciding which algorithms a JWK without `alg` is used for.
    pub fn from_jwks(document: &[u8], v: &Validation) -> Result<Self, KeySetError> {
        let Value::Object(doc) = parse_strict(document).map_err(KeySetError::NotJson)? else {
            return Err(KeySetError::NotJson(JsonError::NotObject));
        };
        let Some(Value::Array(members)) = doc.get("keys") else {
            return Err(KeySetError::NoKeys);
        };
        if members.len() > MAX_JWKS_KEYS {
            return Err(KeySetError::TooManyKeys { max: MAX_JWKS_KEYS });
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut keys = HashMap::new();
        for (index, member) in members.iter().enumerate() {
            let obj = member.as_object().ok_or(KeySetError::NotAnObject { index })?;
            if let Some(member) = PRIVATE_MEMBERS.into_iter().find(|m| obj.contains_key(*m)) {
                return Err(KeySetError::PrivateMember { index, member });
            }
            let kid = match obj.get("kid") {
                None => None,
                Some(Value::String(k)) if (1..=256).contains(&k.chars().count()) => Some(k.as_str()),
                Some(_) => return Err(KeySetError::BadKid { index }),
            };
            if let Some(k) = kid
                && let Some(first) = seen.insert(k, index)
            {
                return Err(KeySetError::DuplicateKid { first, second: index });
            }
            if !verifies(obj).ok_or(KeySetError::BadUsage { index })? {
                continue;
            }
            let Some(kid) = kid else { continue };
            let parsed = verifying_keys(obj, v).map_err(|source| KeySetError::InvalidKey { index, source })?;
            if !parsed.is_empty() {
                keys.insert(kid.to_owned(), parsed);
            }
        }
        let mut known_headers = HashMap::default();
        for (kid, candidates) in &keys {
            for (index, key) in candidates.iter().enumerate() {
                for typ in KNOWN_TYPES {
                    let header = token::encode_header_with_type(key.algorithm(), kid, typ);
                    known_headers.insert(header, (kid.clone(), index, typ));
                }
            }
        }
        Ok(Self {
            keys: Arc::new(keys),
            known_headers: Arc::new(known_headers),
        })
    }

    /// How many kids the set can verify.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set verifies nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `kid` names a key of the set.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The kids, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies `token` against the set as of `now` (Unix seconds): every rule of
    /// [`crate::KeyRing::verify`] ([`token::decode_header`], then the key's
    /// `Unverified::verify_with`), the key chosen by `kid` and, for a JWK usable with
    /// several algorithms, by the header's `alg`.
    pub fn verify(&self, token: &str, v: &Validation, now: i64) -> Result<Verified, TokenError> {
        self.verify_into::<AsMap>(token, v, now)
    }

    /// [`KeySet::verify`], reading the claims straight into `T` (no claims map): the same
    /// rules, duplicate members refused at any depth; claims that do not fit `T` are
    /// refused with [`TokenError::ClaimsShape`], after every other rule.
    pub fn verify_as<T: DeserializeOwned>(
        &self,
        token: &str,
        v: &Validation,
        now: i64,
    ) -> Result<Verified<T>, TokenError> {
        self.verify_into::<AsType<T>>(token, v, now)
    }

    fn verify_into<R: ReadClaims>(
        &self,
        token: &str,
        v: &Validation,
        now: i64,
    ) -> Result<Verified<R::Claims>, TokenError> {
        if token.len() <= v.max_token_bytes()
            && let Some((header, _)) = token.split_once('.')
            && let Some((kid, index, typ)) = self.known_headers.get(header)
            && let Some(key) = self.keys.get(kid).and_then(|k| k.get(*index))
        {
            return token::decode_with_known_typed_header(token, header, v, kid, key.algorithm(), Some(typ))?
                .verify_into::<R>(key, v, now);
        }
        let u = token::decode_header(token, v)?;
        let candidates = self.keys.get(&u.kid).ok_or(TokenError::UnknownKid)?;
        let key = candidates
            .iter()
            .find(|k| k.algorithm().as_str() == u.alg)
            .or_else(|| candidates.first())
            .ok_or(TokenError::UnknownKid)?;
        u.parts().verify_into::<R>(key, v, now)
    }

    /// [`KeySet::verify`] through `cache` (see [`TokenCache`]): a cached verification is
    /// reused only while this very set is the one verifying (a new JWKS, whatever it
    /// holds, invalidates the entries of the previous set) and the token's time claims
    /// hold at `now`; a successful full verification is stored.
    pub fn verify_cached(
        &self,
        token: &str,
        v: &Validation,
        now: i64,
        cache: &TokenCache,
    ) -> Result<Verified, TokenError> {
        if let Some(hit) = cache.lookup(token, v, now, |_, anchor| {
            if anchor.is_set(&self.keys) {
                Standing::Holds
            } else {
                Standing::Other
            }
        }) {
            return Ok(hit);
        }
        let verified = self.verify(token, v, now)?;
        cache.store(token, v, &verified, Anchor::set(&self.keys));
        Ok(verified)
    }
}

/// Whether the JWK may verify signatures (`use` absent or `sig`, `key_ops` absent or
/// listing `verify`); `None` when either member has the wrong JSON type.
fn verifies(obj: &Map<String, Value>) -> Option<bool> {
    let use_ok = match obj.get("use") {
        None => true,
        Some(Value::String(u)) => u == "sig",
        Some(_) => return None,
    };
    let ops_ok = match obj.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => {
            let mut verify = false;
            for op in ops {
                verify |= op.as_str()? == "verify";
            }
            verify
        }
        Some(_) => return None,
    };
    Some(use_ok && ops_ok)
}

/// The verifying keys of one usable JWK: for its `alg`, or (without `alg`) for each
/// allowed algorithm its type fits. Empty when keyrot cannot use it.
fn verifying_keys(obj: &Map<String, Value>, v: &Validation) -> Result<Vec<VerifyingKey>, KeyError> {
    if obj.get("kty").and_then(Value::as_str) == Some("OKP")
        && obj.get("crv").and_then(Value::as_str) != Some("Ed25519")
    {
        // Another curve (X25519, Ed448): not a key keyrot verifies with.
        return Ok(Vec::new());
    }
    // `use` and `key_ops` were checked above; the key parser's stricter signing-key
    // rule for them does not apply to a verifier.
    let mut jwk = obj.clone();
    jwk.remove("use");
    jwk.remove("key_ops");
    let jwk = Value::Object(jwk);
    let (declared, candidates): (bool, Vec<Algorithm>) = match obj.get("alg") {
        None => (false, v.algorithms().to_vec()),
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(alg) if alg.is_signing() && (v.algorithms().is_empty() || v.algorithms().contains(&alg)) => {
                (true, vec![alg])
            }
            // An algorithm keyrot does not support, or one not allowed here.
            _ => return Ok(Vec::new()),
        },
        Some(_) => return Err(KeyError::Invalid(InvalidKey::NotAString("alg"))),
    };
    let mut keys = Vec::new();
    for alg in candidates {
        match PublicKey::from_jwk(&jwk, Some(alg)) {
            Ok(pk) => keys.push(pk.verifying_key()?),
            Err(KeyError::Invalid(InvalidKey::UnsupportedKeyType)) => return Ok(Vec::new()),
            // An allowed algorithm of another key type: not a candidate for this key.
            Err(KeyError::AlgorithmMismatch { .. }) if !declared => {}
            Err(e) => return Err(e),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::RsaBits;
    use crate::key::PrivateKey;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn token(key: &PrivateKey, kid: &str) -> String {
        let header = token::encode_header(key.algorithm(), kid);
        token::sign(
            &key.signing_key(),
            &header,
            &json!({"sub": "a", "exp": NOW + 60}),
            NOW,
            3600,
        )
        .expect("sign")
    }

    fn doc(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).expect("json")
    }

    fn ed() -> PrivateKey {
        PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key")
    }

    #[test]
    fn verifies_what_the_document_publishes() {
        let k = ed();
        let set = KeySet::from_jwks(&doc(vec![k.public_key().to_jwk("k1")]), &Validation::new()).expect("set");
        assert_eq!(set.len(), 1);
        let v = set.verify(&token(&k, "k1"), &Validation::new(), NOW).expect("verified");
        assert_eq!(v.kid, "k1");
        assert_eq!(
            set.verify(&token(&k, "k2"), &Validation::new(), NOW).unwrap_err(),
            TokenError::UnknownKid
        );
        let other = ed();
        let forged = token(&other, "k1");
        assert_eq!(
            set.verify(&forged, &Validation::new(), NOW).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn keyrot_headers_and_other_issuers_headers_verify_alike() {
        let k = ed();
        let set = KeySet::from_jwks(&doc(vec![k.public_key().to_jwk("k1")]), &Validation::new()).expect("set");
        let claims = json!({"sub": "a", "exp": NOW + 60});
        let foreign = crate::b64::encode(br#"{"kid":"k1","typ":"at+jwt","alg":"EdDSA"}"#);
        let at_jwt = token::encode_header_with_type(Algorithm::EdDsa, "k1", "at+jwt");
        let required = Validation::new().with_required_type("at+jwt");
        for header in [foreign, at_jwt] {
            let t = token::sign(&k.signing_key(), &header, &claims, NOW, 3600).expect("sign");
            assert_eq!(set.verify(&t, &required, NOW).expect("verified").kid, "k1");
            assert!(set.verify(&t, &Validation::new(), NOW).is_ok());
        }
        let jwt = token(&k, "k1");
        assert_eq!(set.verify(&jwt, &required, NOW).unwrap_err(), TokenError::InvalidType);
        let small = Validation::new().with_max_token_bytes(16);
        assert!(matches!(
            set.verify(&jwt, &small, NOW),
            Err(TokenError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_bad_document_is_refused_whole() {
        let (a, b) = (ed(), ed());
        let v = Validation::new();
        let dup = doc(vec![a.public_key().to_jwk("k"), b.public_key().to_jwk("k")]);
        assert!(matches!(
            KeySet::from_jwks(&dup, &v),
            Err(KeySetError::DuplicateKid { first: 0, second: 1 })
        ));
        let mut private = b.public_key().to_jwk("p");
        private["d"] = json!("AAAA");
        let with_private = doc(vec![a.public_key().to_jwk("a"), private]);
        assert!(matches!(
            KeySet::from_jwks(&with_private, &v),
            Err(KeySetError::PrivateMember { index: 1, member: "d" })
        ));
        let oct = doc(vec![json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"})]);
        assert!(matches!(
            KeySet::from_jwks(&oct, &v),
            Err(KeySetError::PrivateMember { member: "k", .. })
        ));
        let mut broken = b.public_key().to_jwk("b");
        broken["x"] = json!("AAAA");
        let invalid = doc(vec![a.public_key().to_jwk("a"), broken]);
        assert!(matches!(
            KeySet::from_jwks(&invalid, &v),
            Err(KeySetError::InvalidKey { index: 1, .. })
        ));
        assert!(matches!(
            KeySet::from_jwks(b"{\"keys\":[],\"keys\":[]}", &v),
            Err(KeySetError::NotJson(_))
        ));
        assert!(matches!(KeySet::from_jwks(b"{}", &v), Err(KeySetError::NoKeys)));
        assert!(matches!(KeySet::from_jwks(b"[]", &v), Err(KeySetError::NotJson(_))));
        let many = doc((0..=MAX_JWKS_KEYS)
            .map(|i| json!({"kty": "EC", "kid": i.to_string()}))
            .collect());
        assert!(matches!(
            KeySet::from_jwks(&many, &v),
            Err(KeySetError::TooManyKeys { .. })
        ));
        let bad_ops = doc(vec![json!({"kty": "OKP", "kid": "x", "key_ops": "verify"})]);
        assert!(matches!(
            KeySet::from_jwks(&bad_ops, &v),
            Err(KeySetError::BadUsage { index: 0 })
        ));
    }

    #[test]
    fn keys_that_do_not_verify_are_ignored() {
        let k = ed();
        let mut enc = k.public_key().to_jwk("enc");
        enc["use"] = json!("enc");
        let mut wrap = ed().public_key().to_jwk("wrap");
        wrap["key_ops"] = json!(["wrapKey"]);
        wrap.as_object_mut().expect("object").remove("use");
        let mut ops = ed().public_key().to_jwk("ops");
        ops["key_ops"] = json!(["verify"]);
        let mut no_kid = ed().public_key().to_jwk("x");
        no_kid.as_object_mut().expect("object").remove("kid");
        let ec = json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"});
        let x25519 = json!({"kty": "OKP", "kid": "xdh", "crv": "X25519", "x": "AA"});
        let mut rs512 = ed().public_key().to_jwk("rs512");
        rs512["alg"] = json!("RS512");
        let set = KeySet::from_jwks(
            &doc(vec![enc, wrap, ops, no_kid, ec, x25519, rs512]),
            &Validation::new(),
        )
        .expect("set");
        assert_eq!(set.kids().collect::<Vec<_>>(), vec!["ops"]);
        assert_eq!(
            set.verify(&token(&k, "enc"), &Validation::new(), NOW).unwrap_err(),
            TokenError::UnknownKid
        );
    }

    #[test]
    fn a_jwk_without_alg_serves_only_allowed_algorithms_of_its_type() {
        let rsa = PrivateKey::generate(Algorithm::Rs256, RsaBits::B2048).expect("rsa");
        let mut jwk = rsa.public_key().to_jwk("r");
        jwk.as_object_mut().expect("object").remove("alg");
        let d = doc(vec![jwk]);
        assert!(KeySet::from_jwks(&d, &Validation::new()).expect("set").is_empty());
        let eddsa_only = Validation::new().with_algorithms([Algorithm::EdDsa]);
        assert!(KeySet::from_jwks(&d, &eddsa_only).expect("set").is_empty());
        let both = Validation::new().with_algorithms([Algorithm::EdDsa, Algorithm::Ps256, Algorithm::Rs256]);
        let set = KeySet::from_jwks(&d, &both).expect("set");
        let t = token(&rsa, "r");
        assert_eq!(set.verify(&t, &both, NOW).expect("rs256").alg, Algorithm::Rs256);
        let ps_only = Validation::new().with_algorithms([Algorithm::Ps256]);
        let set = KeySet::from_jwks(&d, &ps_only).expect("set");
        assert_eq!(
            set.verify(&t, &ps_only, NOW).unwrap_err(),
            TokenError::AlgorithmMismatch {
                expected: Algorithm::Ps256
            }
        );
    }

    #[test]
    fn the_algorithm_allow_list_applies_to_every_verification() {
        let k = ed();
        let t = token(&k, "k");
        let vk = k.public_key().verifying_key().expect("vk");
        let rsa_only = Validation::new().with_algorithms([Algorithm::Rs256]);
        assert_eq!(
            token::verify_with_key(&t, &vk, &rsa_only, NOW).unwrap_err(),
            TokenError::AlgorithmNotAllowed { alg: Algorithm::EdDsa }
        );
        assert!(token::verify_with_key(&t, &vk, &Validation::new().with_algorithms([Algorithm::EdDsa]), NOW).is_ok());
        // A declared alg outside the allow-list: the key is not taken at all.
        let d = doc(vec![k.public_key().to_jwk("k")]);
        assert!(KeySet::from_jwks(&d, &rsa_only).expect("set").is_empty());
        assert_eq!(rsa_only.algorithms(), &[Algorithm::Rs256]);
    }

    #[test]
    fn a_declared_alg_that_does_not_fit_the_key_is_invalid() {
        let mut jwk = ed().public_key().to_jwk("k");
        jwk["alg"] = json!("RS256");
        assert!(matches!(
            KeySet::from_jwks(&doc(vec![jwk]), &Validation::new()),
            Err(KeySetError::InvalidKey { index: 0, .. })
        ));
    }
}
