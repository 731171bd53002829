use super::decode::decode_with_known_header;
use super::*;
use crate::alg::RsaBits;
use crate::key::PrivateKey;
use serde_json::json;

struct Fixture {
    key: SigningKey,
    vk: VerifyingKey,
    header: String,
}

fn fixture() -> Fixture {
    let k = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    Fixture {
        key: k.signing_key(),
        vk: k.public_key().verifying_key().expect("vk"),
        header: encode_header(Algorithm::EdDsa, "k1"),
    }
}

fn check(f: &Fixture, token: &str, v: &Validation, now: i64) -> Result<Verified, TokenError> {
    verify_with_lookup(token, |kid| (kid == "k1").then_some(&f.vk), v, now)
}

fn raw_token(f: &Fixture, header: &Value, payload: &[u8]) -> String {
    let h = b64::encode(&serde_json::to_vec(header).expect("json"));
    let input = format!("{h}.{}", b64::encode(payload));
    let sig = f.key.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64::encode(&sig))
}

#[test]
fn sign_then_verify_and_exp_boundary() {
    let f = fixture();
    let t = sign(&f.key, &f.header, &json!({"sub":"a","exp":1000}), 900, 3600).expect("sign");
    let v = Validation::new().with_leeway(Duration::ZERO);
    assert_eq!(check(&f, &t, &v, 999).map(|x| x.kid).ok().as_deref(), Some("k1"));
    assert_eq!(check(&f, &t, &v, 1000).err(), Some(TokenError::Expired));
    let v = Validation::new().with_leeway(Duration::from_secs(10));
    assert!(check(&f, &t, &v, 1009).is_ok());
    assert_eq!(check(&f, &t, &v, 1010).err(), Some(TokenError::Expired));
}

#[test]
fn signing_requires_bounded_exp() {
    let f = fixture();
    assert!(matches!(
        sign(&f.key, &f.header, &json!({"sub":"a"}), 0, 60),
        Err(SignError::MissingExp)
    ));
    assert!(matches!(
        sign(&f.key, &f.header, &json!({"exp":"100"}), 0, 60),
        Err(SignError::MissingExp)
    ));
    assert!(matches!(
        sign(&f.key, &f.header, &json!({"exp":61}), 0, 60),
        Err(SignError::TtlTooLong {
            requested_secs: 61,
            max_secs: 60
        })
    ));
    assert!(matches!(
        sign(&f.key, &f.header, &[1, 2], 0, 60),
        Err(SignError::Claims(_))
    ));
}

#[test]
fn every_structural_rule_is_enforced() {
    let f = fixture();
    let v = Validation::new();
    let good = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), br#"{"exp":100}"#);
    assert!(check(&f, &good, &v, 0).is_ok());
    // size cap before parsing
    let big = "a".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
    assert_eq!(check(&f, &big, &v, 0).err(), Some(TokenError::TooLarge { max: 8192 }));
    // segments
    assert!(matches!(check(&f, "a.b", &v, 0), Err(TokenError::Malformed(_))));
    assert!(matches!(
        check(&f, &format!("{good}.x"), &v, 0),
        Err(TokenError::Malformed(_))
    ));
    // padding, whitespace
    let (h, rest) = good.split_once('.').expect("dot");
    assert!(matches!(
        check(&f, &format!("{h}=.{rest}"), &v, 0),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        check(&f, &format!(" {good}"), &v, 0),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        check(&f, &format!("{good}\n"), &v, 0),
        Err(TokenError::Malformed(_))
    ));
    // duplicate members in header and payload
    let dup_h = format!("{}.{}", b64::encode(br#"{"alg":"EdDSA","kid":"k1","kid":"k2"}"#), rest);
    assert_eq!(
        check(&f, &dup_h, &v, 0).err(),
        Some(TokenError::DuplicateMember("header"))
    );
    let dup_p = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), br#"{"exp":100,"exp":1}"#);
    assert_eq!(
        check(&f, &dup_p, &v, 0).err(),
        Some(TokenError::DuplicateMember("payload"))
    );
    // BOM in payload
    let bom = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), b"\xEF\xBB\xBF{\"exp\":100}");
    assert!(matches!(check(&f, &bom, &v, 0), Err(TokenError::Malformed(_))));
    // kid
    let no_kid = raw_token(&f, &json!({"alg":"EdDSA"}), br#"{"exp":100}"#);
    assert_eq!(check(&f, &no_kid, &v, 0).err(), Some(TokenError::MissingKid));
    let other = raw_token(&f, &json!({"alg":"EdDSA","kid":"k9"}), br#"{"exp":100}"#);
    assert_eq!(check(&f, &other, &v, 0).err(), Some(TokenError::UnknownKid));
    // alg must match the key
    // (Issue 11: "Ed25519", RFC 9864's name for an EdDSA key, moved to the accepted side.)
    for alg in ["none", "HS256", "RS256", "PS256", "ES256", "Ed448", "eddsa", "ed25519"] {
        let t = raw_token(&f, &json!({"alg":alg,"kid":"k1"}), br#"{"exp":100}"#);
        assert!(
            matches!(check(&f, &t, &v, 0), Err(TokenError::AlgorithmMismatch { .. })),
            "{alg}"
        );
    }
    let ed25519 = raw_token(&f, &json!({"alg":"Ed25519","kid":"k1"}), br#"{"exp":100}"#);
    assert!(check(&f, &ed25519, &v, 0).is_ok());
    // forbidden members
    for m in ["crit", "jku", "x5u", "jwk", "x5c", "b64"] {
        let mut h = json!({"alg":"EdDSA","kid":"k1"});
        h[m] = json!(["x"]);
        let t = raw_token(&f, &h, br#"{"exp":100}"#);
        assert_eq!(check(&f, &t, &v, 0).err(), Some(TokenError::ForbiddenHeader(m)), "{m}");
    }
    // bad signature: flip one bit in the payload
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64::encode(br#"{"exp":101}"#);
    assert_eq!(check(&f, &parts.join("."), &v, 0).err(), Some(TokenError::BadSignature));
    // payload not an object
    let arr = raw_token(&f, &json!({"alg":"EdDSA","kid":"k1"}), b"[1]");
    assert!(matches!(check(&f, &arr, &v, 0), Err(TokenError::Malformed(_))));
}

#[test]
fn claims_rules() {
    let f = fixture();
    let h = json!({"alg":"EdDSA","kid":"k1"});
    let v = Validation::new().with_leeway(Duration::ZERO);
    let t = |p: Value| raw_token(&f, &h, &serde_json::to_vec(&p).expect("json"));
    assert_eq!(
        check(&f, &t(json!({})), &v, 0).err(),
        Some(TokenError::MissingClaim("exp"))
    );
    assert!(check(&f, &t(json!({})), &v.clone().allow_missing_exp(), 0).is_ok());
    assert_eq!(
        check(&f, &t(json!({"exp":"100"})), &v, 0).err(),
        Some(TokenError::InvalidClaim("exp"))
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100,"nbf":50})), &v, 49).err(),
        Some(TokenError::NotYetValid)
    );
    assert!(check(&f, &t(json!({"exp":100,"nbf":50})), &v, 50).is_ok());
    assert_eq!(
        check(&f, &t(json!({"exp":100,"iat":60})), &v, 59).err(),
        Some(TokenError::IssuedInFuture)
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100,"iat":true})), &v, 59).err(),
        Some(TokenError::InvalidClaim("iat"))
    );
    // overflow-safe numeric dates
    assert!(check(&f, &t(json!({"exp":u64::MAX})), &v, i64::MAX - 1).is_ok());
    assert!(check(&f, &t(json!({"exp":1e300})), &v, 0).is_ok());
    assert_eq!(
        check(&f, &t(json!({"exp":-1e300})), &v, 0).err(),
        Some(TokenError::Expired)
    );
    let lv = Validation::new().with_leeway(Duration::from_secs(60));
    assert!(check(&f, &t(json!({"exp":i64::MAX})), &lv, i64::MAX).is_err());
    // issuer
    let vi = v.clone().with_issuer("https://a");
    assert!(check(&f, &t(json!({"exp":100,"iss":"https://a"})), &vi, 0).is_ok());
    assert_eq!(
        check(&f, &t(json!({"exp":100,"iss":"https://b"})), &vi, 0).err(),
        Some(TokenError::InvalidIssuer)
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100})), &vi, 0).err(),
        Some(TokenError::MissingClaim("iss"))
    );
    // audience: string or array
    let va = v.clone().with_audience("api");
    assert!(check(&f, &t(json!({"exp":100,"aud":"api"})), &va, 0).is_ok());
    assert!(check(&f, &t(json!({"exp":100,"aud":["x","api"]})), &va, 0).is_ok());
    assert_eq!(
        check(&f, &t(json!({"exp":100,"aud":["x"]})), &va, 0).err(),
        Some(TokenError::InvalidAudience)
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100,"aud":[1]})), &va, 0).err(),
        Some(TokenError::InvalidClaim("aud"))
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100})), &va, 0).err(),
        Some(TokenError::MissingClaim("aud"))
    );
    assert_eq!(
        check(&f, &t(json!({"exp":100,"aud":"api"})), &v, 0).err(),
        Some(TokenError::InvalidAudience)
    );
    assert!(
        check(
            &f,
            &t(json!({"exp":100,"aud":"api"})),
            &v.clone().allow_any_audience(),
            0
        )
        .is_ok()
    );
}

#[test]
fn a_required_type_is_enforced() {
    let f = fixture();
    let with_typ = |typ: Option<Value>| {
        let mut h = json!({"alg":"EdDSA","kid":"k1"});
        if let Some(t) = typ {
            h["typ"] = t;
        }
        raw_token(&f, &h, br#"{"exp":100}"#)
    };
    let at = Validation::new().with_required_type("at+jwt");
    assert_eq!(at.required_type(), Some("application/at+jwt"));
    for same in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"] {
        assert!(check(&f, &with_typ(Some(json!(same))), &at, 0).is_ok(), "{same}");
    }
    for other in [
        "JWT",
        "jwt",
        "text/at+jwt",
        "at+jwt; charset=utf-8",
        "application/",
        "",
        "at",
    ] {
        assert_eq!(
            check(&f, &with_typ(Some(json!(other))), &at, 0).err(),
            Some(TokenError::InvalidType),
            "{other:?}"
        );
    }
    assert_eq!(
        check(&f, &with_typ(None), &at, 0).err(),
        Some(TokenError::InvalidType),
        "a missing typ is refused"
    );
    assert!(matches!(
        check(&f, &with_typ(Some(json!(5))), &at, 0),
        Err(TokenError::Malformed(_))
    ));
    // The required type may itself be written in full, in any case.
    let full = Validation::new().with_required_type("Application/AT+JWT");
    assert!(check(&f, &with_typ(Some(json!("at+jwt"))), &full, 0).is_ok());
    // Without a requirement any string typ (or none) is accepted, as before.
    let any = Validation::new();
    assert!(check(&f, &with_typ(None), &any, 0).is_ok());
    assert!(check(&f, &with_typ(Some(json!("secevent+jwt"))), &any, 0).is_ok());
    // Every entry point applies the rule.
    let jwt = with_typ(Some(json!("JWT")));
    assert_eq!(decode_header(&jwt, &at).err(), Some(TokenError::InvalidType));
    assert_eq!(
        verify_with_key(&jwt, &f.vk, &at, 0).err(),
        Some(TokenError::InvalidType)
    );
    assert_eq!(check_header_type(&jwt, &at), Err(TokenError::InvalidType));
    assert_eq!(check_header_type(&with_typ(Some(json!("at+jwt"))), &at), Ok(()));
}

#[test]
fn the_known_header_fast_path_still_enforces_the_type() {
    let f = fixture();
    let claims = json!({"exp":100});
    let jwt = sign(&f.key, &f.header, &claims, 0, 3600).expect("sign");
    let at_header = encode_header_with_type(Algorithm::EdDsa, "k1", "at+jwt");
    let at_jwt = sign(&f.key, &at_header, &claims, 0, 3600).expect("sign");
    let header: Value = serde_json::from_slice(&b64::decode(&at_header).expect("b64")).expect("json");
    assert_eq!(header, json!({"alg":"EdDSA","kid":"k1","typ":"at+jwt"}));
    let header: Value = serde_json::from_slice(&b64::decode(&f.header).expect("b64")).expect("json");
    assert_eq!(header["typ"], DEFAULT_TOKEN_TYPE);

    let at = Validation::new().with_required_type("at+jwt");
    let fast = |t: &str, typ: Option<&str>| {
        decode_with_known_typed_header(
            t,
            t.split('.').next().unwrap_or_default(),
            &at,
            "k1",
            Algorithm::EdDsa,
            typ,
        )
        .and_then(|u| u.verify_into::<AsMap>(&f.vk, &at, 0))
        .map(|v| v.kid)
    };
    // The typ of the known header unknown: the header is read.
    assert_eq!(fast(&jwt, None), Err(TokenError::InvalidType));
    assert_eq!(fast(&at_jwt, None).as_deref(), Ok("k1"));
    assert_eq!(
        decode_with_known_header(&jwt, &at, "k1", Algorithm::EdDsa).err(),
        Some(TokenError::InvalidType)
    );
    // The typ known: compared without reading the header.
    assert_eq!(fast(&at_jwt, Some("at+jwt")).as_deref(), Ok("k1"));
    assert_eq!(fast(&jwt, Some("JWT")), Err(TokenError::InvalidType));
    // No requirement: the fast path as before.
    let any = Validation::new();
    assert!(
        decode_with_known_header(&jwt, &any, "k1", Algorithm::EdDsa)
            .and_then(|u| u.verify_into::<AsMap>(&f.vk, &any, 0))
            .is_ok()
    );
}

#[test]
fn errors_do_not_echo_token_contents() {
    let f = fixture();
    let t = raw_token(
        &f,
        &json!({"alg":"secret-alg-value-long","kid":"k1"}),
        br#"{"exp":100}"#,
    );
    let e = check(&f, &t, &Validation::new(), 0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!e.contains("secret-alg"), "{e}");
}
