//! Signing keys held by Vault/OpenBao Transit ([`TransitSigning`]) against a real OpenBao
//! dev server: every algorithm signs what keyrot verifies, the keys are not exportable,
//! the lifecycle reaches the server (list, destroy), and a ring whose keys Transit holds
//! rotates, signs through `sign_async`, refuses the synchronous `sign`, destroys orphans,
//! and destroys purged keys there.
#![cfg(feature = "vault")]
#![allow(clippy::unwrap_used)]

#[path = "vault/bao.rs"]
mod bao;

use bao::{Bao, start};
use chrono::{TimeDelta, TimeZone as _, Utc};
use keyrot_core::custody::{CustodyError, SigningCustody, key_name_prefix};
use keyrot_core::{
    Algorithm, Clock as _, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Policy,
    RequestContext, RingName, Rotator, RsaBits, SignError, Storage as _,
};
use keyrot_core::{ImportState, Outcome};
use keyrot_kms::vault::TransitSigning;
use serde_json::json;
use std::sync::Arc;

async fn signing(bao: &Bao) -> TransitSigning {
    let env = bao.env(&[("VAULT_TOKEN", &bao.root)]);
    TransitSigning::open_with_env("vault-transit:transit", move |k| env.get(k).cloned())
        .await
        .unwrap()
}

/// `GET transit/keys/NAME` as root: the status and body.
async fn key_info(bao: &Bao, name: &str) -> (u16, serde_json::Value) {
    let r = bao
        .http
        .get(format!("{}/v1/transit/keys/{name}", bao.addr))
        .header("X-Vault-Token", &bao.root)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn every_algorithm_signs_what_keyrot_verifies() {
    let Some(bao) = start("every_algorithm_signs_what_keyrot_verifies").await else {
        return;
    };
    let s = signing(&bao).await;
    let message = b"eyJhbGciOiJ4In0.eyJzdWIiOiJib2IifQ";
    for (alg, name) in [
        (Algorithm::EdDsa, "keyrot-t-ed"),
        (Algorithm::Es256, "keyrot-t-p256"),
        (Algorithm::Es384, "keyrot-t-p384"),
        (Algorithm::Rs256, "keyrot-t-rs"),
        (Algorithm::Ps256, "keyrot-t-ps"),
    ] {
        let key = s.create(name, alg, RsaBits::B2048).await.unwrap();
        assert_eq!(key.reference, format!("vault-transit:transit/{name}"));
        let sig = s.sign(&key.reference, alg, message).await.unwrap();
        let vk = key.public.verifying_key().unwrap();
        assert!(vk.verify(message, &sig), "{alg}: the signature verifies in keyrot");
        assert!(!vk.verify(b"another message", &sig), "{alg}");
        let (_, info) = key_info(&bao, name).await;
        assert_eq!(info["data"]["exportable"], false, "{alg}: {info}");
        assert_eq!(info["data"]["allow_plaintext_backup"], false, "{alg}: {info}");
        let found = s.find(&key.reference, alg).await.unwrap();
        assert_eq!(found.public.thumbprint(), key.public.thumbprint(), "{alg}");
    }
    // Fixed lengths: ECDSA as R‖S (not DER), Ed25519 raw.
    let p256 = s
        .sign("vault-transit:transit/keyrot-t-p256", Algorithm::Es256, message)
        .await
        .unwrap();
    assert_eq!(p256.len(), 64);
    let p384 = s
        .sign("vault-transit:transit/keyrot-t-p384", Algorithm::Es384, message)
        .await
        .unwrap();
    assert_eq!(p384.len(), 96);
    // A key of another type, another mount, or an exportable key is refused.
    let e = s
        .find("vault-transit:transit/keyrot-t-p256", Algorithm::EdDsa)
        .await
        .unwrap_err();
    assert!(matches!(e, CustodyError::Config(_)), "{e:?}");
    let e = s
        .sign("vault-transit:other/keyrot-t-ed", Algorithm::EdDsa, message)
        .await
        .unwrap_err();
    assert!(matches!(e, CustodyError::Config(_)), "{e:?}");
    bao.admin(
        "POST",
        "transit/keys/keyrot-t-exp",
        json!({"type": "ed25519", "exportable": true}),
    )
    .await;
    let e = s.find("keyrot-t-exp", Algorithm::EdDsa).await.unwrap_err();
    assert!(e.to_string().contains("exportable"), "{e}");
}

#[tokio::test]
async fn list_destroy_disable_and_the_server_going_away() {
    let Some(mut bao) = start("list_destroy_disable_and_the_server_going_away").await else {
        return;
    };
    let s = signing(&bao).await;
    let a1 = s.create("keyrot-a-1", Algorithm::EdDsa, RsaBits::B2048).await.unwrap();
    s.create("keyrot-a-2", Algorithm::Es256, RsaBits::B2048).await.unwrap();
    s.create("keyrot-b-1", Algorithm::EdDsa, RsaBits::B2048).await.unwrap();
    let mut listed = s.list("keyrot-a-").await.unwrap();
    listed.sort();
    assert_eq!(
        listed,
        ["vault-transit:transit/keyrot-a-1", "vault-transit:transit/keyrot-a-2"]
    );
    assert!(!s.disable(&a1.reference).await.unwrap(), "Transit cannot disable a key");
    s.destroy(&a1.reference).await.unwrap();
    assert_eq!(key_info(&bao, "keyrot-a-1").await.0, 404, "destroyed on the server");
    s.destroy(&a1.reference).await.unwrap();
    assert_eq!(s.list("keyrot-a-").await.unwrap(), ["vault-transit:transit/keyrot-a-2"]);

    bao.child.kill().unwrap();
    let _ = bao.child.wait();
    let e = s
        .sign("vault-transit:transit/keyrot-b-1", Algorithm::EdDsa, b"x")
        .await
        .unwrap_err();
    assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, CustodyError::Unavailable { .. }), "{e:?}");
    for shown in [e.to_string(), format!("{e:?}"), format!("{s:?}")] {
        assert!(!shown.contains(&bao.root), "{shown}");
    }
}

#[tokio::test]
async fn a_ring_whose_keys_transit_holds() {
    let Some(bao) = start("a_ring_whose_keys_transit_holds").await else {
        return;
    };
    let custody: Arc<dyn SigningCustody> = Arc::new(signing(&bao).await);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().unwrap());
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").unwrap(), []).unwrap());
    let ring = RingName::new("remote").unwrap();
    let policy = Policy::builder()
        .with_algorithm(Algorithm::Es256)
        .with_forced_min_interval(std::time::Duration::from_secs(1))
        .with_purge_after(std::time::Duration::from_secs(86_400))
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

    // An orphan (a crash between creating a key and committing it) is destroyed by the
    // next attempt that creates one.
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
    assert!(
        detail.contains("created vault-transit:transit/keyrot-6-remote-"),
        "{detail}"
    );
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

    // Forced rotation with the old key revoked: Transit cannot disable it (noted); once
    // purged, it is destroyed on the server.
    clock.advance(TimeDelta::seconds(5));
    let report = rotator
        .force_rotate(RequestContext::actor("test"), "drill", true)
        .await
        .unwrap();
    let detail = report.detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "{first_ref} is disabled in vault-transit once this commit stands"
        )),
        "{detail}"
    );
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
    let name = first_ref.rsplit('/').next().unwrap();
    assert_eq!(key_info(&bao, name).await.0, 404, "purged means gone from Transit");
    assert_eq!(custody.list(&key_name_prefix(&ring)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_transit_already_holds_is_imported_by_reference() {
    let Some(bao) = start("a_key_transit_already_holds_is_imported_by_reference").await else {
        return;
    };
    let custody: Arc<dyn SigningCustody> = Arc::new(signing(&bao).await);
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").unwrap(), []).unwrap());
    let ring = RingName::new("byok").unwrap();
    let policy = Policy::builder().with_algorithm(Algorithm::Es256).build().unwrap();
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_policy(policy.clone())
        .with_signing_custody(custody.clone())
        .build()
        .await
        .unwrap();
    let rotator = Rotator::builder(ring.clone(), storage.clone(), Arc::new(MemoryLock::default()), sealer)
        .with_policy(policy)
        .with_keyring(keyring.clone())
        .build();
    // The operator's own key, made with the server's tools.
    bao.admin("POST", "transit/keys/team-signer", json!({"type": "ecdsa-p256"}))
        .await;
    let report = rotator
        .import_remote(
            RequestContext::actor("ops"),
            "team-signer",
            Some("team-2026".into()),
            ImportState::Active,
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Imported, "{report:?}");
    let rows = storage.load(&ring).await.unwrap();
    assert_eq!(rows.keys[0].kid, "team-2026", "the kid it was given");
    assert_eq!(
        rows.keys[0].remote.as_deref(),
        Some("vault-transit:transit/team-signer")
    );
    assert!(rows.keys[0].sealed.is_none());
    let token = keyring
        .sign_async(&json!({"sub": "bob", "exp": chrono::Utc::now().timestamp() + 60}))
        .await
        .unwrap();
    let verified = keyring.verify(&token).unwrap();
    assert_eq!(verified.kid, "team-2026");
    assert_eq!(verified.claims["sub"], "bob");

    // The same key twice, a key of another algorithm and an exportable key are refused.
    let again = rotator
        .import_remote(
            RequestContext::actor("ops"),
            "team-signer",
            Some("again".into()),
            ImportState::Pending,
        )
        .await;
    assert_eq!(
        again.unwrap().outcome,
        Outcome::Refused,
        "the planner refuses a key already in the ring"
    );
    bao.admin("POST", "transit/keys/team-ed", json!({"type": "ed25519"}))
        .await;
    let e = rotator
        .import_remote(RequestContext::actor("ops"), "team-ed", None, ImportState::Pending)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HSM or KMS"), "{e}");
    bao.admin(
        "POST",
        "transit/keys/team-exp",
        json!({"type": "ecdsa-p256", "exportable": true}),
    )
    .await;
    let e = rotator
        .import_remote(RequestContext::actor("ops"), "team-exp", None, ImportState::Pending)
        .await
        .unwrap_err();
    assert!(keyrot_core::ErrorChain(&e).to_string().contains("exportable"), "{e}");
}
