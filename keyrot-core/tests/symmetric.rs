//! MAC and AEAD rings through the public API: the lifecycle's windows for ciphertexts,
//! MACs and Standard Webhooks, re-encryption, the audited export, and the rules that keep
//! symmetric keys out of every token and JWKS path.

use base64::Engine as _;
use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{
    AeadRing, Algorithm, AuditQuery, Clock, KeyKind, KeyRing, KeyState, MacRing, MacTag, ManualClock, MasterKey,
    MasterKeySealer, MemoryLock, MemoryStorage, Outcome, Policy, RequestContext, RingName, RotateError, Rotator,
    SecretFormat, Storage, SymmetricError, WebhookError, WebhookHeaders, Webhooks,
};
use std::sync::Arc;

struct Setup {
    clock: ManualClock,
    sealer: Arc<MasterKeySealer>,
    storage: Arc<MemoryStorage>,
    keyring: KeyRing,
    rotator: Rotator,
}

async fn setup(alg: Algorithm) -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("secrets").expect("ring");
    let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(policy.clone())
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring,
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer.clone(),
    )
    .with_clock(Arc::new(clock.clone()))
    .with_policy(policy)
    .with_instance("a")
    .with_keyring(keyring.clone())
    .build();
    let r = rotator.init(ctx()).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    Setup {
        clock,
        sealer,
        storage,
        keyring,
        rotator,
    }
}

fn ctx() -> RequestContext {
    RequestContext::actor("test")
}

fn active(s: &Setup) -> String {
    s.keyring.snapshot().active_kid().expect("active").to_owned()
}

fn state_of(s: &Setup, kid: &str) -> KeyState {
    s.keyring
        .snapshot()
        .keys()
        .iter()
        .find(|k| k.kid == kid)
        .expect("kid")
        .state
}

/// The newest exported webhook secret, and its key bytes.
async fn newest_secret(s: &Setup) -> (keyrot_core::ExportedSecret, Vec<u8>) {
    let secret = s
        .rotator
        .export_secrets(ctx(), SecretFormat::StandardWebhooks)
        .await
        .expect("export")
        .remove(0);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&secret.secret[6..])
        .expect("b64");
    (secret, bytes)
}

/// Day 6 of the default policy: the next key is scheduled (Pending).
async fn schedule(s: &Setup) -> String {
    s.clock.advance(TimeDelta::days(6) + TimeDelta::seconds(1));
    let r = s.rotator.tick().await.expect("tick");
    assert_eq!(r.outcome, Outcome::Scheduled, "{r:?}");
    r.new_kid.expect("new kid")
}

/// One day later: the Pending key activates, the old one retires for `retire_grace`.
async fn activate(s: &Setup) {
    s.clock.advance(TimeDelta::days(1));
    let r = s.rotator.tick().await.expect("tick");
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
}

#[tokio::test]
async fn a_ciphertext_decrypts_until_its_key_leaves_its_window_and_never_after() {
    let s = setup(Algorithm::XChaCha20Poly1305).await;
    assert_eq!(s.keyring.kind(), KeyKind::Aead);
    let aead = AeadRing::new(s.keyring.clone()).expect("aead ring");
    let first = active(&s);
    let old = aead.encrypt(b"card 4242", b"users/7/card").expect("encrypt");
    assert_eq!(old.len(), b"card 4242".len() + keyrot_core::AEAD_OVERHEAD);
    assert_eq!(AeadRing::key_id(&old).expect("kid"), first);
    assert_eq!(aead.decrypt(&old, b"users/7/card").expect("decrypt"), b"card 4242");
    // The associated data is bound: another row's AAD, or none, does not open it.
    assert_eq!(aead.decrypt(&old, b"users/8/card"), Err(SymmetricError::Authentication));
    assert_eq!(aead.decrypt(&old, b""), Err(SymmetricError::Authentication));

    let next = schedule(&s).await;
    // Pending: encryption stays under the Active key.
    assert_eq!(
        AeadRing::key_id(&aead.encrypt(b"x", b"").expect("enc")).expect("kid"),
        first
    );
    activate(&s).await;
    assert_eq!(active(&s), next);
    assert_eq!(state_of(&s, &first), KeyState::Retiring);
    let new = aead.encrypt(b"card 4242", b"users/7/card").expect("encrypt");
    assert_eq!(AeadRing::key_id(&new).expect("kid"), next);
    // The Retiring key still decrypts: nobody is locked out inside the window.
    assert_eq!(aead.decrypt(&old, b"users/7/card").expect("retiring"), b"card 4242");

    // Re-encryption moves the old ciphertext to the Active key; a current one is left alone.
    let moved = aead.reencrypt(&old, b"users/7/card").expect("reencrypt");
    assert!(moved.changed);
    assert_eq!(AeadRing::key_id(&moved.ciphertext).expect("kid"), next);
    assert_eq!(
        aead.decrypt(&moved.ciphertext, b"users/7/card").expect("dec"),
        b"card 4242"
    );
    let same = aead.reencrypt(&new, b"users/7/card").expect("reencrypt");
    assert!(!same.changed);
    assert_eq!(same.ciphertext, new);
    let batch = aead
        .reencrypt_batch([(&old[..], &b"users/7/card"[..]), (&old[..], &b"wrong"[..])])
        .expect("batch");
    assert!(batch[0].as_ref().is_ok_and(|r| r.changed));
    assert_eq!(batch[1], Err(SymmetricError::Authentication));

    // The window ends at the key's expires_at, whether or not a tick ran.
    s.clock.advance(TimeDelta::days(7) - TimeDelta::seconds(1));
    assert!(aead.decrypt(&old, b"users/7/card").is_ok(), "one second before the end");
    s.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        aead.decrypt(&old, b"users/7/card"),
        Err(SymmetricError::KeyExpired(first.clone()))
    );
    s.rotator.tick().await.expect("tick");
    assert_eq!(state_of(&s, &first), KeyState::Expired);
    assert_eq!(aead.decrypt(&old, b"users/7/card"), Err(SymmetricError::UnknownKey));
    assert_eq!(aead.decrypt(&new, b"users/7/card").expect("active"), b"card 4242");
}

#[tokio::test]
async fn a_revoked_key_stops_decrypting_at_once() {
    let s = setup(Algorithm::XChaCha20Poly1305).await;
    let aead = AeadRing::new(s.keyring.clone()).expect("aead ring");
    let first = active(&s);
    let old = aead.encrypt(b"secret", b"").expect("encrypt");
    schedule(&s).await;
    activate(&s).await;
    assert!(aead.decrypt(&old, b"").is_ok());
    // An operator expires the Retiring key once re-encryption is done (or it leaked).
    s.rotator.revoke(ctx(), &first, "re-encrypted").await.expect("revoke");
    assert_eq!(aead.decrypt(&old, b""), Err(SymmetricError::UnknownKey));
}

#[tokio::test]
async fn malformed_and_tampered_ciphertexts_are_refused() {
    let s = setup(Algorithm::XChaCha20Poly1305).await;
    let aead = AeadRing::new(s.keyring.clone()).expect("aead ring");
    let ct = aead.encrypt(b"hello", b"name").expect("encrypt");
    assert!(matches!(
        aead.decrypt(&ct[..44], b"name"),
        Err(SymmetricError::Malformed(_))
    ));
    let mut v2 = ct.clone();
    v2[0] = 2;
    assert!(matches!(aead.decrypt(&v2, b"name"), Err(SymmetricError::Malformed(_))));
    // Another key id (the header is authenticated too).
    let mut other = ct.clone();
    other[1] ^= 1;
    assert_eq!(aead.decrypt(&other, b"name"), Err(SymmetricError::UnknownKey));
    for i in [5, 28, 29, ct.len() - 1] {
        let mut t = ct.clone();
        t[i] ^= 0x80;
        assert_eq!(
            aead.decrypt(&t, b"name"),
            Err(SymmetricError::Authentication),
            "byte {i}"
        );
    }
    assert_ne!(
        aead.encrypt(b"hello", b"name").expect("encrypt"),
        ct,
        "a fresh nonce each time"
    );
}

#[tokio::test]
async fn mac_tags_verify_inside_the_window_and_name_their_key() {
    let s = setup(Algorithm::HmacSha256).await;
    let mac = MacRing::new(s.keyring.clone()).expect("mac ring");
    let first = active(&s);
    let tag = mac.sign(b"order 17 paid").expect("sign");
    assert_eq!(tag.kid(), first);
    let text = tag.to_string();
    let parsed: MacTag = text.parse().expect("parse");
    assert_eq!(parsed, tag);
    mac.verify(b"order 17 paid", &parsed).expect("verify");
    assert_eq!(
        mac.verify(b"order 18 paid", &parsed),
        Err(SymmetricError::Authentication)
    );
    assert!(!format!("{tag:?}").contains(&text[9..]), "Debug shows no tag");
    schedule(&s).await;
    activate(&s).await;
    assert_ne!(mac.sign(b"x").expect("sign").kid(), first);
    mac.verify(b"order 17 paid", &parsed)
        .expect("retiring key still verifies");
    s.clock.advance(TimeDelta::days(7));
    assert_eq!(
        mac.verify(b"order 17 paid", &parsed),
        Err(SymmetricError::KeyExpired(first))
    );
    for bad in ["", "nokid", "0000000g.AAAA", "00000000.AAAA"] {
        assert!(bad.parse::<MacTag>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn webhooks_are_signed_by_the_active_and_pending_keys_during_a_rotation() {
    let s = setup(Algorithm::HmacSha256).await;
    let hooks = Webhooks::new(s.keyring.clone()).expect("webhooks");
    let payload = br#"{"type":"invoice.paid"}"#;
    let before = hooks.sign("msg_1", payload).expect("sign");
    assert_eq!(before.signature.split(' ').count(), 1);
    assert!(before.signature.starts_with("v1,"));
    hooks.verify(&before, payload).expect("verify");

    schedule(&s).await;
    let during = hooks.sign("msg_2", payload).expect("sign");
    assert_eq!(during.signature.split(' ').count(), 2, "Active and Pending sign");
    hooks.verify(&during, payload).expect("verify");
    // A receiver holding only the new secret accepts the webhook before the switch: the
    // second signature alone verifies.
    let pending_only = WebhookHeaders {
        signature: during.signature.split(' ').nth(1).expect("second").to_owned(),
        ..during.clone()
    };
    hooks.verify(&pending_only, payload).expect("pending key verifies");

    activate(&s).await;
    let after = hooks.sign("msg_3", payload).expect("sign");
    assert_eq!(after.signature.split(' ').count(), 1);
    // Webhooks sent before the switch still verify (their keys are in their window)…
    s.clock.set(Utc.timestamp_opt(before.timestamp, 0).single().expect("t"));
    hooks.verify(&before, payload).expect("old key in its window");
    // …and the timestamp tolerance is 5 minutes either way.
    s.clock.advance(TimeDelta::seconds(301));
    assert_eq!(hooks.verify(&before, payload), Err(WebhookError::Timestamp));
    let tampered = WebhookHeaders {
        id: "msg_9".into(),
        ..after.clone()
    };
    s.clock.set(Utc.timestamp_opt(after.timestamp, 0).single().expect("t"));
    assert_eq!(hooks.verify(&tampered, payload), Err(WebhookError::NoMatch));
    assert_eq!(hooks.verify(&after, b"{}"), Err(WebhookError::NoMatch));
    assert_eq!(
        hooks.sign("bad id", payload),
        Err(WebhookError::InvalidHeader("webhook-id"))
    );
    let lookup = WebhookHeaders::from_lookup(|name| match name {
        "webhook-id" => Some("msg_3"),
        "webhook-timestamp" => Some("12x"),
        _ => Some("v1,AAAA"),
    });
    assert_eq!(lookup, Err(WebhookError::InvalidHeader("webhook-timestamp")));
}

#[tokio::test]
async fn export_of_webhook_secrets_is_audited_newest_first_and_refused_for_other_kinds() {
    let s = setup(Algorithm::HmacSha256).await;
    let first = active(&s);
    let next = schedule(&s).await;
    let secrets = s
        .rotator
        .export_secrets(RequestContext::actor("ops@example.com"), SecretFormat::StandardWebhooks)
        .await
        .expect("export");
    let kids: Vec<&str> = secrets.iter().map(|x| x.kid.as_str()).collect();
    assert_eq!(kids, [next.as_str(), first.as_str()], "newest first");
    for x in &secrets {
        assert!(x.secret.starts_with("whsec_") && x.secret.len() == 6 + 44, "{x:?}");
        assert!(!format!("{x:?}").contains(&x.secret[6..]), "Debug redacts the secret");
    }
    let log = s
        .storage
        .audit_log(s.keyring.ring(), AuditQuery::default())
        .await
        .expect("audit");
    let rec = log
        .iter()
        .find(|r| r.trigger.as_str() == "export_secret")
        .expect("audited");
    assert_eq!(rec.outcome, Outcome::Exported);
    assert_eq!(rec.actor, "ops@example.com");
    let detail = rec.detail.as_deref().unwrap_or_default();
    assert!(detail.contains(&next) && detail.contains(&first), "{detail}");
    assert!(!detail.contains("whsec_"), "{detail}");

    let aead = setup(Algorithm::XChaCha20Poly1305).await;
    let refused = aead
        .rotator
        .export_secrets(ctx(), SecretFormat::StandardWebhooks)
        .await
        .expect_err("an AEAD ring has no webhook secrets");
    assert!(
        matches!(refused, RotateError::Kind(SymmetricError::WrongKind { .. })),
        "{refused:?}"
    );
    let signing = setup(Algorithm::EdDsa).await;
    assert!(
        signing
            .rotator
            .export_secrets(ctx(), SecretFormat::StandardWebhooks)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn symmetric_keys_never_reach_a_jwks_or_a_token() {
    let s = setup(Algorithm::HmacSha256).await;
    assert_eq!(s.keyring.snapshot().jwks().body(), br#"{"keys":[]}"#);
    assert!(
        s.keyring.snapshot().integrity().is_intact(),
        "the Active MAC key is not a broken signer"
    );
    // No token is signed with a MAC key…
    assert!(matches!(
        s.keyring.sign(&serde_json::json!({"sub": "x"})),
        Err(keyrot_core::SignError::NotASigningRing(KeyKind::Mac))
    ));
    // …and none verifies, even one HMAC'd with the ring's own secret (the HS256 confusion).
    let (_, key) = newest_secret(&s).await;
    let kid = active(&s);
    for alg in ["HS256", "HMAC-SHA256"] {
        let header = jsonwebtoken::Header {
            kid: Some(kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let mut token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": "x", "exp": s.clock.now().timestamp() + 60}),
            &jsonwebtoken::EncodingKey::from_secret(&key),
        )
        .expect("hs256");
        if alg != "HS256" {
            let (_, rest) = token.split_once('.').expect("jwt");
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#));
            token = format!("{h}.{rest}");
        }
        assert!(s.keyring.verify(&token).is_err(), "{alg}");
    }
    // The other kinds' handles are refused.
    assert!(matches!(
        AeadRing::new(s.keyring.clone()),
        Err(SymmetricError::WrongKind {
            holds: KeyKind::Mac,
            wanted: KeyKind::Aead,
            ..
        })
    ));
    let signing = setup(Algorithm::EdDsa).await;
    assert!(MacRing::new(signing.keyring.clone()).is_err());
    assert!(Webhooks::new(signing.keyring.clone()).is_err());
}

#[tokio::test]
async fn a_ring_of_one_kind_is_never_rotated_under_a_policy_of_another() {
    let s = setup(Algorithm::HmacSha256).await;
    for alg in [Algorithm::XChaCha20Poly1305, Algorithm::EdDsa] {
        let other = Rotator::builder(
            s.keyring.ring().clone(),
            s.storage.clone(),
            Arc::new(MemoryLock::new(Arc::new(s.clock.clone()))),
            s.sealer.clone(),
        )
        .with_clock(Arc::new(s.clock.clone()))
        .with_policy(Policy::builder().with_algorithm(alg).build().expect("policy"))
        .build();
        let e = other
            .force_rotate(ctx(), "wrong kind", false)
            .await
            .expect_err("refused");
        assert!(
            matches!(
                e,
                RotateError::Kind(SymmetricError::WrongKind {
                    holds: KeyKind::Mac,
                    ..
                })
            ),
            "{alg}: {e:?}"
        );
    }
    assert_eq!(s.keyring.snapshot().keys().len(), 1, "nothing was written");
}

// Current-thread runtime: everything runs on the thread the local recorder is set on.
#[tokio::test]
async fn decryptions_are_counted_by_the_state_of_their_key() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prom = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let s = setup(Algorithm::XChaCha20Poly1305).await;
    let aead = AeadRing::new(s.keyring.clone()).expect("aead ring");
    let old = aead.encrypt(b"x", b"").expect("encrypt");
    schedule(&s).await;
    activate(&s).await;
    aead.decrypt(&old, b"").expect("retiring");
    aead.decrypt(&old, b"").expect("retiring");
    assert!(aead.decrypt(&old, b"other").is_err());
    aead.decrypt(&aead.encrypt(b"y", b"").expect("encrypt"), b"")
        .expect("active");
    // Counted on the hot path, handed to the recorder at the next refresh or tick.
    s.rotator.tick().await.expect("tick");
    let m = |labels: &[(&str, &str)]| {
        keyrot_core::testing::metrics::value(&prom.render(), "keyrot_symmetric_operations_total", labels)
    };
    let ring = ("ring", "secrets");
    assert_eq!(
        m(&[ring, ("operation", "decrypt"), ("key_state", "retiring")]),
        Some(2.0)
    );
    assert_eq!(m(&[ring, ("operation", "decrypt"), ("key_state", "active")]), Some(1.0));
    assert_eq!(
        m(&[ring, ("operation", "decrypt"), ("key_state", "refused")]),
        Some(1.0)
    );
    assert_eq!(m(&[ring, ("operation", "encrypt"), ("key_state", "active")]), Some(2.0));
}

#[tokio::test]
async fn a_purpose_separates_what_one_ring_protects() {
    const FIELDS: keyrot_core::Purpose = keyrot_core::Purpose::new("fields");
    const LINKS: keyrot_core::Purpose = keyrot_core::Purpose::new("signed-links/v1");
    let s = setup(Algorithm::XChaCha20Poly1305).await;
    let plain = AeadRing::new(s.keyring.clone()).expect("aead");
    let fields = plain.clone().with_purpose(FIELDS);
    let ct = fields.encrypt(b"v", b"row").expect("encrypt");
    assert_eq!(fields.decrypt(&ct, b"row").expect("same purpose"), b"v");
    assert_eq!(plain.decrypt(&ct, b"row"), Err(SymmetricError::Authentication));
    assert_eq!(
        plain.clone().with_purpose(LINKS).decrypt(&ct, b"row"),
        Err(SymmetricError::Authentication)
    );
    // The purpose is not a prefix of the associated data a caller could choose.
    assert_eq!(plain.decrypt(&ct, b"fields\0row"), Err(SymmetricError::Authentication));

    let m = setup(Algorithm::HmacSha256).await;
    let mac = MacRing::new(m.keyring.clone()).expect("mac");
    let tag = mac.clone().with_purpose(LINKS).sign(b"/download/7").expect("sign");
    assert_eq!(mac.verify(b"/download/7", &tag), Err(SymmetricError::Authentication));
    mac.clone()
        .with_purpose(LINKS)
        .verify(b"/download/7", &tag)
        .expect("same purpose");
    // A MAC the application makes over data an attacker chooses is never a webhook
    // signature, even over the exact Standard Webhooks content.
    let hooks = Webhooks::new(m.keyring.clone()).expect("webhooks");
    let ts = m.clock.now().timestamp();
    let forged = mac.sign(format!("msg_1.{ts}.{{}}").as_bytes()).expect("sign");
    let headers = WebhookHeaders {
        id: "msg_1".into(),
        timestamp: ts,
        signature: format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(forged.tag())),
    };
    assert_eq!(hooks.verify(&headers, b"{}"), Err(WebhookError::NoMatch));
    for bad in ["", "a.b", "a\0b", "é", &"x".repeat(65)] {
        let leaked: &'static str = Box::leak(bad.to_owned().into_boxed_str());
        assert!(keyrot_core::Purpose::try_new(leaked).is_none(), "{bad:?}");
    }
}

#[tokio::test]
async fn no_key_bytes_in_debug_errors_rows_the_ledger_or_the_jwks() {
    let s = setup(Algorithm::HmacSha256).await;
    let (secret, bytes) = newest_secret(&s).await;
    let forms = [
        secret.secret[6..].to_owned(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        format!("{bytes:?}"),
    ];
    let mac = MacRing::new(s.keyring.clone()).expect("mac");
    let refused = mac.verify(
        b"x",
        &"00000000.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse()
            .expect("tag"),
    );
    let ring = s.storage.load(s.keyring.ring()).await.expect("load");
    let ledger = s
        .storage
        .audit_log(s.keyring.ring(), AuditQuery::default())
        .await
        .expect("audit");
    let texts = [
        format!("{:?}", s.keyring),
        format!("{:?}", s.keyring.snapshot()),
        format!("{mac:?} {refused:?}"),
        format!("{secret:?}"),
        format!("{ring:?}"),
        format!("{ledger:?}"),
        String::from_utf8_lossy(s.keyring.snapshot().jwks().body()).into_owned(),
        ring.keys
            .iter()
            .map(|k| k.public_jwk.clone())
            .collect::<Vec<_>>()
            .join(" "),
    ];
    for text in &texts {
        for form in &forms {
            assert!(!text.contains(form.as_str()), "key bytes in {text}");
        }
    }
}
