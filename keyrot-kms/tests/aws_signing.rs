//! Signing keys held by AWS KMS ([`KmsSigning`]) against a real `moto_server` (PyPI
//! `moto[server]`, an emulator of the AWS KMS API, see `aws/moto.rs`): every algorithm signs
//! what keyrot verifies, keys of the wrong kind are refused, the lifecycle reaches KMS
//! (aliases, list, disable, scheduled deletion), KMS going away is `Unavailable`, and a ring
//! whose keys KMS holds rotates, signs through `sign_async`, disables a revoked key and
//! schedules a purged key's deletion.
//!
//! What moto does not emulate, and what these tests assert instead:
//! - `Sign` with a disabled key succeeds in moto (KMS answers `DisabledException`, which
//!   the backend maps to `Denied`); `find` refuses a disabled key itself, in both.
//! - `RSASSA_PSS_SHA_256` signs in moto with the longest salt (222 bytes for RSA-2048);
//!   KMS uses a 32-byte salt, the hash's length, which RFC 7518 §3.5 requires and keyrot
//!   verifies. A PS256 signature from moto is shown to be PSS-SHA-256 of the message with
//!   that salt, and keyrot's refusal of it is asserted; against KMS keyrot verifies it.
//! - `MessageType=DIGEST` is ignored by moto (it signs the digest as a message), so the
//!   path for messages over 4096 bytes is checked by verifying over the digest.
//! - `ECC_NIST_EDWARDS25519` keys do not exist in moto 5.2: EdDSA is refused.
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used)] // a failed step is a failed test

#[path = "aws/moto.rs"]
mod moto;

use aws_config::SdkConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, OriginType};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{TimeDelta, TimeZone as _, Utc};
use keyrot_core::custody::{CustodyError, RemoteKey, SigningCustody, key_name_prefix};
use keyrot_core::{
    Algorithm, Clock as _, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy,
    RequestContext, RingName, Rotator, RsaBits, SignError, Storage as _,
};
use keyrot_kms::aws::KmsSigning;
use moto::{Moto, assert_no_secret, moto_binary, sdk_config, start_moto};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::sha2::{Digest as _, Sha256};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn started(test: &str) -> Option<(Moto, SdkConfig, KmsSigning)> {
    let bin = moto_binary(test)?;
    let moto = start_moto(&bin, &[]);
    let config = sdk_config(&moto.url);
    let signing = KmsSigning::with_config("aws-kms:", &config).await.unwrap();
    Some((moto, config, signing))
}

/// The error's text and `Debug`, checked free of the credential.
fn shown(e: &CustodyError) -> String {
    let text = format!("{e} {e:?}");
    assert_no_secret(&text);
    text
}

fn config_error(r: Result<impl std::fmt::Debug, CustodyError>, why: &str) -> String {
    match r {
        Err(e @ CustodyError::Config(_)) => shown(&e),
        other => panic!("{why}: expected Config, got {other:?}"),
    }
}

fn arn(key: &RemoteKey) -> &str {
    key.reference.strip_prefix("aws-kms:").unwrap()
}

fn key_id(key: &RemoteKey) -> &str {
    key.reference.rsplit('/').next().unwrap()
}

async fn state(admin: &Client, id: &str) -> (KeyState, bool) {
    let meta = admin
        .describe_key()
        .key_id(id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    (meta.key_state.unwrap(), meta.deletion_date.is_some())
}

async fn alias_names(admin: &Client) -> Vec<String> {
    let out = admin.list_aliases().send().await.unwrap();
    out.aliases()
        .iter()
        .filter_map(|a| a.alias_name().map(str::to_owned))
        .collect()
}

/// A new key made by an operator (`aws kms create-key`), by ARN.
async fn admin_key(admin: &Client, usage: KeyUsageType, spec: KeySpec, origin: OriginType) -> String {
    let out = admin
        .create_key()
        .key_usage(usage)
        .key_spec(spec)
        .origin(origin)
        .send()
        .await
        .unwrap();
    out.key_metadata.unwrap().arn.unwrap()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A PS256 signature keyrot refuses must be moto's: PSS-SHA-256 of `message` with the
/// longest salt the modulus allows (emLen − hLen − 2).
fn moto_pss(der: &[u8], message: &[u8], signature: &[u8]) {
    let public = rsa::PublicKey::from_public_key_der(der).unwrap();
    let salt = signature.len() - 32 - 2;
    let vk = rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public, salt);
    let sig = rsa::pss::Signature::try_from(signature).unwrap();
    rsa::signature::Verifier::verify(&vk, message, &sig).expect("PSS-SHA-256 with moto's salt length");
}

#[tokio::test]
async fn every_algorithm_signs_what_keyrot_verifies() {
    let Some((_moto, config, s)) = started("every_algorithm_signs_what_keyrot_verifies").await else {
        return;
    };
    let admin = Client::new(&config);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"x","kid":"k"}"#);
    let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"bob"}"#);
    let message = format!("{header}.{payload}").into_bytes();
    for (alg, name, len) in [
        (Algorithm::Es256, "keyrot-t-p256", 64),
        (Algorithm::Es384, "keyrot-t-p384", 96),
        (Algorithm::Rs256, "keyrot-t-rs", 256),
        (Algorithm::Ps256, "keyrot-t-ps", 256),
    ] {
        s.supports(alg, RsaBits::B2048).unwrap();
        let t = Instant::now();
        let key = s.create(name, alg, RsaBits::B2048).await.unwrap();
        let created_in = t.elapsed();
        assert!(
            key.reference.starts_with("aws-kms:arn:aws:kms:us-east-1:") && key.reference.contains(":key/"),
            "{}",
            key.reference
        );
        let mut times = Vec::new();
        let vk = key.public.verifying_key().unwrap();
        let mut sig = Vec::new();
        for _ in 0..if alg == Algorithm::Es256 { 100 } else { 10 } {
            let t = Instant::now();
            sig = s.sign(&key.reference, alg, &message).await.unwrap();
            times.push(t.elapsed());
            assert_eq!(sig.len(), len, "{alg}: a JWS signature's length");
            if alg != Algorithm::Ps256 {
                // ES256 a hundred times: R or S shorter than 32 bytes comes up (the padding).
                assert!(vk.verify(&message, &sig), "{alg}: the signature verifies in keyrot");
            }
        }
        println!(
            "aws-kms {alg} against moto_server: create {created_in:?}, sign median {:?} of {}",
            median(&mut times),
            times.len()
        );
        if alg == Algorithm::Ps256 && !vk.verify(&message, &sig) {
            let der = admin.get_public_key().key_id(arn(&key)).send().await.unwrap();
            moto_pss(der.public_key.unwrap().as_ref(), &message, &sig);
            println!(
                "PS256: moto's salt is {} bytes, not KMS's 32; keyrot refuses it",
                sig.len() - 34
            );
        }
        let mut flipped = sig.clone();
        flipped[len / 2] ^= 1;
        assert!(!vk.verify(&message, &flipped), "{alg}: a flipped byte fails");

        // The key in KMS: for signing, made there, described and tagged with its name.
        let meta = admin
            .describe_key()
            .key_id(arn(&key))
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        assert_eq!(meta.key_usage, Some(KeyUsageType::SignVerify));
        assert_eq!(meta.origin, Some(OriginType::AwsKms));
        assert!(
            meta.description()
                .unwrap()
                .contains(&format!("keyrot signing key {name}"))
        );
        let tags = admin.list_resource_tags().key_id(key_id(&key)).send().await.unwrap();
        assert!(
            tags.tags()
                .iter()
                .any(|t| t.tag_key() == "keyrot:name" && t.tag_value() == name),
            "{tags:?}"
        );
        // Found by its reference, its ARN, its key id and its alias: the same key.
        for by in [
            key.reference.clone(),
            arn(&key).to_owned(),
            key_id(&key).to_owned(),
            format!("alias/{name}"),
        ] {
            let found = s.find(&by, alg).await.unwrap();
            assert_eq!(found.reference, key.reference, "{alg} by {by}");
            assert_eq!(found.public.thumbprint(), key.public.thumbprint(), "{alg} by {by}");
        }
    }
    // Over 4096 bytes, the message is hashed here and sent as MessageType=DIGEST. moto
    // ignores the type and signs the digest as a message: the signature verifies over the
    // digest there (over the message against KMS), which shows the digest is the message's.
    let long = vec![b'a'; 5000];
    let key = s.find("alias/keyrot-t-p256", Algorithm::Es256).await.unwrap();
    let sig = s.sign(&key.reference, Algorithm::Es256, &long).await.unwrap();
    let vk = key.public.verifying_key().unwrap();
    assert!(vk.verify(&long, &sig) || vk.verify(&Sha256::digest(&long), &sig));
    assert_no_secret(&format!("{s:?} {}", s.location()));
}

#[tokio::test]
async fn keys_of_another_kind_are_refused() {
    let Some((_moto, config, s)) = started("keys_of_another_kind_are_refused").await else {
        return;
    };
    let admin = Client::new(&config);
    let symmetric = admin_key(
        &admin,
        KeyUsageType::EncryptDecrypt,
        KeySpec::SymmetricDefault,
        OriginType::AwsKms,
    )
    .await;
    let text = config_error(s.find(&symmetric, Algorithm::Es256).await, "ENCRYPT_DECRYPT");
    assert!(text.contains("ENCRYPT_DECRYPT"), "{text}");
    let p384 = admin_key(
        &admin,
        KeyUsageType::SignVerify,
        KeySpec::EccNistP384,
        OriginType::AwsKms,
    )
    .await;
    let text = config_error(s.find(&p384, Algorithm::Es256).await, "a P-384 key for ES256");
    assert!(text.contains("ECC_NIST_P384") && text.contains("ES256"), "{text}");
    config_error(s.find(&p384, Algorithm::Rs256).await, "a P-384 key for RS256");
    s.find(&p384, Algorithm::Es384).await.unwrap();
    let rsa = admin_key(&admin, KeyUsageType::SignVerify, KeySpec::Rsa3072, OriginType::AwsKms).await;
    config_error(s.find(&rsa, Algorithm::Es256).await, "an RSA key for ES256");
    let found = s.find(&rsa, Algorithm::Ps256).await.unwrap();
    assert_eq!(found.public.rsa_bits(), Some(3072));
    // Imported key material (origin EXTERNAL): a copy may exist outside KMS.
    let external = admin_key(
        &admin,
        KeyUsageType::SignVerify,
        KeySpec::EccNistP256,
        OriginType::External,
    )
    .await;
    let text = config_error(s.find(&external, Algorithm::Es256).await, "origin EXTERNAL");
    assert!(text.contains("EXTERNAL"), "{text}");

    // EdDSA: KMS's Ed25519 keys are not used (moto does not have them).
    let text = config_error(s.supports(Algorithm::EdDsa, RsaBits::B2048), "EdDSA");
    assert!(
        text.contains("ES256 (ECC_NIST_P256)") && text.contains("PS256"),
        "{text}"
    );
    config_error(
        s.create("keyrot-t-ed", Algorithm::EdDsa, RsaBits::B2048).await,
        "create EdDSA",
    );
    assert!(!alias_names(&admin).await.iter().any(|a| a.starts_with("alias/keyrot-")));

    // References that are not a key ARN of this region, and keys that do not exist.
    for bad in [
        "alias/keyrot-t-1".to_owned(),
        "aws-kms:alias/keyrot-t-1".to_owned(),
        format!("aws-kms:{}", p384.replace("us-east-1", "eu-west-1")),
        "vault-transit:transit/keyrot-t-1".to_owned(),
    ] {
        config_error(s.sign(&bad, Algorithm::Es384, b"x").await, &bad);
        config_error(s.destroy(&bad).await, &bad);
    }
    let ghost = format!("aws-kms:{}", p384.replace(&p384[p384.len() - 12..], "000000000000"));
    let e = s.find(&ghost, Algorithm::Es384).await.unwrap_err();
    assert!(matches!(e, CustodyError::Denied { .. }), "{}", shown(&e));
    let e = s.sign(&ghost, Algorithm::Es384, b"x").await.unwrap_err();
    assert!(matches!(e, CustodyError::Denied { .. }), "{}", shown(&e));
    s.destroy(&ghost).await.unwrap();
    assert!(s.disable(&ghost).await.unwrap(), "a key that is gone cannot sign");
    config_error(
        KmsSigning::with_config("aws-kms:us-east-1", &config).await,
        "a URI with more",
    );
}

#[tokio::test]
async fn list_disable_and_destroy_reach_kms() {
    let Some((_moto, config, s)) = started("list_disable_and_destroy_reach_kms").await else {
        return;
    };
    let admin = Client::new(&config);
    let es = (Algorithm::Es256, RsaBits::B2048);
    let a1 = s.create("keyrot-a-1", es.0, es.1).await.unwrap();
    let a2 = s.create("keyrot-a-2", es.0, es.1).await.unwrap();
    let b1 = s.create("keyrot-b-1", es.0, es.1).await.unwrap();
    // A ring name with a dot: its alias has a '/' there, and it is listed under its prefix only.
    let dotted = s.create("keyrot-a.x-1", es.0, es.1).await.unwrap();
    assert!(alias_names(&admin).await.contains(&"alias/keyrot-a/x-1".to_owned()));
    let mut want = vec![a1.reference.clone(), a2.reference.clone()];
    want.sort();
    assert_eq!(s.list("keyrot-a-").await.unwrap(), want);
    assert_eq!(s.list("keyrot-b-").await.unwrap(), [b1.reference.as_str()]);
    assert_eq!(s.list("keyrot-a.x-").await.unwrap(), [dotted.reference.as_str()]);
    assert!(s.list("keyrot-c-").await.unwrap().is_empty());
    config_error(s.list("").await, "an empty prefix");

    // Disable: DisableKey; find refuses the key. moto still signs with a disabled key (KMS
    // answers DisabledException: Denied).
    assert!(s.disable(&a1.reference).await.unwrap());
    assert_eq!(state(&admin, key_id(&a1)).await.0, KeyState::Disabled);
    let e = s.find(&a1.reference, es.0).await.unwrap_err();
    assert!(
        matches!(e, CustodyError::Denied { .. }) && shown(&e).contains("Disabled"),
        "{e:?}"
    );
    let signed = s.sign(&a1.reference, es.0, b"x.y").await;
    assert!(signed.is_ok(), "moto signs with a disabled key: {signed:?}");
    assert!(s.disable(&a1.reference).await.unwrap(), "twice");

    // Destroy: deletion scheduled, alias deleted, no longer listed; a second destroy is Ok.
    s.destroy(&a1.reference).await.unwrap();
    assert_eq!(state(&admin, key_id(&a1)).await, (KeyState::PendingDeletion, true));
    assert!(!alias_names(&admin).await.contains(&"alias/keyrot-a-1".to_owned()));
    assert_eq!(s.list("keyrot-a-").await.unwrap(), [a2.reference.as_str()]);
    s.destroy(&a1.reference).await.unwrap();
    assert!(
        s.disable(&a1.reference).await.unwrap(),
        "a key pending deletion cannot sign"
    );
    // A key scheduled for deletion by an operator keeps its alias, and is not listed.
    admin
        .schedule_key_deletion()
        .key_id(key_id(&a2))
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert!(alias_names(&admin).await.contains(&"alias/keyrot-a-2".to_owned()));
    assert!(s.list("keyrot-a-").await.unwrap().is_empty());
    s.destroy(&a2.reference).await.unwrap();
    assert!(!alias_names(&admin).await.contains(&"alias/keyrot-a-2".to_owned()));
}

#[tokio::test]
async fn kms_going_away_is_unavailable_and_credentials_are_checked() {
    let Some((mut moto, _config, s)) = started("kms_going_away_is_unavailable_and_credentials_are_checked").await
    else {
        return;
    };
    let key = s.create("keyrot-g-1", Algorithm::Es256, RsaBits::B2048).await.unwrap();
    s.check().await.unwrap();
    moto.stop();
    let t = Instant::now();
    let results = [
        s.check().await,
        s.sign(&key.reference, Algorithm::Es256, b"x.y").await.map(drop),
        s.list("keyrot-g-").await.map(drop),
        s.create("keyrot-g-2", Algorithm::Es256, RsaBits::B2048).await.map(drop),
        s.destroy(&key.reference).await,
    ];
    for r in results {
        let e = r.unwrap_err();
        let text = shown(&e);
        assert!(matches!(e, CustodyError::Unavailable { .. }), "{text}");
        assert!(text.contains(&moto.url), "{text}");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    println!("KMS stopped: five calls Unavailable in {:?}", t.elapsed());
    assert_no_secret(&format!("{s:?}"));

    // A credential moto does not know (moto checks them only when told to).
    let bin = moto_binary("credentials").unwrap();
    let strict = start_moto(&bin, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let e = KmsSigning::with_config("aws-kms:", &sdk_config(&strict.url))
        .await
        .unwrap_err();
    let text = shown(&e);
    assert!(
        matches!(e, CustodyError::Denied { .. }) && text.contains("credential"),
        "{text}"
    );
}

#[tokio::test]
async fn a_ring_whose_keys_kms_holds() {
    let Some((_moto, config, s)) = started("a_ring_whose_keys_kms_holds").await else {
        return;
    };
    let admin = Client::new(&config);
    let custody: Arc<dyn SigningCustody> = Arc::new(s);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().unwrap());
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").unwrap(), []).unwrap());
    let ring = RingName::new("remote").unwrap();
    let policy = Policy::builder()
        .with_algorithm(Algorithm::Es256)
        .with_forced_min_interval(Duration::from_secs(1))
        .with_purge_after(Duration::from_secs(86_400))
        .build()
        .unwrap();
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(policy.clone())
        .with_signing_custody(custody.clone())
        .build()
        .await
        .unwrap();
    let rotator = Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .with_policy(policy)
    .with_keyring(keyring.clone())
    .build();

    // An orphan (a crash between creating a key and committing it) is destroyed first.
    let orphan = custody
        .create(
            &format!("{}orphan", key_name_prefix(&ring)),
            Algorithm::Es256,
            RsaBits::B2048,
        )
        .await
        .unwrap();
    let report = rotator.init(RequestContext::actor("test")).await.unwrap();
    let detail = report.detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!("destroyed orphaned {}", orphan.reference)),
        "{detail}"
    );
    assert!(detail.contains("created aws-kms:arn:aws:kms:us-east-1:"), "{detail}");
    assert_eq!(state(&admin, key_id(&orphan)).await.0, KeyState::PendingDeletion);
    let rows = storage.load(&ring).await.unwrap();
    let first = rows.keys[0].clone();
    assert!(first.sealed.is_none(), "no private material in the row");
    let first_ref = first.remote.clone().unwrap();
    assert_eq!(
        custody.list(&key_name_prefix(&ring)).await.unwrap(),
        vec![first_ref.clone()]
    );

    let now = clock.now().timestamp();
    let claims = json!({"sub": "bob", "iat": now, "exp": now + 600});
    assert!(matches!(keyring.sign(&claims), Err(SignError::RemoteKey)));
    let token = keyring.sign_async(&claims).await.unwrap();
    assert_eq!(keyring.verify(&token).unwrap().claims["sub"], "bob");

    // Forced rotation revoking the old key: disabled in KMS; once purged, its deletion is
    // scheduled.
    clock.advance(TimeDelta::seconds(5));
    let report = rotator
        .force_rotate(RequestContext::actor("test"), "drill", true)
        .await
        .unwrap();
    let detail = report.detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!("{first_ref} is disabled in aws-kms once this commit stands")),
        "{detail}"
    );
    let first_id = first_ref.rsplit('/').next().unwrap();
    assert_eq!(state(&admin, first_id).await.0, KeyState::Disabled);
    assert!(keyring.verify(&token).is_err(), "a revoked key's token is refused");
    let now = clock.now().timestamp();
    let token = keyring
        .sign_async(&json!({"sub": "eve", "exp": now + 60}))
        .await
        .unwrap();
    assert_eq!(keyring.verify(&token).unwrap().claims["sub"], "eve");
    clock.advance(TimeDelta::days(2));
    let report = rotator.tick().await.unwrap();
    let detail = report.detail.clone().unwrap_or_default();
    assert!(detail.contains(&format!("destroyed {first_ref}")), "{report:?}");
    assert_eq!(state(&admin, first_id).await, (KeyState::PendingDeletion, true));
    assert_eq!(custody.list(&key_name_prefix(&ring)).await.unwrap().len(), 1);
}
