//! Typed claims (issue 21, item 9): `verify_as::<T>` reads the payload straight into the
//! caller's type, with no claims map in between, and refuses every token the map path
//! refuses, with the same error: the header and signature rules, a duplicate member at
//! any depth, the time, issuer and audience rules. Only then can a payload that does not
//! fit `T` be refused, with `TokenError::ClaimsShape`.
//!
//! Each verification level is covered: `Unverified::verify_as` (the free-function level),
//! `KeySet::verify_as`, `KeyRing::verify_as` (with and without a token cache) and
//! `PublicKeyRing::verify_as`. A property test compares the typed path with the map path
//! on generated payloads (duplicates, escaped names, every JSON type in every registered
//! claim, trailing data, non-objects).

use chrono::{DateTime, Utc};
use keyrot_core::testing::b64;
use keyrot_core::testing::token::encode_header;
use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, KeySet, ManualClock, MasterKey, MasterKeySealer, MemoryLock,
    MemoryStorage, PrivateKey, PublicKeyRing, RequestContext, RingName, Rotator, RsaBits, SigningKey, TokenCache,
    TokenCacheConfig, TokenError, Validation, Verified, VerifyingKey, decode_header,
};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

const NOW: i64 = 1_000;
const KID: &str = "k1";

/// The shape a service reads its access tokens into.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Access {
    sub: String,
    exp: i64,
    #[serde(default)]
    scope: Option<String>,
}

struct Keys {
    signing: SigningKey,
    verifying: VerifyingKey,
    private: PrivateKey,
}

fn keys() -> Keys {
    let private = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    Keys {
        signing: private.signing_key(),
        verifying: private.public_key().verifying_key().expect("verifying key"),
        private,
    }
}

/// A token over exactly `payload`, under the header keyrot writes for `KID`.
fn signed(key: &SigningKey, payload: &[u8]) -> String {
    let input = format!("{}.{}", encode_header(Algorithm::EdDsa, KID), b64::encode(payload));
    let sig = key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64::encode(&sig))
}

/// The map path, at the free-function level.
fn as_map(k: &Keys, token: &str, v: &Validation, now: i64) -> Result<Verified, TokenError> {
    decode_header(token, v)?.verify_with(&k.verifying, v, now)
}

/// The typed path, at the free-function level.
fn as_type<T: serde::de::DeserializeOwned>(
    k: &Keys,
    token: &str,
    v: &Validation,
    now: i64,
) -> Result<Verified<T>, TokenError> {
    decode_header(token, v)?.verify_as::<T>(&k.verifying, v, now)
}

fn audience_api() -> Validation {
    Validation::new().with_audience("api")
}

#[test]
fn a_good_token_reads_into_the_type() {
    let k = keys();
    let t = signed(&k.signing, br#"{"sub":"alice","exp":2000,"aud":"api","scope":"read"}"#);
    let v = audience_api();
    let typed = as_type::<Access>(&k, &t, &v, NOW).expect("verifies");
    assert_eq!((typed.kid.as_str(), typed.alg), (KID, Algorithm::EdDsa));
    let want = Access {
        sub: "alice".into(),
        exp: 2000,
        scope: Some("read".into()),
    };
    assert_eq!(typed.claims, want);
    // The map path and its conversions read the same claims.
    let map = as_map(&k, &t, &v, NOW).expect("verifies");
    assert_eq!(map.claims_as::<Access>().expect("shape"), want);
    assert_eq!(map.into_claims::<Access>().expect("shape"), want);
}

#[test]
fn duplicate_members_are_refused_at_any_depth() {
    let k = keys();
    let v = audience_api().with_issuer("iss");
    let payloads: [&[u8]; 9] = [
        br#"{"sub":"a","exp":2000,"exp":2000,"aud":"api","iss":"iss"}"#,
        br#"{"sub":"a","exp":2000,"nbf":1,"nbf":1,"aud":"api","iss":"iss"}"#,
        br#"{"sub":"a","exp":2000,"aud":"api","iss":"iss","iss":"iss"}"#,
        br#"{"sub":"a","exp":2000,"aud":"api","aud":"api","iss":"iss"}"#,
        br#"{"sub":"a","sub":"b","exp":2000,"aud":"api","iss":"iss"}"#,
        // The same name spelled with an escape is the same member.
        br#"{"sub":"a","exp":2000,"\u0065xp":2000,"aud":"api","iss":"iss"}"#,
        br#"{"sub":"a","exp":2000,"aud":"api","iss":"iss","x":{"y":1,"y":2}}"#,
        br#"{"sub":"a","exp":2000,"aud":["api",{"y":1,"y":2}],"iss":"iss"}"#,
        br#"{"sub":"a","exp":2000,"aud":"api","iss":"iss","x":[[{"y":1,"y":2}]]}"#,
    ];
    for p in payloads {
        let t = signed(&k.signing, p);
        let text = String::from_utf8_lossy(p);
        assert_eq!(
            as_type::<Access>(&k, &t, &v, NOW).err(),
            Some(TokenError::DuplicateMember("payload")),
            "{text}"
        );
        assert_eq!(
            as_type::<Value>(&k, &t, &v, NOW).err(),
            Some(TokenError::DuplicateMember("payload")),
            "{text}"
        );
        assert_eq!(
            as_map(&k, &t, &v, NOW).err(),
            Some(TokenError::DuplicateMember("payload")),
            "{text}"
        );
    }
    // A wide object: more members than the duplicate check keeps on the stack.
    let mut wide: String = (0..40).map(|i| format!("\"m{i}\":{i},")).collect();
    wide.push_str(r#""m7":0,"sub":"a","exp":2000,"aud":"api","iss":"iss"}"#);
    let t = signed(&k.signing, format!("{{{wide}").as_bytes());
    assert_eq!(
        as_type::<Access>(&k, &t, &v, NOW).err(),
        Some(TokenError::DuplicateMember("payload"))
    );
    let distinct = wide.replace(r#""m7":0,"#, r#""m77":0,"#);
    let t = signed(&k.signing, format!("{{{distinct}").as_bytes());
    assert_eq!(
        as_type::<Access>(&k, &t, &v, NOW).expect("no duplicate").claims.sub,
        "a"
    );
}

#[test]
fn the_claim_rules_apply_before_the_shape() {
    let k = keys();
    let v = audience_api();
    let refused = |p: &[u8]| as_type::<Access>(&k, &signed(&k.signing, p), &v, NOW).err();
    assert_eq!(
        refused(br#"{"sub":"a","exp":900,"aud":"api"}"#),
        Some(TokenError::Expired)
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000,"aud":"web"}"#),
        Some(TokenError::InvalidAudience)
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000,"aud":["web","app"]}"#),
        Some(TokenError::InvalidAudience)
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000}"#),
        Some(TokenError::MissingClaim("aud"))
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000,"nbf":1500,"aud":"api"}"#),
        Some(TokenError::NotYetValid)
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000,"iat":1500,"aud":"api"}"#),
        Some(TokenError::IssuedInFuture)
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":"2000","aud":"api"}"#),
        Some(TokenError::InvalidClaim("exp"))
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":null,"aud":"api"}"#),
        Some(TokenError::InvalidClaim("exp"))
    );
    assert_eq!(
        refused(br#"{"sub":"a","exp":2000,"aud":["api",1]}"#),
        Some(TokenError::InvalidClaim("aud"))
    );
    assert_eq!(
        refused(br#"{"sub":"a","aud":"api"}"#),
        Some(TokenError::MissingClaim("exp"))
    );
    // Expired and of the wrong shape: the rule is what is reported.
    assert_eq!(
        refused(br#"{"sub":5,"exp":900,"aud":"api"}"#),
        Some(TokenError::Expired)
    );
    let issuer = Validation::new().with_issuer("https://issuer").allow_any_audience();
    let with = |p: &[u8]| as_type::<Access>(&k, &signed(&k.signing, p), &issuer, NOW).err();
    assert_eq!(
        with(br#"{"sub":"a","exp":2000,"iss":"https://other"}"#),
        Some(TokenError::InvalidIssuer)
    );
    assert_eq!(
        with(br#"{"sub":"a","exp":2000,"iss":["https://issuer"]}"#),
        Some(TokenError::InvalidClaim("iss"))
    );
    assert_eq!(
        with(br#"{"sub":"a","exp":2000}"#),
        Some(TokenError::MissingClaim("iss"))
    );
    assert!(with(br#"{"sub":"a","exp":2000,"iss":"https:\/\/issuer"}"#).is_none());
}

#[test]
fn a_payload_that_does_not_fit_the_type_is_a_claims_shape_error() {
    let k = keys();
    let v = audience_api();
    for p in [
        br#"{"exp":2000,"aud":"api"}"#.as_slice(),
        br#"{"sub":5,"exp":2000,"aud":"api"}"#,
        br#"{"sub":"a","exp":2000.5,"aud":"api"}"#,
        br#"{"sub":"a","exp":2000,"aud":"api","scope":["read"]}"#,
    ] {
        let t = signed(&k.signing, p);
        assert_eq!(
            as_type::<Access>(&k, &t, &v, NOW).err(),
            Some(TokenError::ClaimsShape),
            "{}",
            String::from_utf8_lossy(p)
        );
        // The token itself is good: the map path accepts it.
        assert!(as_map(&k, &t, &v, NOW).is_ok());
    }
}

#[test]
fn the_header_and_signature_rules_are_the_map_paths() {
    let k = keys();
    let v = audience_api();
    let good = signed(&k.signing, br#"{"sub":"a","exp":2000,"aud":"api"}"#);
    let (input, _) = good.rsplit_once('.').expect("three segments");
    let forged = format!("{input}.{}", b64::encode(&[7u8; 64]));
    assert_eq!(
        as_type::<Access>(&k, &forged, &v, NOW).err(),
        Some(TokenError::BadSignature)
    );
    let other = keys();
    let foreign = signed(&other.signing, br#"{"sub":"a","exp":2000,"aud":"api"}"#);
    assert_eq!(
        as_type::<Access>(&k, &foreign, &v, NOW).err(),
        Some(TokenError::BadSignature)
    );
    let set = KeySet::from_jwks(&jwks(&k), &v).expect("set");
    assert_eq!(
        set.verify_as::<Access>(&forged, &v, NOW).err(),
        Some(TokenError::BadSignature)
    );
    let rs_only = v.clone().with_algorithms([Algorithm::Rs256]);
    assert_eq!(
        as_type::<Access>(&k, &good, &rs_only, NOW).err(),
        Some(TokenError::AlgorithmNotAllowed { alg: Algorithm::EdDsa })
    );
    let small = v.clone().with_max_token_bytes(32);
    assert!(matches!(
        as_type::<Access>(&k, &good, &small, NOW),
        Err(TokenError::TooLarge { .. })
    ));
    for bad in [
        b"\xEF\xBB\xBF{\"sub\":\"a\",\"exp\":2000,\"aud\":\"api\"}".as_slice(),
        br#"{"sub":"a","exp":2000,"aud":"api"} x"#,
        br#"[{"sub":"a","exp":2000,"aud":"api"}]"#,
        br#""sub""#,
        br#"{"sub":"a","exp":2000,"aud":"api""#,
    ] {
        let t = signed(&k.signing, bad);
        assert!(
            matches!(as_type::<Access>(&k, &t, &v, NOW), Err(TokenError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn jwks(k: &Keys) -> Vec<u8> {
    serde_json::to_vec(&json!({"keys": [k.private.public_key().to_jwk(KID)]})).expect("json")
}

#[test]
fn a_key_set_verifies_into_the_type() {
    let k = keys();
    let v = audience_api();
    let set = KeySet::from_jwks(&jwks(&k), &v).expect("set");
    let t = signed(&k.signing, br#"{"sub":"a","exp":2000,"aud":"api"}"#);
    assert_eq!(set.verify_as::<Access>(&t, &v, NOW).expect("verifies").claims.sub, "a");
    let late = NOW + 5_000;
    assert_eq!(set.verify_as::<Access>(&t, &v, late).err(), Some(TokenError::Expired));
    let dup = signed(&k.signing, br#"{"sub":"a","exp":2000,"exp":2000,"aud":"api"}"#);
    assert_eq!(
        set.verify_as::<Access>(&dup, &v, NOW).err(),
        Some(TokenError::DuplicateMember("payload"))
    );
    // A header keyrot did not write (decoded, then the same path).
    let header = b64::encode(br#"{"kid":"k1","alg":"EdDSA"}"#);
    let payload = b64::encode(br#"{"sub":"b","exp":2000,"aud":"api"}"#);
    let input = format!("{header}.{payload}");
    let sig = k.signing.sign(input.as_bytes()).expect("sign");
    let t = format!("{input}.{}", b64::encode(&sig));
    assert_eq!(set.verify_as::<Access>(&t, &v, NOW).expect("verifies").claims.sub, "b");
    assert_eq!(
        set.verify_as::<Access>(&signed(&keys().signing, b"{}"), &v, NOW).err(),
        Some(TokenError::BadSignature)
    );
}

struct Rings {
    clock: ManualClock,
    plain: KeyRing,
    cached: KeyRing,
    public: PublicKeyRing,
    key: SigningKey,
    kid: String,
}

async fn rings() -> Rings {
    let t0 = DateTime::<Utc>::from_timestamp(1_900_000_000, 0).expect("time");
    let clock = ManualClock::new(t0);
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let name = RingName::new("typed").expect("ring");
    let v = audience_api();
    let build = |cache: Option<TokenCache>| {
        let mut b = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_validation(v.clone());
        if let Some(cache) = cache {
            b = b.with_token_cache(cache);
        }
        b.build()
    };
    let plain = build(None).await.expect("keyring");
    let cached = build(Some(TokenCache::new(TokenCacheConfig::new())))
        .await
        .expect("keyring");
    let private = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let lock = Arc::new(MemoryLock::new(Arc::new(clock.clone())));
    let report = Rotator::builder(name.clone(), storage.clone(), lock, sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(plain.clone())
        .build()
        .import(
            RequestContext::actor("test"),
            ImportedKey {
                key: private.clone(),
                kid: None,
            },
            ImportState::Active,
        )
        .await
        .expect("import");
    let kid = report.new_kid.expect("kid");
    cached.refresh().await.expect("refresh");
    let public = PublicKeyRing::builder(name, storage)
        .with_clock(Arc::new(clock.clone()))
        .with_validation(v)
        .build()
        .await
        .expect("public ring");
    Rings {
        clock,
        plain,
        cached,
        public,
        key: private.signing_key(),
        kid,
    }
}

impl Rings {
    fn signed(&self, payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            encode_header(Algorithm::EdDsa, &self.kid),
            b64::encode(payload)
        );
        let sig = self.key.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", b64::encode(&sig))
    }

    /// The typed answer of every ring, checked to be one answer.
    fn verify_as(&self, token: &str) -> Result<Verified<Access>, TokenError> {
        let plain = self.plain.verify_as::<Access>(token);
        for (name, other) in [
            ("cached", self.cached.verify_as::<Access>(token)),
            ("cached again", self.cached.verify_as::<Access>(token)),
            ("public", self.public.verify_as::<Access>(token)),
        ] {
            assert_eq!(
                other.as_ref().map(|v| (&v.kid, &v.claims)).map_err(Clone::clone),
                plain.as_ref().map(|v| (&v.kid, &v.claims)).map_err(Clone::clone),
                "{name}"
            );
        }
        plain
    }
}

#[tokio::test]
async fn rings_verify_into_the_type_with_and_without_a_cache() {
    let r = rings().await;
    let now = r.clock.now_unix();
    let good = r
        .plain
        .sign(&json!({"sub": "alice", "exp": now + 600, "aud": "api"}))
        .expect("sign");
    let typed = r.verify_as(&good).expect("verifies");
    assert_eq!(
        (typed.claims.sub.as_str(), typed.kid.as_str()),
        ("alice", r.kid.as_str())
    );
    assert_eq!(
        typed.claims,
        r.plain
            .verify(&good)
            .expect("map")
            .claims_as::<Access>()
            .expect("shape")
    );

    let dup = r.signed(format!(r#"{{"sub":"a","exp":{0},"exp":{0},"aud":"api"}}"#, now + 600).as_bytes());
    assert_eq!(r.verify_as(&dup).err(), Some(TokenError::DuplicateMember("payload")));
    let wrong_aud = r.signed(format!(r#"{{"sub":"a","exp":{},"aud":"web"}}"#, now + 600).as_bytes());
    assert_eq!(r.verify_as(&wrong_aud).err(), Some(TokenError::InvalidAudience));
    let shape = r.signed(format!(r#"{{"sub":1,"exp":{},"aud":"api"}}"#, now + 600).as_bytes());
    assert_eq!(r.verify_as(&shape).err(), Some(TokenError::ClaimsShape));
    let (input, _) = good.rsplit_once('.').expect("three segments");
    let forged = format!("{input}.{}", b64::encode(&[1u8; 64]));
    assert_eq!(r.verify_as(&forged).err(), Some(TokenError::BadSignature));

    // A header the ring wrote (read without decoding it), around broken segments.
    let (header, rest) = good.split_once('.').expect("three segments");
    let (payload, sig) = rest.split_once('.').expect("three segments");
    for broken in [
        format!("{good}.x"),
        format!("{good}."),
        format!("{header}.{payload}.{sig}.{sig}"),
        format!("{header}..{sig}"),
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
        format!("{header}."),
        header.to_owned(),
    ] {
        assert!(
            matches!(r.verify_as(&broken), Err(TokenError::Malformed(_))),
            "{broken}"
        );
        assert!(
            matches!(r.plain.verify(&broken), Err(TokenError::Malformed(_))),
            "{broken}"
        );
    }

    // Past its exp: refused by every ring, the cached one included.
    r.clock.advance(chrono::TimeDelta::seconds(700));
    assert_eq!(r.verify_as(&good).err(), Some(TokenError::Expired));
}

trait NowUnix {
    fn now_unix(&self) -> i64;
}

impl NowUnix for ManualClock {
    fn now_unix(&self) -> i64 {
        keyrot_core::Clock::now(self).timestamp()
    }
}

/// Every shape's typed answer for payload `p` is the map path's: its error, or its claims
/// read into the shape (`ClaimsShape` when they do not fit).
fn same_answer(k: &Keys, p: &[u8], v: &Validation) {
    fn check<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        k: &Keys,
        t: &str,
        v: &Validation,
        map: &Result<Map<String, Value>, TokenError>,
        text: &str,
    ) {
        let want = map
            .clone()
            .and_then(|m| T::deserialize(&m).map_err(|_| TokenError::ClaimsShape));
        let got = as_type::<T>(k, t, v, NOW).map(|x| x.claims);
        assert_eq!(got, want, "{} into {}", text, std::any::type_name::<T>());
    }
    let t = signed(&k.signing, p);
    let text = String::from_utf8_lossy(p);
    let map = as_map(k, &t, v, NOW).map(|x| x.claims);
    check::<Map<String, Value>>(k, &t, v, &map, &text);
    check::<Value>(k, &t, v, &map, &text);
    check::<Ignored>(k, &t, v, &map, &text);
    check::<Loose>(k, &t, v, &map, &text);
    check::<Rich>(k, &t, v, &map, &text);
    check::<Access>(k, &t, v, &map, &text);
}

/// A shape that reads nothing: every member is skipped.
#[derive(Debug, PartialEq, Deserialize)]
struct Ignored {}

#[test]
fn every_shape_answers_what_the_map_path_answers() {
    let k = keys();
    let validations = [
        audience_api().with_issuer("iss"),
        Validation::new().allow_any_audience(),
        Validation::new().allow_any_audience().allow_missing_exp(),
    ];
    let base = [
        ("sub", "\"a\""),
        ("exp", "2000"),
        ("aud", "\"api\""),
        ("iss", "\"iss\""),
    ];
    let odd_values = [
        "null",
        "true",
        "\"x\"",
        "\"2000\"",
        "5",
        "1500.5",
        "-1",
        "18446744073709551615",
        "[]",
        "[\"api\"]",
        "[\"api\",1]",
        "[\"api\",null]",
        "[[\"api\"]]",
        "{}",
        "{\"a\":1}",
        "{\"a\":1,\"a\":1}",
        "[{\"a\":1,\"a\":1}]",
        "\"\\u0061pi\"",
        "\"i\\u0073s\"",
    ];
    let mut payloads: Vec<String> = Vec::new();
    for claim in ["exp", "nbf", "iat", "iss", "aud", "sub", "other"] {
        for odd in odd_values {
            let mut members: Vec<(&str, &str)> = base.iter().copied().filter(|(n, _)| *n != claim).collect();
            members.push((claim, odd));
            payloads.push(object_of(&members));
        }
    }
    // Escaped names: the same members, or new ones.
    for name in [
        "\\u0065xp",
        "\\u006ebf",
        "i\\u0073s",
        "\\u0061ud",
        "\\u0073ub",
        "o\\u0074her",
    ] {
        let mut members: Vec<(&str, &str)> = base.to_vec();
        members.push((name, "1"));
        payloads.push(object_of(&members));
        let renamed: Vec<(&str, &str)> = base
            .iter()
            .map(|&(n, x)| {
                (
                    if name.replace("\\u00", "").len() == n.len() + 2 {
                        name
                    } else {
                        n
                    },
                    x,
                )
            })
            .collect();
        payloads.push(object_of(&renamed));
    }
    for top in [
        "[]",
        "[{\"exp\":2000}]",
        "\"x\"",
        "1",
        "null",
        "{} {}",
        "{\"exp\":2000} x",
        "",
    ] {
        payloads.push(top.to_owned());
    }
    for p in &payloads {
        for v in &validations {
            same_answer(&k, p.as_bytes(), v);
        }
    }
    // Not UTF-8, alone or after another error.
    let bytes: [&[u8]; 4] = [
        b"{\"sub\":\"\xff\",\"exp\":2000}",
        b"{\"sub\":\"a\",\"exp\":2000,\"x\":{\"y\":1,\"y\":1},\"z\":\"\xc3\"}",
        b"{\"sub\":\"a\",\"exp\":2000}\xff",
        b"{\"sub\":\"\xc3\xa9\",\"exp\":2000}",
    ];
    for p in bytes {
        for v in &validations {
            same_answer(&k, p, v);
        }
    }
}

fn object_of(members: &[(&str, &str)]) -> String {
    let body: Vec<String> = members.iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

// ---------------------------------------------------------------------------------------
// The typed path against the map path on generated payloads.

/// A member name: the registered ones, an escaped spelling of one, and others.
fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "exp",
        "nbf",
        "iat",
        "iss",
        "aud",
        "sub",
        "scope",
        "x",
        "y",
        "z",
        "\\u0065xp",
        "au\\u0064",
    ])
}

/// A JSON value as text: every type, dates around `NOW`, objects with possibly
/// repeated names.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "0",
        "999",
        "1000",
        "1029",
        "1030",
        "2000",
        "-5",
        "1000.7",
        "2e3",
        "1e30",
        "-0",
        "18446744073709551615",
        "9223372036854775808",
        "null",
        "true",
        "\"api\"",
        "\"iss\"",
        "\"web\"",
        "\"\\u0061pi\"",
        "\"a\"",
        "[]",
        "{}",
    ])
    .prop_map(str::to_owned);
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((name(), inner), 0..3).prop_map(|members| object(&members)),
        ]
    })
}

fn object(members: &[(&str, String)]) -> String {
    let body: Vec<String> = members.iter().map(|(n, v)| format!("\"{n}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// A numeric date, mostly; sometimes any value.
fn date() -> impl Strategy<Value = String> {
    let numbers = prop::sample::select(vec![
        "0",
        "999",
        "1000",
        "1029",
        "1030",
        "1500",
        "2000",
        "2600",
        "-5",
        "1000.7",
        "2e3",
        "1e30",
        "-0",
        "18446744073709551615",
    ])
    .prop_map(str::to_owned);
    prop_oneof![4 => numbers, 1 => value()]
}

/// A string, mostly; sometimes any value.
fn text() -> impl Strategy<Value = String> {
    let strings = prop::sample::select(vec!["\"api\"", "\"iss\"", "\"web\"", "\"\\u0061pi\"", "\"i\\u0073s\""])
        .prop_map(str::to_owned);
    prop_oneof![4 => strings, 1 => value()]
}

/// `aud`: a string or an array of strings, mostly.
fn audience() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => text(),
        2 => prop::collection::vec(text(), 0..3).prop_map(|items| format!("[{}]", items.join(","))),
    ]
}

/// A payload: an object with each registered claim present or not, a few more members
/// (possibly repeating one), and now and then broken around the object.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let registered = (
        prop::option::weighted(0.85, date()),
        prop::option::weighted(0.3, date()),
        prop::option::weighted(0.3, date()),
        prop::option::weighted(0.5, text()),
        prop::option::weighted(0.6, audience()),
        prop::option::weighted(0.5, text()),
    );
    let extra = prop::collection::vec((name(), value()), 0..2);
    (registered, extra, 0..16u8).prop_map(|((exp, nbf, iat, iss, aud, sub), extra, wrap)| {
        let named = [
            ("exp", exp),
            ("nbf", nbf),
            ("iat", iat),
            ("iss", iss),
            ("aud", aud),
            ("sub", sub),
        ];
        let mut members: Vec<(&str, String)> = named.into_iter().filter_map(|(n, v)| Some((n, v?))).collect();
        members.extend(extra);
        let text = object(&members);
        let text = match wrap {
            0 => format!("{text} x"),
            1 => format!("[{text}]"),
            2 => format!("\u{feff}{text}"),
            3 => format!(" {text}\n"),
            _ => text,
        };
        text.into_bytes()
    })
}

fn validations() -> Vec<Validation> {
    vec![
        Validation::new(),
        audience_api(),
        audience_api().with_issuer("iss").with_leeway(std::time::Duration::ZERO),
        Validation::new()
            .with_audience("web")
            .with_audience("api")
            .with_issuer("iss"),
        Validation::new().allow_any_audience().allow_missing_exp(),
    ]
}

/// A lenient shape: fails only when `sub` or `scope` has a non-string value.
#[derive(Debug, PartialEq, Deserialize)]
struct Loose {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// A shape that reads every registered claim in its own way, and keeps the rest.
#[derive(Debug, PartialEq, Deserialize)]
struct Rich {
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_typed_path_answers_what_the_map_path_answers(p in payload(), now in prop::sample::select(vec![500i64, 1000, 1500, 2500])) {
        let k = KEYS.with(|k| k.clone());
        let t = signed(&k.signing, &p);
        for v in validations() {
            let map = as_map(&k, &t, &v, now).map(|x| (x.kid, x.alg, x.claims));
            let typed = as_type::<Map<String, Value>>(&k, &t, &v, now).map(|x| (x.kid, x.alg, x.claims));
            prop_assert_eq!(&typed, &map, "{}", String::from_utf8_lossy(&p));
            let loose = as_type::<Loose>(&k, &t, &v, now).map(|x| x.claims);
            let want = map.clone().and_then(|(_, _, m)| {
                Loose::deserialize(&m).map_err(|_| TokenError::ClaimsShape)
            });
            prop_assert_eq!(loose, want, "{}", String::from_utf8_lossy(&p));
            let rich = as_type::<Rich>(&k, &t, &v, now).map(|x| x.claims);
            let want = map.clone().and_then(|(_, _, m)| {
                Rich::deserialize(&m).map_err(|_| TokenError::ClaimsShape)
            });
            prop_assert_eq!(rich, want, "{}", String::from_utf8_lossy(&p));
        }
    }
}

thread_local! {
    static KEYS: Arc<Keys> = Arc::new(keys());
}
