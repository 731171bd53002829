//! Master keys under custody, above any real backend (the backends have their own tests in
//! keyrot-kms against SoftHSM2, OpenBao and an AWS KMS emulator): one first key however many
//! instances start together, imports that keep old seals opening, rewraps after the KEK
//! rotated, substituted blobs refused by name, new keys picked up by running instances, and
//! a backend that goes away stopping new seals (audited) while signing and verifying go on.

use keyrot_core::custody::{
    CustodyError, CustodyKeys, CustodyKeysError, CustodySealer, FIRST_MASTER_KEY_ID, KeyCustody, MasterKeyStorage,
    StoredMasterKey,
};
use keyrot_core::testing::SoftCustody;
use keyrot_core::{
    AuditQuery, KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome, RequestContext, RingName,
    RotateError, Rotator, SealError, Sealer, Storage,
};
use std::sync::Arc;

fn keys(custody: &Arc<SoftCustody>, store: &MemoryStorage) -> CustodyKeys {
    CustodyKeys::new(custody.clone(), Arc::new(store.clone()))
}

fn ctx() -> RequestContext {
    RequestContext::actor("test")
}

#[tokio::test]
async fn instances_starting_together_store_one_first_master_key() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let store = MemoryStorage::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let k = keys(&custody, &store);
        tasks.push(tokio::spawn(async move { k.sealer_or_create().await }));
    }
    let mut created = 0;
    let mut sealers = Vec::new();
    for t in tasks {
        let (sealer, made) = t.await.expect("join").expect("open");
        created += usize::from(made);
        sealers.push(sealer);
    }
    assert_eq!(created, 1, "exactly one instance creates the first master key");
    let stored = store.master_keys().await.expect("list");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, FIRST_MASTER_KEY_ID);
    assert_eq!(stored[0].backend, "soft");
    for s in &sealers {
        assert_eq!(s.primary_key_id(), FIRST_MASTER_KEY_ID);
    }
    // What one instance authenticates, every other checks.
    let mac = sealers[0].authenticate(b"manifest").expect("mac");
    for s in &sealers[1..] {
        s.check_authentication(&mac, b"manifest").expect("same key everywhere");
    }
}

#[tokio::test]
async fn nothing_stored_is_a_clear_error_without_create() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let e = keys(&custody, &MemoryStorage::new())
        .sealer()
        .await
        .expect_err("no key");
    assert!(matches!(e, CustodyKeysError::NoMasterKey), "{e}");
    assert!(e.to_string().contains("keyrotctl master-key create"), "{e}");
}

#[tokio::test]
async fn a_blob_moved_to_another_id_is_refused_by_name() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let store = MemoryStorage::new();
    let k = keys(&custody, &store);
    let first = k.create().await.expect("create");
    // A writer to the table copies the wrapped blob under a new id (the newest: primary).
    let forged = StoredMasterKey {
        id: "attacker".into(),
        created_at: first.created_at + chrono::TimeDelta::seconds(1),
        ..first.clone()
    };
    assert!(store.insert_master_key(&forged).await.expect("insert"));
    let e = k.sealer().await.expect_err("refused");
    match &e {
        CustodyKeysError::Custody(CustodyError::Refused { id, .. }) => assert_eq!(id, "attacker"),
        other => panic!("expected a refusal naming the id, got {other}"),
    }
}

#[tokio::test]
async fn an_altered_blob_and_a_row_naming_another_kek_are_refused() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let key = MasterKey::generate("mk1").expect("key");
    let secret_bytes = keyrot_core::testing::master_key_secret(&key);
    let mut wrapped = custody.wrap("mk1", &secret_bytes).await.expect("wrap");
    let last = wrapped.blob.len() - 1;
    wrapped.blob[last] ^= 1;
    assert!(matches!(
        custody.unwrap("mk1", &wrapped).await,
        Err(CustodyError::Refused { .. })
    ));
    wrapped.blob[last] ^= 1;
    custody.unwrap("mk1", &wrapped).await.expect("intact");
    custody.rotate();
    let mut renamed = wrapped.clone();
    renamed.kek = "soft:kek#v2".into();
    assert!(matches!(
        custody.unwrap("mk1", &renamed).await,
        Err(CustodyError::Refused { .. })
    ));
}

#[tokio::test]
async fn import_keeps_what_the_configured_key_sealed_opening() {
    let storage = Arc::new(MemoryStorage::new());
    let ring = RingName::new("imported").expect("ring");
    let old = MasterKey::generate("env-1").expect("key");
    let env_sealer = Arc::new(MasterKeySealer::new(old.clone(), []).expect("sealer"));
    let rotator = Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::default()),
        env_sealer,
    )
    .build();
    rotator.init(ctx()).await.expect("init under the configured key");

    let custody = Arc::new(SoftCustody::new("kek"));
    let k = CustodyKeys::new(custody.clone(), storage.clone());
    let stored = k.import(&old).await.expect("import");
    assert_eq!(stored.id, "env-1");
    assert!(matches!(k.import(&old).await, Err(CustodyKeysError::Exists(_))));

    // No KEYROT_MASTER_KEY any more: the custody sealer opens the ring as it was.
    let sealer = CustodySealer::open(k, false).await.expect("open");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .build()
        .await
        .expect("the imported key opens every seal");
    let exp = chrono::Utc::now().timestamp() + 60;
    let token = keyring
        .sign(&serde_json::json!({"sub": "a", "exp": exp}))
        .expect("sign");
    keyring.verify(&token).expect("verify");
    // The row holds the wrapped key only: its bytes are not the master key's.
    let rows = storage.master_keys().await.expect("rows");
    let secret = keyrot_core::testing::master_key_secret(&old);
    assert!(!rows[0].wrapped.blob.windows(32).any(|w| w == secret.expose()));
}

#[tokio::test]
async fn rewrap_moves_every_key_to_the_kek_s_newest_version() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let store = MemoryStorage::new();
    let k = keys(&custody, &store);
    k.create().await.expect("one");
    k.create().await.expect("two");
    custody.rotate();
    let moved = k.rewrap().await.expect("rewrap");
    assert_eq!(moved.len(), 2);
    for m in &moved {
        assert_eq!(m.from, "soft:kek#v1");
        assert_eq!(m.to, "soft:kek#v2");
    }
    for row in store.master_keys().await.expect("rows") {
        assert_eq!(row.wrapped.kek, "soft:kek#v2");
    }
    k.sealer().await.expect("every key still unwraps");
}

#[tokio::test]
async fn a_running_instance_picks_up_a_new_master_key_on_its_next_probe() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let store = MemoryStorage::new();
    let sealer = CustodySealer::open(keys(&custody, &store), true).await.expect("open");
    assert_eq!(sealer.primary_key_id(), FIRST_MASTER_KEY_ID);
    // `keyrotctl master-key create`, elsewhere.
    let newer = keys(&custody, &store).create().await.expect("create");
    assert_eq!(sealer.primary_key_id(), FIRST_MASTER_KEY_ID, "not before a probe");
    assert!(sealer.probe().await);
    assert_eq!(sealer.primary_key_id(), newer.id);
}

#[tokio::test]
async fn a_backend_that_goes_away_stops_new_seals_and_the_attempt_is_audited() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let storage = Arc::new(MemoryStorage::new());
    let sealer = CustodySealer::open(CustodyKeys::new(custody.clone(), storage.clone()), true)
        .await
        .expect("open");
    let ring = RingName::new("away").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::default()),
        sealer.clone(),
    )
    .with_keyring(keyring.clone())
    .build();
    rotator.init(ctx()).await.expect("init");

    custody.set_up(false);
    assert!(!sealer.probe().await);
    let health = sealer.health();
    assert!(!health.up);
    assert!(
        health.error.as_deref().unwrap_or("").contains("unreachable"),
        "{health:?}"
    );

    // Signing and verifying go on from memory.
    let exp = chrono::Utc::now().timestamp() + 60;
    let token = keyring
        .sign(&serde_json::json!({"sub": "a", "exp": exp}))
        .expect("sign");
    keyring.verify(&token).expect("verify");
    // A rotation needs a new seal: refused, and the ledger says so.
    let report = rotator.force_rotate(ctx(), "drill", false).await;
    let failed = match &report {
        Ok(r) => r.outcome == Outcome::Failed,
        Err(e) => matches!(e, RotateError::Seal(SealError::CustodyUnavailable { .. })),
    };
    assert!(failed, "the rotation must fail closed: {report:?}");
    let log = storage.audit_log(&ring, AuditQuery::default()).await.expect("log");
    let last = &log[0];
    assert_eq!(last.outcome, Outcome::Failed, "{last:?}");
    assert!(
        last.detail.as_deref().unwrap_or("").contains("custody backend soft"),
        "{:?}",
        last.detail
    );

    custody.set_up(true);
    assert!(sealer.probe().await);
    let r = rotator
        .force_rotate(ctx(), "drill", false)
        .await
        .expect("rotates again");
    assert_eq!(r.outcome, Outcome::Rotated);
}

#[tokio::test]
async fn a_revoked_credential_is_denied_and_nothing_secret_is_printed() {
    let custody = Arc::new(SoftCustody::new("kek"));
    let store = MemoryStorage::new();
    let sealer = CustodySealer::open(keys(&custody, &store), true).await.expect("open");
    custody.set_denied(true);
    assert!(!sealer.probe().await);
    let e = sealer.health().error.unwrap_or_default();
    assert!(e.contains("refused the request"), "{e}");
    let debug = format!("{sealer:?} {:?}", store.master_keys().await.expect("rows"));
    assert!(debug.contains("blob_len"), "{debug}");
    assert!(!debug.contains("blob: ["), "{debug}");
    let mut seal_err = None;
    if let Err(e) = sealer.seal(
        &keyrot_core::SecretBytes::from_slice(&[7; 32]),
        &keyrot_core::SealContext {
            ring: "r",
            kid: "kid",
            alg: keyrot_core::Algorithm::EdDsa,
        },
    ) {
        seal_err = Some(e);
    }
    assert!(matches!(seal_err, Some(SealError::CustodyUnavailable { .. })));
}
