//! Symmetric rings (MAC and AEAD) on a backend: the rows round-trip with their algorithm
//! and sealed secret, exactly one of many concurrent rotations wins, a ciphertext made
//! before a rotation decrypts after it through a key ring reading the store, no row or
//! public view holds key bytes, and a tampered symmetric row is refused like any other.

use super::*;
use crate::keyring::KeyRing;
use crate::policy::Policy;
use crate::symmetric::{AeadRing, MacRing, SymmetricError};

fn rotator_of(
    b: &Backend,
    r: &RingName,
    clock: &ManualClock,
    sealer: Arc<MasterKeySealer>,
    alg: Algorithm,
    instance: &str,
) -> Rotator {
    Rotator::builder(r.clone(), b.storage.clone(), b.lock.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_policy(Policy::builder().with_algorithm(alg).build().expect("policy"))
        .with_instance(instance)
        .build()
}

async fn keyring_of(
    b: &Backend,
    r: &RingName,
    clock: &ManualClock,
    sealer: Arc<MasterKeySealer>,
    alg: Algorithm,
) -> KeyRing {
    KeyRing::builder(r.clone(), b.storage.clone(), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_policy(Policy::builder().with_algorithm(alg).build().expect("policy"))
        .build()
        .await
        .expect("key ring")
}

pub async fn symmetric_rings_rotate_exactly_once_and_keep_old_ciphertexts(b: &Backend) {
    let r = ring("conf-aead");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let alg = Algorithm::XChaCha20Poly1305;
    let boot = rotator_of(b, &r, &clock, sealer.clone(), alg, "boot");
    boot.init(RequestContext::actor("conformance")).await.expect("init");
    let keyring = keyring_of(b, &r, &clock, sealer.clone(), alg).await;
    let aead = AeadRing::new(keyring.clone()).expect("aead ring");
    let old = aead.encrypt(b"field value", b"table/row/column").expect("encrypt");
    clock.advance(TimeDelta::hours(2));
    let rotators: Vec<Rotator> = (0..6)
        .map(|i| rotator_of(b, &r, &clock, sealer.clone(), alg, &format!("i{i}")))
        .collect();
    let reports = futures_join_all(
        rotators
            .iter()
            .map(|rot| rot.force_rotate(RequestContext::actor("breakglass"), "drill", false)),
    )
    .await;
    let rotated = reports
        .iter()
        .filter(|x| matches!(x, Ok(rep) if rep.outcome == Outcome::Rotated))
        .count();
    assert_eq!(rotated, 1, "exactly one rotation of the AEAD ring: {reports:?}");
    let loaded = b.storage.load(&r).await.expect("load");
    assert_eq!(loaded.keys.len(), 2);
    assert_eq!(loaded.in_state(KeyState::Active).count(), 1);
    for k in &loaded.keys {
        assert_eq!(k.alg, alg, "the algorithm round-trips");
        assert!(k.sealed.is_some(), "a symmetric key is stored sealed");
        assert!(!k.public_jwk.contains("\"k\""), "no key bytes in the public column");
    }
    keyring.refresh().await.expect("refresh");
    let new = aead.encrypt(b"field value", b"table/row/column").expect("encrypt");
    assert_ne!(AeadRing::key_id(&new).ok(), AeadRing::key_id(&old).ok());
    assert_eq!(
        aead.decrypt(&old, b"table/row/column")
            .expect("the Retiring key decrypts"),
        b"field value"
    );
    assert_eq!(keyring.snapshot().jwks().body(), br#"{"keys":[]}"#);
    for row in b.storage.load_public(&r).await.expect("public rows").keys {
        assert!(row.sealed.is_none());
    }
}

pub async fn tampered_symmetric_rows_are_refused(b: &Backend) {
    let r = ring("conf-mac");
    let clock = ManualClock::new(t0());
    let sealer = Arc::new(sealer());
    let alg = Algorithm::HmacSha256;
    let rot = rotator_of(b, &r, &clock, sealer.clone(), alg, "a");
    rot.init(RequestContext::actor("conformance")).await.expect("init");
    let keyring = keyring_of(b, &r, &clock, sealer.clone(), alg).await;
    let mac = MacRing::new(keyring.clone()).expect("mac ring");
    let tag = mac.sign(b"payload").expect("sign");
    // A database writer swaps the key's sealed secret for one sealed elsewhere, keeping
    // the manifest: the row fails its integrity check and never signs or verifies.
    let mut ring_now = b.storage.load(&r).await.expect("load");
    let mut row = ring_now.keys.remove(0);
    let forged = sealer
        .seal(
            &crate::secret::SecretBytes::from_slice(&[7u8; 32]),
            &SealContext {
                ring: r.as_str(),
                kid: &row.kid,
                alg,
            },
        )
        .expect("seal");
    row.sealed = Some(forged);
    let manifest = ring_now.manifest.clone().expect("manifest");
    let mut c = commit(&r, ring_now.generation, vec![row], clock.now());
    c.manifest = manifest;
    assert_eq!(
        b.storage.commit(&c, &linker()).await.expect("commit"),
        CommitOutcome::Committed
    );
    keyring.refresh().await.ok();
    assert!(
        !keyring.snapshot().integrity().is_intact(),
        "the forged row is reported"
    );
    assert!(matches!(mac.sign(b"payload"), Err(SymmetricError::NoActiveKey(_))));
    assert!(mac.verify(b"payload", &tag).is_err());
    let refused = rot
        .force_rotate(RequestContext::actor("x"), "after tampering", false)
        .await;
    assert!(refused.is_err(), "nothing is written on a tampered ring: {refused:?}");
}
