//! PKCS#11 signing custody against a real SoftHSM2 (each test has its own token directory
//! and process, see `pkcs11/softhsm.rs`): keys made on the token sign JWS tokens that
//! keyrot-core verifies. Needs `softhsm2-util` and the module
//! (`KEYROT_TEST_SOFTHSM2_MODULE`); without them each test prints `skipped …`, or fails
//! when `CI=true`.
#![cfg(feature = "pkcs11")]
#![allow(clippy::unwrap_used)] // a failed step is a failed test

#[path = "pkcs11/softhsm.rs"]
#[allow(dead_code)] // shared with tests/pkcs11.rs, which uses all of it
mod softhsm;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use keyrot_core::custody::{CustodyError, RemoteKey, SigningCustody};
use keyrot_core::{Algorithm, KeySet, RsaBits, Validation, verify_with_key};
use keyrot_kms::pkcs11::Pkcs11Signing;
use softhsm::{Hsm, USER_PIN, flag, isolated};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ALGS: [Algorithm; 5] = [
    Algorithm::EdDsa,
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Rs256,
    Algorithm::Ps256,
];

/// The signing custody URI of `token` (no `object=`), the PIN in a file.
fn uri(hsm: &Hsm, token: &str) -> String {
    let pin = hsm.pin_file("pin", &format!("{USER_PIN}\n"));
    format!(
        "pkcs11:token={token}?module-path={}&pin-source=file:{}",
        hsm.module.display(),
        pin.display()
    )
}

async fn open(hsm: &Hsm, token: &str) -> Pkcs11Signing {
    Pkcs11Signing::open(&uri(hsm, token)).await.expect("open")
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The `CKA_ID` a reference names.
fn id_of(reference: &str) -> Vec<u8> {
    let hex = reference.split(";id=").nth(1).expect("an id");
    hex.split('%')
        .filter(|h| !h.is_empty())
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Every object (private and public keys) with `id` on the admin session.
fn objects(admin: &Session, id: &[u8]) -> Vec<ObjectHandle> {
    admin.find_objects(&[Attribute::Id(id.to_vec())]).unwrap()
}

fn private_key(admin: &Session, id: &[u8]) -> ObjectHandle {
    let found = admin
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(id.to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "one private key");
    found[0]
}

fn sign_flag(admin: &Session, key: ObjectHandle) -> bool {
    match admin.get_attributes(key, &[AttributeType::Sign]).unwrap().as_slice() {
        [Attribute::Sign(b)] => *b,
        other => panic!("{other:?}"),
    }
}

/// A compact JWS signed through `custody` with `key`: `header.payload.signature`.
async fn jws(custody: &Pkcs11Signing, key: &RemoteKey, alg: Algorithm, kid: &str) -> String {
    let header = serde_json::json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({"sub": "pkcs11", "iat": now(), "exp": now() + 300});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = custody
        .sign(&key.reference, alg, input.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("sign {alg}: {e}"));
    let expected = match alg {
        Algorithm::EdDsa | Algorithm::Es256 => 64,
        Algorithm::Es384 => 96,
        _ => 256,
    };
    assert_eq!(signature.len(), expected, "{alg}: JWS signature length");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Verifies `token` with keyrot-core twice: the key's verifying key, and a JWKS holding
/// the key under `kid`. A flipped signature bit must fail.
fn verify(token: &str, key: &RemoteKey, kid: &str) {
    let v = Validation::new();
    let alg = key.public.algorithm();
    let verifying = key.public.verifying_key().unwrap();
    verify_with_key(token, &verifying, &v, now()).unwrap_or_else(|e| panic!("{alg}: {e}"));
    let jwks = serde_json::json!({"keys": [key.public.to_jwk(kid)]}).to_string();
    let set = KeySet::from_jwks(jwks.as_bytes(), &v).unwrap();
    set.verify(token, &v, now())
        .unwrap_or_else(|e| panic!("{alg} via KeySet: {e}"));

    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[5] ^= 0x01;
    let altered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert!(
        verify_with_key(&altered, &verifying, &v, now()).is_err(),
        "{alg}: an altered signature verifies"
    );
}

fn assert_no_pin(errors: &[CustodyError]) {
    for e in errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(USER_PIN), "an error shows the PIN: {text}");
    }
}

#[test]
fn every_algorithm_signs_tokens_keyrot_verifies() {
    isolated("every_algorithm_signs_tokens_keyrot_verifies", |hsm: Hsm| async move {
        hsm.init_token("sign");
        let custody = open(&hsm, "sign").await;
        assert_eq!(custody.backend(), "pkcs11");
        let local = open(&hsm, "sign").await.with_local_hashing();
        let admin = hsm.admin("sign");
        let mut timings = Vec::new();
        for alg in ALGS {
            custody
                .supports(alg, RsaBits::B2048)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            let start = Instant::now();
            let key = custody
                .create(&format!("keyrot-sign-{alg}"), alg, RsaBits::B2048)
                .await
                .unwrap_or_else(|e| panic!("create {alg}: {e}"));
            let created = start.elapsed();
            assert_eq!(key.public.algorithm(), alg);
            assert!(key.reference.starts_with("pkcs11:token=sign;id=%"), "{}", key.reference);
            assert!(!key.reference.contains("module") && !key.reference.contains("pin"));
            let id = id_of(&key.reference);
            assert_eq!(id.len(), 16, "16 random bytes of CKA_ID");

            // The private key never leaves the token.
            let private = private_key(&admin, &id);
            assert!(!flag(&admin, private, AttributeType::Extractable), "{alg}");
            assert!(flag(&admin, private, AttributeType::Sensitive), "{alg}");
            assert!(flag(&admin, private, AttributeType::NeverExtractable), "{alg}");
            assert!(flag(&admin, private, AttributeType::Private), "{alg}");
            assert!(flag(&admin, private, AttributeType::Token), "{alg}");
            assert_eq!(objects(&admin, &id).len(), 2, "{alg}: a private and a public key");

            let start = Instant::now();
            let token = jws(&custody, &key, alg, "kid-1").await;
            let signed = start.elapsed();
            verify(&token, &key, "kid-1");
            // A second signature with the cached handle, and the local-hashing path.
            verify(&jws(&custody, &key, alg, "kid-1").await, &key, "kid-1");
            verify(&jws(&local, &key, alg, "kid-1").await, &key, "kid-1");
            timings.push(format!("{alg}: create {created:?}, first sign {signed:?}"));
        }
        // Wrong algorithm for a key: a configuration error, not a bad signature.
        let ed = custody
            .create("keyrot-sign-x", Algorithm::EdDsa, RsaBits::B2048)
            .await
            .unwrap();
        let e = custody.sign(&ed.reference, Algorithm::Es256, b"m").await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Config(_)) && e.to_string().contains("Ed25519"),
            "{e}"
        );
        println!("pkcs11 signing timings (SoftHSM2): {}", timings.join("; "));
    });
}

#[test]
fn find_list_disable_and_destroy() {
    isolated("find_list_disable_and_destroy", |hsm: Hsm| async move {
        hsm.init_token("keys");
        hsm.init_token("other");
        let custody = open(&hsm, "keys").await;
        let admin = hsm.admin("keys");
        let a1 = custody
            .create("keyrot-a-1", Algorithm::Es256, RsaBits::B2048)
            .await
            .unwrap();
        let a2 = custody
            .create("keyrot-a-2", Algorithm::EdDsa, RsaBits::B2048)
            .await
            .unwrap();
        let b1 = custody
            .create("keyrot-b-1", Algorithm::Es256, RsaBits::B2048)
            .await
            .unwrap();
        let mut errors = Vec::new();

        // find: by reference and by label, the same public key and reference.
        let found = custody.find(&a1.reference, Algorithm::Es256).await.unwrap();
        assert_eq!(
            (found.public.clone(), found.reference.clone()),
            (a1.public.clone(), a1.reference.clone())
        );
        let by_label = custody
            .find("pkcs11:token=keys;object=keyrot-a-2", Algorithm::EdDsa)
            .await
            .unwrap();
        assert_eq!(
            (by_label.public, by_label.reference),
            (a2.public.clone(), a2.reference.clone())
        );
        // Another process's custody (a fresh one here) finds it too.
        let again = open(&hsm, "keys")
            .await
            .find(&a2.reference, Algorithm::EdDsa)
            .await
            .unwrap();
        assert_eq!(again.public, a2.public);
        let e = custody.find(&a1.reference, Algorithm::Es384).await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Config(_)) && e.to_string().contains("P-256"),
            "{e}"
        );
        errors.push(e);
        // Another token, a missing id, not a reference.
        let elsewhere = a1.reference.replace("token=keys", "token=other");
        let e = custody.find(&elsewhere, Algorithm::Es256).await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Denied { .. }) && e.to_string().contains("another token"),
            "{e}"
        );
        errors.push(e);
        let e = custody.sign(&elsewhere, Algorithm::Es256, b"m").await.unwrap_err();
        assert!(matches!(e, CustodyError::Denied { .. }), "{e}");
        errors.push(e);
        let missing = "pkcs11:token=keys;id=%00%01%02";
        for e in [
            custody.find(missing, Algorithm::Es256).await.unwrap_err(),
            custody.sign(missing, Algorithm::Es256, b"m").await.unwrap_err(),
        ] {
            assert!(
                matches!(e, CustodyError::Denied { .. }) && e.to_string().contains("no private key"),
                "{e}"
            );
            errors.push(e);
        }
        for bad in ["keys:1", "pkcs11:token=keys", "pkcs11:token=keys;id=%01?pin-value=1234"] {
            let e = custody.find(bad, Algorithm::Es256).await.unwrap_err();
            assert!(
                matches!(e, CustodyError::Config(_)) && !e.to_string().contains("1234"),
                "{e}"
            );
            errors.push(e);
        }

        // list: exactly the keys under the prefix.
        let mut a = vec![a1.reference.clone(), a2.reference.clone()];
        a.sort();
        assert_eq!(custody.list("keyrot-a-").await.unwrap(), a);
        assert_eq!(custody.list("keyrot-b-").await.unwrap(), vec![b1.reference.clone()]);
        assert!(custody.list("keyrot-c-").await.unwrap().is_empty());

        // disable: CKA_SIGN cleared, signing refused, find refuses it too.
        custody.sign(&a1.reference, Algorithm::Es256, b"before").await.unwrap();
        assert!(custody.disable(&a1.reference).await.unwrap());
        assert!(!sign_flag(&admin, private_key(&admin, &id_of(&a1.reference))));
        let e = custody
            .sign(&a1.reference, Algorithm::Es256, b"after")
            .await
            .unwrap_err();
        assert!(matches!(e, CustodyError::Denied { .. }), "{e:?}");
        errors.push(e);
        let e = custody.find(&a1.reference, Algorithm::Es256).await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Denied { .. }) && e.to_string().contains("CKA_SIGN"),
            "{e}"
        );
        errors.push(e);
        custody
            .sign(&b1.reference, Algorithm::Es256, b"others still sign")
            .await
            .unwrap();

        // destroy: both objects gone; again is Ok; the key no longer signs or lists.
        let id = id_of(&a1.reference);
        assert_eq!(objects(&admin, &id).len(), 2);
        custody.destroy(&a1.reference).await.unwrap();
        assert_eq!(objects(&admin, &id).len(), 0, "private and public key destroyed");
        custody.destroy(&a1.reference).await.unwrap();
        let e = custody.sign(&a2.reference, Algorithm::EdDsa, b"m").await.map(|_| ());
        assert!(e.is_ok(), "{e:?}");
        custody.destroy(&a2.reference).await.unwrap();
        let e = custody.sign(&a2.reference, Algorithm::EdDsa, b"m").await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Denied { .. }),
            "a destroyed key's cached handle: {e:?}"
        );
        errors.push(e);
        assert!(custody.list("keyrot-a-").await.unwrap().is_empty());
        assert_eq!(custody.list("keyrot-").await.unwrap(), vec![b1.reference.clone()]);
        assert_no_pin(&errors);
    });
}

#[test]
fn unfit_and_unmodifiable_keys() {
    isolated("unfit_and_unmodifiable_keys", |hsm: Hsm| async move {
        hsm.init_token("unfit");
        let admin = hsm.admin("unfit");
        let plant = |label: &str, extractable: bool, sensitive: bool, modifiable: bool| {
            let public = [
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(label.as_bytes().to_vec()),
                Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
                Attribute::Verify(true),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(label.as_bytes().to_vec()),
                Attribute::KeyType(KeyType::EC),
                Attribute::Sensitive(sensitive),
                Attribute::Extractable(extractable),
                Attribute::Modifiable(modifiable),
                Attribute::Sign(true),
            ];
            admin
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .unwrap();
        };
        plant("exportable", true, true, true);
        plant("readable", false, false, true);
        plant("fixed", false, true, false);
        let custody = open(&hsm, "unfit").await;
        for (label, why) in [("exportable", "is extractable"), ("readable", "is not sensitive")] {
            let reference = format!("pkcs11:token=unfit;object={label}");
            let e = custody.find(&reference, Algorithm::Es256).await.unwrap_err();
            assert!(
                matches!(e, CustodyError::Config(_)) && e.to_string().contains(why),
                "{e}"
            );
            let e = custody.sign(&reference, Algorithm::Es256, b"m").await.unwrap_err();
            assert!(
                matches!(e, CustodyError::Config(_)) && e.to_string().contains(why),
                "{e}"
            );
        }
        // An existing, fit key the token will not modify: brought, signs, cannot be disabled.
        let fixed = custody
            .find("pkcs11:token=unfit;object=fixed", Algorithm::Es256)
            .await
            .unwrap();
        assert_eq!(fixed.reference, "pkcs11:token=unfit;id=%66%69%78%65%64");
        let token = jws(&custody, &fixed, Algorithm::Es256, "k").await;
        verify(&token, &fixed, "k");
        assert!(
            !custody.disable(&fixed.reference).await.unwrap(),
            "CKA_MODIFIABLE=false"
        );
        custody
            .sign(&fixed.reference, Algorithm::Es256, b"still signs")
            .await
            .unwrap();
        custody.destroy(&fixed.reference).await.unwrap();
        assert!(objects(&admin, b"fixed").is_empty());
    });
}

#[test]
fn uris_pins_and_a_token_that_goes_away() {
    isolated("uris_pins_and_a_token_that_goes_away", |hsm: Hsm| async move {
        hsm.init_token("away");
        let module = hsm.module.display().to_string();
        let mut errors = Vec::new();
        // object= names one key: refused for signing custody.
        let e = Pkcs11Signing::open(&hsm.uri("away", "kek")).await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Config(_)) && e.to_string().contains("names only the token"),
            "{e}"
        );
        errors.push(e);
        let wrong = format!("pkcs11:token=away?module-path={module}&pin-value=wrong-0000");
        let e = Pkcs11Signing::open(&wrong).await.unwrap_err();
        assert!(
            matches!(e, CustodyError::Denied { .. }) && !e.to_string().contains("wrong-0000"),
            "{e}"
        );
        errors.push(e);
        let e = Pkcs11Signing::open(&uri(&hsm, "absent")).await.unwrap_err();
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
        errors.push(e);

        // pin-value works (warned about) and is redacted everywhere.
        let by_value = format!("pkcs11:token=away?module-path={module}&pin-value={USER_PIN}");
        let custody = Pkcs11Signing::open(&by_value).await.unwrap();
        assert!(
            custody.location().contains("pin-value=[redacted]"),
            "{}",
            custody.location()
        );
        let shown = format!("{custody:?} {}", custody.location());
        assert!(!shown.contains(USER_PIN) && shown.contains("[redacted]"), "{shown}");
        custody.check().await.unwrap();
        let key = custody
            .create("keyrot-away-1", Algorithm::Es384, RsaBits::B2048)
            .await
            .unwrap();
        assert!(format!("{key:?}").contains("Es384"));

        // Another component logs the process out: the next calls log in again.
        hsm.admin("away").logout().unwrap();
        custody.check().await.unwrap();
        hsm.admin("away").logout().unwrap();
        verify(&jws(&custody, &key, Algorithm::Es384, "k").await, &key, "k");

        // The token disappears: Unavailable from check and sign (cached handle or not).
        hsm.remove_tokens();
        let e = custody.check().await.unwrap_err();
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
        errors.push(e);
        let e = custody.sign(&key.reference, Algorithm::Es384, b"m").await.unwrap_err();
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
        println!("after the token was removed: {e}");
        errors.push(e);
        let e = custody
            .create("keyrot-away-2", Algorithm::Es256, RsaBits::B2048)
            .await
            .unwrap_err();
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
        errors.push(e);
        let e = custody.list("keyrot-").await.unwrap_err();
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
        errors.push(e);
        assert_no_pin(&errors);
    });
}

#[test]
fn signing_timings() {
    isolated("signing_timings", |hsm: Hsm| async move {
        hsm.init_token("timing");
        let custody = std::sync::Arc::new(open(&hsm, "timing").await);
        let mut lines = Vec::new();
        for alg in ALGS {
            let key = custody.create("keyrot-timing-1", alg, RsaBits::B2048).await.unwrap();
            // Concurrent signers share the one session; every signature verifies.
            let start = Instant::now();
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let (custody, key) = (custody.clone(), key.clone());
                    tokio::spawn(async move { (jws(&custody, &key, alg, &format!("k{i}")).await, i) })
                })
                .collect();
            for t in tasks {
                let (token, i) = t.await.unwrap();
                verify(&token, &key, &format!("k{i}"));
            }
            let concurrent = start.elapsed();
            let mut times: Vec<Duration> = Vec::with_capacity(50);
            for _ in 0..50 {
                let start = Instant::now();
                custody.sign(&key.reference, alg, b"header.payload").await.unwrap();
                times.push(start.elapsed());
            }
            times.sort();
            lines.push(format!(
                "{alg} median {:?} (max {:?}; 16 concurrent {concurrent:?})",
                times[25], times[49]
            ));
        }
        println!("pkcs11 sign timings (SoftHSM2, 50 each): {}", lines.join(", "));
    });
}
