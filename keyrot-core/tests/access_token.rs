//! RFC 9068 access tokens: what `KeyRing::issue_access_token` writes, what it refuses to
//! issue, and what `Validation::require_access_token_profile` refuses, on the claims-map
//! path and the typed path alike.

use chrono::{TimeDelta, Utc};
use keyrot_core::{
    AccessToken, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy, RequestContext, RingName,
    Rotator, SignError, StandardClaims, TokenError, Validation,
};
use serde_json::{Value, json};
use std::sync::Arc;

const ISSUER: &str = "https://auth.example.com";
const API: &str = "https://api.example.com";

/// Three rings over one store: `plain` signs `typ` `JWT` with the default validation,
/// `typed` signs `at+jwt` (to forge profile-violating tokens), `strict` verifies with
/// the access-token profile, issuer and audience required.
struct Rings {
    plain: KeyRing,
    typed: KeyRing,
    strict: KeyRing,
}

async fn rings() -> Rings {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("access").expect("ring");
    let policy = Policy::builder()
        .with_max_token_ttl(std::time::Duration::from_secs(900))
        .build()
        .expect("policy");
    let build = |b: keyrot_core::KeyRingBuilder| b.with_policy(policy.clone());
    let plain = build(KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()))
        .build()
        .await
        .expect("plain");
    Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::default()),
        sealer.clone(),
    )
    .with_keyring(plain.clone())
    .build()
    .init(RequestContext::actor("t"))
    .await
    .expect("init");
    let typed = build(KeyRing::builder(ring.clone(), storage.clone(), sealer.clone()))
        .with_token_type("at+jwt")
        .build()
        .await
        .expect("typed");
    let strict = build(KeyRing::builder(ring, storage, sealer))
        .with_validation(
            Validation::new()
                .with_issuer(ISSUER)
                .with_audience(API)
                .require_access_token_profile(),
        )
        .build()
        .await
        .expect("strict");
    Rings { plain, typed, strict }
}

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("segment");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, seg).expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test]
async fn an_issued_token_carries_every_member_of_the_profile() {
    let r = rings().await;
    let request = AccessToken::new(ISSUER, "alice", "web-app", API)
        .with_scopes(["profile", "read", "profile"])
        .with_lifetime(TimeDelta::minutes(10))
        .with_claim("auth_time", 1_700_000_000);
    // A ring of type JWT still writes at+jwt for access tokens.
    let issued = r.plain.issue_access_token(&request).await.expect("issued");
    let header = part(issued.token(), 0);
    assert_eq!(header["typ"], "at+jwt");
    let claims = part(issued.token(), 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], API);
    assert_eq!(claims["client_id"], "web-app");
    assert_eq!(claims["scope"], "profile read");
    assert_eq!(claims["auth_time"], 1_700_000_000);
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 600);
    assert!((iat - Utc::now().timestamp()).abs() < 60);
    assert_eq!(claims["jti"], issued.jti());
    assert_eq!(issued.jti().len(), 22, "128 bits of base64url");
    assert_eq!((issued.expires_in(), issued.scope()), (600, "profile read"));
    assert!(!format!("{issued:?}").contains(issued.token()), "Debug hides the token");

    let again = r.plain.issue_access_token(&request).await.expect("issued");
    assert_ne!(again.jti(), issued.jti(), "every token has its own jti");

    let verified = r.strict.verify(issued.token()).expect("the profile holds");
    assert_eq!(verified.claims["sub"], "alice");
    let typed = r
        .strict
        .verify_as::<StandardClaims>(issued.token())
        .expect("typed path");
    assert_eq!(typed.claims.client_id.as_deref(), Some("web-app"));
}

#[tokio::test]
async fn lifetime_defaults_to_and_is_bounded_by_max_token_ttl() {
    let r = rings().await;
    let base = AccessToken::new(ISSUER, "svc", "svc", API);
    let issued = r.plain.issue_access_token(&base).await.expect("default lifetime");
    assert_eq!(issued.expires_in(), 900);
    let claims = part(issued.token(), 1);
    assert!(claims.get("scope").is_none(), "no scope member without scopes");
    let too_long = base.clone().with_lifetime(TimeDelta::minutes(16));
    assert!(matches!(
        r.plain.issue_access_token(&too_long).await,
        Err(SignError::TtlTooLong {
            requested_secs: 960,
            max_secs: 900
        })
    ));
    let zero = base.with_lifetime(TimeDelta::zero());
    assert!(matches!(
        r.plain.issue_access_token(&zero).await,
        Err(SignError::InvalidAccessToken(_))
    ));
    let many = AccessToken::new(ISSUER, "svc", "svc", API).with_audience("https://other.example.com");
    let issued = r.plain.issue_access_token(&many).await.expect("two audiences");
    assert_eq!(
        part(issued.token(), 1)["aud"],
        json!([API, "https://other.example.com"])
    );
}

#[tokio::test]
async fn bad_members_are_refused_before_signing() {
    let r = rings().await;
    let cases = [
        (AccessToken::new("", "s", "c", API), "iss must not be empty"),
        (AccessToken::new(ISSUER, "", "c", API), "sub must not be empty"),
        (AccessToken::new(ISSUER, "s", "", API), "client_id must not be empty"),
        (AccessToken::new(ISSUER, "s", "c", ""), "aud must not be empty"),
        (
            AccessToken::new(ISSUER, "s\n", "c", API),
            "sub contains a control character",
        ),
        (
            AccessToken::new(ISSUER, "s", "c", API).with_scopes(["read write"]),
            "is not a scope token",
        ),
        (
            AccessToken::new(ISSUER, "s", "c", API).with_scopes(["a\"b"]),
            "is not a scope token",
        ),
        (
            AccessToken::new(ISSUER, "s", "c", API).with_claim("exp", 1),
            "claim \"exp\" is set by the access token",
        ),
        (
            AccessToken::new(ISSUER, "s", "c", API).with_claim("sub", "mallory"),
            "claim \"sub\" is set by",
        ),
    ];
    for (request, expected) in cases {
        match r.plain.issue_access_token(&request).await {
            Err(SignError::InvalidAccessToken(reason)) => assert!(reason.contains(expected), "{reason}"),
            other => panic!("{request:?}: expected InvalidAccessToken({expected}), got {other:?}"),
        }
    }
}

/// Tokens signed `at+jwt` with one member of the profile missing or of the wrong type,
/// each from literal claims.
#[tokio::test]
async fn the_profile_refuses_each_missing_member() {
    let r = rings().await;
    let now = Utc::now().timestamp();
    let full = json!({
        "iss": ISSUER, "sub": "alice", "aud": API, "exp": now + 60, "iat": now,
        "jti": "j-1", "client_id": "web-app",
    });
    let without = |name: &str| {
        let mut c = full.clone();
        c.as_object_mut().expect("object").remove(name);
        c
    };
    let with = |name: &str, v: Value| {
        let mut c = full.clone();
        c[name] = v;
        c
    };
    #[derive(serde::Deserialize)]
    struct OnlyScope {
        #[allow(dead_code, reason = "deserialised to exercise the typed path")]
        scope: Option<String>,
    }
    let expect = |claims: Value, err: TokenError| {
        let token = r.typed.sign(&claims).expect("sign");
        assert_eq!(r.strict.verify(&token).err(), Some(err.clone()), "map path: {claims}");
        assert_eq!(
            r.strict.verify_as::<StandardClaims>(&token).err(),
            Some(err.clone()),
            "typed path: {claims}"
        );
        assert_eq!(
            r.strict.verify_as::<OnlyScope>(&token).err(),
            Some(err),
            "typed path, members the type ignores: {claims}"
        );
    };
    let token = r.typed.sign(&full).expect("sign");
    assert!(r.strict.verify(&token).is_ok());
    assert!(r.strict.verify_as::<OnlyScope>(&token).is_ok());
    expect(without("sub"), TokenError::MissingClaim("sub"));
    expect(without("client_id"), TokenError::MissingClaim("client_id"));
    expect(without("jti"), TokenError::MissingClaim("jti"));
    expect(without("iat"), TokenError::MissingClaim("iat"));
    expect(without("iss"), TokenError::MissingClaim("iss"));
    expect(without("aud"), TokenError::MissingClaim("aud"));
    expect(with("sub", json!(42)), TokenError::InvalidClaim("sub"));
    expect(
        with("client_id", json!(["web-app"])),
        TokenError::InvalidClaim("client_id"),
    );
    expect(with("jti", json!({"id": 1})), TokenError::InvalidClaim("jti"));
    expect(
        with("aud", json!("https://elsewhere.example.com")),
        TokenError::InvalidAudience,
    );

    // The same complete claims under `typ` JWT.
    let jwt = r.plain.sign(&full).expect("sign");
    assert_eq!(r.strict.verify(&jwt).err(), Some(TokenError::InvalidType));
    // Without the profile, a JWT lacking the members is fine.
    let lenient = Validation::new().with_issuer(ISSUER).with_audience(API);
    assert!(
        r.plain
            .verify_with(&r.plain.sign(&without("jti")).expect("sign"), &lenient, Utc::now())
            .is_ok()
    );
}

/// With any audience allowed, the profile still needs one.
#[tokio::test]
async fn the_profile_needs_an_audience_even_when_any_is_allowed() {
    let r = rings().await;
    let now = Utc::now().timestamp();
    let v = Validation::new().allow_any_audience().require_access_token_profile();
    assert!(v.requires_access_token_profile());
    assert_eq!(v.required_type(), Some("application/at+jwt"));
    let claims = |aud: Value| json!({"iss": ISSUER, "sub": "a", "aud": aud, "exp": now + 60, "iat": now, "jti": "j", "client_id": "c"});
    let ok = r.typed.sign(&claims(json!(["x"]))).expect("sign");
    assert!(r.plain.verify_with(&ok, &v, Utc::now()).is_ok());
    let empty = r.typed.sign(&claims(json!([]))).expect("sign");
    assert_eq!(
        r.plain.verify_with(&empty, &v, Utc::now()).err(),
        Some(TokenError::MissingClaim("aud"))
    );
}
