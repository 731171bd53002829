//! ES256 and ES384 (issue 11): key import and validation, sealing bytes, PEM, and every
//! signature keyrot must refuse (DER, wrong lengths, `r` or `s` zero or not below the
//! group order — the CVE-2022-21449 class — and the other curve's `alg`).

use keyrot_core::testing::{b64, token};
use keyrot_core::{Algorithm, KeyError, PrivateKey, PublicKey, RsaBits, TokenError, Validation};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("time fits in i64")
}

/// The order `n` of P-256, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order `n` of P-384, big-endian.
const P384_N: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0,
    0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

fn key(alg: Algorithm) -> PrivateKey {
    PrivateKey::generate(alg, RsaBits::B2048).expect("EC key generation")
}

fn invalid_rule(r: Result<PublicKey, KeyError>) -> String {
    match r {
        Err(KeyError::Invalid(reason)) => reason.to_string(),
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

#[test]
fn generated_keys_round_trip_through_jwk_secret_bytes_and_pem() {
    for (alg, crv, len) in [(Algorithm::Es256, "P-256", 32), (Algorithm::Es384, "P-384", 48)] {
        let k = key(alg);
        assert_eq!(k.algorithm(), alg);
        let public = k.public_key();
        let jwk = public.to_jwk("kid-1");
        let obj = jwk.as_object().expect("object");
        let mut names: Vec<&str> = obj.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(
            (&jwk["kty"], &jwk["crv"], &jwk["alg"]),
            (&json!("EC"), &json!(crv), &json!(alg.as_str()))
        );
        for c in ["x", "y"] {
            assert_eq!(
                b64::decode(jwk[c].as_str().expect("str")).expect("b64").len(),
                len,
                "{c}"
            );
        }
        assert_eq!(PublicKey::from_jwk(&jwk, None).expect("re-import"), public);
        assert_eq!(
            PublicKey::from_jwk(&jwk, Some(alg)).expect("re-import with hint"),
            public
        );

        // Sealing bytes: the raw scalar, exactly the field length.
        let secret = k.to_secret_bytes().expect("secret bytes");
        assert_eq!(secret.expose().len(), len);
        let back = PrivateKey::from_secret_bytes(alg, &secret).expect("from secret bytes");
        assert_eq!(back.public_key(), public);

        // Private JWK: kid kept.
        let mut private = jwk.clone();
        private["d"] = b64::encode(secret.expose()).into();
        let imported = PrivateKey::from_jwk(&private, None).expect("private JWK");
        assert_eq!(imported.kid.as_deref(), Some("kid-1"));
        assert_eq!(imported.key.public_key(), public);

        // PKCS#8 PEM, both ways; the curve decides the algorithm.
        let pem = k.to_pkcs8_pem().expect("pem");
        let pem = std::str::from_utf8(pem.expose()).expect("ascii");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let from_pem = PrivateKey::from_pkcs8_pem(pem, None).expect("PEM import");
        assert_eq!(from_pem.algorithm(), alg);
        assert_eq!(from_pem.public_key(), public);
        assert!(PrivateKey::from_pkcs8_pem(pem, Some(alg)).is_ok());
        let other = if alg == Algorithm::Es256 {
            Algorithm::Es384
        } else {
            Algorithm::Es256
        };
        for wrong in [other, Algorithm::EdDsa, Algorithm::Rs256] {
            assert!(
                matches!(
                    PrivateKey::from_pkcs8_pem(pem, Some(wrong)),
                    Err(KeyError::AlgorithmMismatch { .. })
                ),
                "{alg} PEM as {wrong}"
            );
            assert!(PrivateKey::from_secret_bytes(wrong, &secret).is_err() || wrong == Algorithm::EdDsa);
        }

        // Signatures are R‖S of twice the field length, and verify.
        let sig = k.signing_key().sign(b"m").expect("sign");
        assert_eq!(sig.len(), 2 * len);
        assert!(public.verifying_key().expect("vk").verify(b"m", &sig));
        assert!(!public.verifying_key().expect("vk").verify(b"n", &sig));
    }
}

#[test]
fn thumbprint_covers_crv_kty_x_y_only() {
    let k = key(Algorithm::Es256);
    let jwk = k.public_key().to_jwk("k");
    let expected = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y")
    );
    assert_eq!(k.public_key().thumbprint_input(), expected);
    use sha2::Digest as _;
    assert_eq!(
        k.public_key().thumbprint(),
        b64::encode(&sha2::Sha256::digest(expected.as_bytes()))
    );
}

#[test]
fn points_off_the_curve_or_of_the_wrong_length_are_refused() {
    for alg in [Algorithm::Es256, Algorithm::Es384] {
        let jwk = key(alg).public_key().to_jwk("k");
        let x = b64::decode(jwk["x"].as_str().expect("x")).expect("b64");
        let y = b64::decode(jwk["y"].as_str().expect("y")).expect("b64");
        let with = |x: &[u8], y: &[u8]| {
            let mut j = jwk.clone();
            j["x"] = b64::encode(x).into();
            j["y"] = b64::encode(y).into();
            j
        };
        // y + 1 (or y - 1): no longer on the curve.
        let mut y2 = y.clone();
        let last = y2.len() - 1;
        y2[last] ^= 1;
        assert_eq!(
            invalid_rule(PublicKey::from_jwk(&with(&x, &y2), None)),
            "EC public key is not a point on the curve"
        );
        // Leading zero stripped, or padded: the wrong length.
        let short = &x[1..];
        let mut long = vec![0u8];
        long.extend_from_slice(&x);
        for (bx, by) in [(short, &y[..]), (&long[..], &y[..]), (&x[..], &y[1..])] {
            assert!(invalid_rule(PublicKey::from_jwk(&with(bx, by), None)).contains("must be"));
        }
        // All-zero coordinates (not a point; the identity has no affine encoding).
        let zero = vec![0u8; x.len()];
        assert!(PublicKey::from_jwk(&with(&zero, &zero), None).is_err());
        // Missing y, unknown or absent crv, the other curve's alg.
        let mut no_y = jwk.clone();
        no_y.as_object_mut().expect("obj").remove("y");
        assert!(PublicKey::from_jwk(&no_y, None).is_err());
        for crv in [json!("P-521"), json!("secp256k1"), Value::Null] {
            let mut j = jwk.clone();
            j["crv"] = crv;
            assert!(PublicKey::from_jwk(&j, None).is_err());
        }
        let other = if alg == Algorithm::Es256 { "ES384" } else { "ES256" };
        let mut j = jwk.clone();
        j["alg"] = other.into();
        assert!(matches!(
            PublicKey::from_jwk(&j, None),
            Err(KeyError::AlgorithmMismatch { .. })
        ));
        // The x coordinate of one curve's point on the other curve.
        let mut j = jwk.clone();
        j["crv"] = (if alg == Algorithm::Es256 { "P-384" } else { "P-256" }).into();
        j.as_object_mut().expect("obj").remove("alg");
        assert!(PublicKey::from_jwk(&j, None).is_err());
    }
}

#[test]
fn private_jwks_with_bad_d_are_refused() {
    for (alg, n) in [(Algorithm::Es256, &P256_N[..]), (Algorithm::Es384, &P384_N[..])] {
        let a = key(alg);
        let b = key(alg);
        let mut jwk = b.public_key().to_jwk("x");
        jwk["d"] = b64::encode(a.to_secret_bytes().expect("secret").expose()).into();
        let err = PrivateKey::from_jwk(&jwk, None).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid key: EC \"d\" does not match \"x\" and \"y\"")
        );
        for d in [
            vec![0u8; n.len()],
            n.to_vec(),
            vec![0xff; n.len()],
            vec![1u8; n.len() - 1],
        ] {
            jwk["d"] = b64::encode(&d).into();
            assert!(matches!(PrivateKey::from_jwk(&jwk, None), Err(KeyError::Invalid(_))));
        }
    }
}

/// A token with the given raw signature bytes over `input`.
fn with_sig(input: &str, sig: &[u8]) -> String {
    format!("{input}.{}", b64::encode(sig))
}

#[test]
fn der_wrong_length_zero_and_out_of_range_signatures_are_refused() {
    for (alg, n) in [(Algorithm::Es256, &P256_N[..]), (Algorithm::Es384, &P384_N[..])] {
        let k = key(alg);
        let vk = k.public_key().verifying_key().expect("vk");
        let header = token::encode_header(alg, "k");
        let good = token::sign(&k.signing_key(), &header, &json!({"exp": now() + 60}), now(), 300).expect("sign");
        let (input, sig_b64) = good.rsplit_once('.').expect("segments");
        let sig = b64::decode(sig_b64).expect("b64");
        let v = Validation::new();
        assert!(keyrot_core::verify_with_key(&good, &vk, &v, now()).is_ok());
        let len = n.len();
        let (r, s) = sig.split_at(len);

        // DER (ASN.1 SEQUENCE of two INTEGERs) of the very same (r, s).
        let der = der_of(r, s);
        assert_ne!(der.len(), sig.len());
        let mut refused = vec![("DER", der)];
        // Wrong lengths: truncated, extended, empty-ish, one curve's length on the other.
        refused.push(("short", sig[..sig.len() - 1].to_vec()));
        refused.push(("long", [&sig[..], &[0u8]].concat()));
        refused.push(("leading zero", [&[0u8][..], &sig[..]].concat()));
        refused.push(("half", r.to_vec()));
        refused.push(("other curve's length", vec![1u8; if len == 32 { 96 } else { 64 }]));
        // r = 0, s = 0, both zero (CVE-2022-21449), r = n, s = n, r or s above n.
        let zero = vec![0u8; len];
        let above = vec![0xffu8; len];
        refused.push(("r = 0", [&zero[..], s].concat()));
        refused.push(("s = 0", [r, &zero[..]].concat()));
        refused.push(("r = s = 0", [&zero[..], &zero[..]].concat()));
        refused.push(("r = n", [n, s].concat()));
        refused.push(("s = n", [r, n].concat()));
        refused.push(("r > n", [&above[..], s].concat()));
        refused.push(("s > n", [r, &above[..]].concat()));
        // r + n, which would wrap around to r modulo n, does not fit: r stays below n.
        for (what, bad) in refused {
            assert!(!vk.verify(input.as_bytes(), &bad), "{alg} {what}: verify");
            assert_eq!(
                keyrot_core::verify_with_key(&with_sig(input, &bad), &vk, &v, now()).err(),
                Some(TokenError::BadSignature),
                "{alg} {what}: token"
            );
        }
    }
}

/// DER of `SEQUENCE { INTEGER r, INTEGER s }` (short lengths suffice for P-256 and P-384).
fn der_of(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len() - 1);
        let mut body = v[start..].to_vec();
        if body[0] & 0x80 != 0 {
            body.insert(0, 0);
        }
        [vec![0x02, u8::try_from(body.len()).expect("short")], body].concat()
    }
    let body = [int(r), int(s)].concat();
    let len = u8::try_from(body.len()).expect("short form");
    if len < 0x80 {
        [vec![0x30, len], body].concat()
    } else {
        [vec![0x30, 0x81, len], body].concat()
    }
}

#[test]
fn the_other_curves_header_alg_is_refused() {
    let es256 = key(Algorithm::Es256);
    let es384 = key(Algorithm::Es384);
    let v = Validation::new();
    let claims = json!({"exp": now() + 60});
    for (signer, header_alg, verifier) in [
        (&es384, Algorithm::Es384, &es256),
        (&es256, Algorithm::Es256, &es384),
        (&es256, Algorithm::Es384, &es256),
    ] {
        let header = token::encode_header(header_alg, "k");
        let t = token::sign(&signer.signing_key(), &header, &claims, now(), 300).expect("sign");
        let vk = verifier.public_key().verifying_key().expect("vk");
        assert_eq!(
            keyrot_core::verify_with_key(&t, &vk, &v, now()).err(),
            Some(TokenError::AlgorithmMismatch {
                expected: verifier.algorithm()
            }),
            "{header_alg} header on a {} key",
            verifier.algorithm()
        );
    }
    // EdDSA, RS256 and none headers on an ES256 key are refused the same way.
    let vk = es256.public_key().verifying_key().expect("vk");
    for alg in ["EdDSA", "RS256", "PS256", "none", "HS256", "es256"] {
        let header = b64::encode(format!(r#"{{"alg":"{alg}","kid":"k"}}"#).as_bytes());
        let payload = b64::encode(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let sig = es256.signing_key().sign(input.as_bytes()).expect("sign");
        assert!(
            matches!(
                keyrot_core::verify_with_key(&with_sig(&input, &sig), &vk, &v, now()),
                Err(TokenError::AlgorithmMismatch { .. })
            ),
            "{alg}"
        );
    }
}

#[test]
fn allow_lists_and_algorithm_names() {
    assert_eq!("ES256".parse::<Algorithm>(), Ok(Algorithm::Es256));
    assert_eq!("ES384".parse::<Algorithm>(), Ok(Algorithm::Es384));
    assert_eq!(
        serde_json::to_string(&Algorithm::Es384).ok().as_deref(),
        Some("\"ES384\"")
    );
    let err = "ES512".parse::<Algorithm>().expect_err("unsupported");
    assert!(err.to_string().contains("ES256 or ES384"), "{err}");
    let k = key(Algorithm::Es256);
    let vk = k.public_key().verifying_key().expect("vk");
    let t = token::sign(
        &k.signing_key(),
        &token::encode_header(Algorithm::Es256, "k"),
        &json!({"exp": now() + 60}),
        now(),
        300,
    )
    .expect("sign");
    let only_eddsa = Validation::new().with_algorithms([Algorithm::EdDsa]);
    assert_eq!(
        keyrot_core::verify_with_key(&t, &vk, &only_eddsa, now()).err(),
        Some(TokenError::AlgorithmNotAllowed { alg: Algorithm::Es256 })
    );
    let es = Validation::new().with_algorithms([Algorithm::Es256, Algorithm::Es384]);
    assert!(keyrot_core::verify_with_key(&t, &vk, &es, now()).is_ok());
}

/// RFC 9864: a header `alg` of `Ed25519` names an EdDSA key (the key decides the family),
/// and a JWK published with `"alg": "Ed25519"` imports as EdDSA. It names nothing else.
#[test]
fn rfc9864_ed25519_header_verifies_against_an_eddsa_key() {
    let ed = key(Algorithm::EdDsa);
    let vk = ed.public_key().verifying_key().expect("vk");
    let v = Validation::new();
    let claims = json!({"exp": now() + 60});
    let signed_as = |k: &PrivateKey, alg: &str| {
        let header = b64::encode(format!(r#"{{"alg":"{alg}","kid":"k","typ":"JWT"}}"#).as_bytes());
        let input = format!("{header}.{}", b64::encode(claims.to_string().as_bytes()));
        let sig = k.signing_key().sign(input.as_bytes()).expect("sign");
        with_sig(&input, &sig)
    };
    for name in ["EdDSA", "Ed25519"] {
        let t = signed_as(&ed, name);
        let verified = keyrot_core::verify_with_key(&t, &vk, &v, now()).expect("verifies");
        assert_eq!(verified.alg, Algorithm::EdDsa, "{name}");
        assert!(keyrot_core::verify_with_lookup(&t, |_| Some(&vk), &v, now()).is_ok());
    }
    for name in ["ed25519", "Ed448", "EdDSA ", "ES256"] {
        assert!(
            matches!(
                keyrot_core::verify_with_key(&signed_as(&ed, name), &vk, &v, now()),
                Err(TokenError::AlgorithmMismatch { .. })
            ),
            "{name}"
        );
    }
    // An ES256 key is not an Ed25519 key, whatever the header says.
    let es = key(Algorithm::Es256);
    let es_vk = es.public_key().verifying_key().expect("vk");
    assert_eq!(
        keyrot_core::verify_with_key(&signed_as(&es, "Ed25519"), &es_vk, &v, now()).err(),
        Some(TokenError::AlgorithmMismatch {
            expected: Algorithm::Es256
        })
    );
    // JWKs: "alg": "Ed25519" is EdDSA; on an EC key it conflicts.
    let mut jwk = ed.public_key().to_jwk("k");
    jwk["alg"] = "Ed25519".into();
    assert_eq!(
        PublicKey::from_jwk(&jwk, None).expect("imports").algorithm(),
        Algorithm::EdDsa
    );
    assert_eq!(PublicKey::from_jwk(&jwk, None).expect("imports"), ed.public_key());
    let mut ec = es.public_key().to_jwk("k");
    ec["alg"] = "Ed25519".into();
    assert!(PublicKey::from_jwk(&ec, None).is_err());
    // The configured names stay strict.
    assert!("Ed25519".parse::<Algorithm>().is_err());
}
