//! The rotator and the key ring over a signing backend ([`SoftSigning`], keys in memory):
//! a key created for a commit that loses the race is destroyed and the loss says so, and
//! that commit's revocation is not carried out; a
//! revocation disables the key in the backend and a purge destroys it; a backend that
//! does not answer fails signing with a typed error and is reported down until it answers.

use chrono::{TimeDelta, TimeZone as _, Utc};
use keyrot_core::custody::SigningCustody;
use keyrot_core::testing::SoftSigning;
use keyrot_core::{
    Algorithm, Clock as _, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome,
    Policy, RequestContext, RingName, Rotator, SignError, Storage as _,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    clock: ManualClock,
    sealer: Arc<MasterKeySealer>,
    storage: Arc<MemoryStorage>,
    soft: Arc<SoftSigning>,
    ring: RingName,
    keyring: KeyRing,
}

async fn setup() -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let soft = Arc::new(SoftSigning::new());
    let ring = RingName::new("soft").expect("ring");
    let custody: Arc<dyn SigningCustody> = soft.clone();
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(policy())
        .with_signing_custody(custody)
        .build()
        .await
        .expect("keyring");
    Setup {
        clock,
        sealer,
        storage,
        soft,
        ring,
        keyring,
    }
}

fn policy() -> Policy {
    Policy::builder()
        .with_algorithm(Algorithm::Es256)
        .with_forced_min_interval(Duration::from_millis(1))
        .with_purge_after(Duration::from_secs(3600))
        .build()
        .expect("policy")
}

impl Setup {
    /// A rotator with a lock of its own: two of them exclude each other only through the
    /// store's compare-and-swap.
    fn rotator(&self, instance: &str) -> Rotator {
        Rotator::builder(
            self.ring.clone(),
            self.storage.clone(),
            Arc::new(MemoryLock::new(Arc::new(self.clock.clone()))),
            self.sealer.clone(),
        )
        .with_clock(Arc::new(self.clock.clone()))
        .with_policy(policy())
        .with_instance(instance)
        .with_keyring(self.keyring.clone())
        .build()
    }

    async fn referenced(&self) -> BTreeSet<String> {
        let ring = self.storage.load(&self.ring).await.expect("load");
        ring.keys.iter().filter_map(|k| k.remote.clone()).collect()
    }
}

#[tokio::test]
async fn the_key_of_a_lost_commit_is_destroyed() {
    let s = setup().await;
    let (a, b) = (s.rotator("a"), s.rotator("b"));
    a.init(RequestContext::actor("t")).await.expect("init");
    let first = s.referenced().await.into_iter().next().expect("the first key");
    s.clock.advance(TimeDelta::seconds(1));

    // A creates its key and is held there; B rotates meanwhile; A's commit then loses.
    let gate = s.soft.hold_next_create();
    let racing = tokio::spawn(async move { a.force_rotate(RequestContext::actor("a"), "a", true).await });
    while s.soft.held().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let referenced = s.referenced().await;
    let lost_key: String = s
        .soft
        .held()
        .into_keys()
        .find(|k| !referenced.contains(k))
        .expect("A's key, not in the ring yet");
    let won = b.force_rotate(RequestContext::actor("b"), "b", false).await.expect("b");
    assert_eq!(won.outcome, Outcome::Rotated);
    gate.notify_one();
    let lost = racing.await.expect("join").expect("a");
    assert_eq!(lost.outcome, Outcome::LostRace, "{lost:?}");
    let detail = lost.detail.unwrap_or_default();
    assert!(
        detail.contains(&format!("destroyed {lost_key}, created for the lost commit")),
        "{detail}"
    );
    let held: BTreeSet<String> = s.soft.held().into_keys().collect();
    assert!(!held.contains(&lost_key));
    assert_eq!(held, s.referenced().await, "the backend holds exactly the ring's keys");
    assert_eq!(
        s.soft.held().get(&first),
        Some(&false),
        "the lost commit's revocation of the old key is not carried out in the backend"
    );
}

#[tokio::test]
async fn revoke_disables_purge_destroys_and_an_outage_is_typed() {
    let s = setup().await;
    let r = s.rotator("r");
    r.init(RequestContext::actor("t")).await.expect("init");
    let now = s.clock.now().timestamp();
    let claims = serde_json::json!({"sub": "bob", "exp": now + 60});
    let sync = s.keyring.sign(&claims);
    assert!(matches!(sync, Err(SignError::RemoteKey)), "{sync:?}");
    let token = s.keyring.sign_async(&claims).await.expect("sign");
    assert_eq!(s.keyring.verify(&token).expect("verify").claims["sub"], "bob");
    let first = s.referenced().await.into_iter().next().expect("a key");

    s.clock.advance(TimeDelta::seconds(1));
    let report = r
        .force_rotate(RequestContext::actor("t"), "compromised", true)
        .await
        .expect("rotate");
    assert!(
        report
            .detail
            .unwrap_or_default()
            .contains(&format!("{first} is disabled in soft once this commit stands"))
    );
    assert_eq!(s.soft.held().get(&first), Some(&true), "disabled in the backend");
    s.clock.advance(TimeDelta::hours(2));
    let report = r.tick().await.expect("tick");
    assert!(
        report
            .detail
            .unwrap_or_default()
            .contains(&format!("destroyed {first}"))
    );
    assert!(!s.soft.held().contains_key(&first), "purged means destroyed");

    // The backend goes away: a typed error, and the health says so until it answers.
    s.soft.set_up(false);
    let now = s.clock.now().timestamp();
    let claims = serde_json::json!({"sub": "eve", "exp": now + 60});
    assert!(matches!(
        s.keyring.sign_async(&claims).await,
        Err(SignError::Custody(_))
    ));
    assert_eq!(s.keyring.signing_custody_health().map(|h| h.up), Some(false));
    assert!(
        r.force_rotate(RequestContext::actor("t"), "during the outage", false)
            .await
            .is_err()
    );
    s.soft.set_up(true);
    s.keyring.sign_async(&claims).await.expect("signing again");
    assert_eq!(s.keyring.signing_custody_health().map(|h| h.up), Some(true));
}

/// A database writer who points the Active row at another backend key (one the attacker
/// made there, or another ring's) gets a tampered row: the key rings that load it neither
/// sign with it nor publish it, and the rotator refuses to build on it.
#[tokio::test]
async fn a_row_pointed_at_another_backend_key_is_tampered() {
    let s = setup().await;
    let r = s.rotator("r");
    r.init(RequestContext::actor("t")).await.expect("init");
    let attacker = s
        .soft
        .create("keyrot-6-other-attacker", Algorithm::Es256, keyrot_core::RsaBits::B2048)
        .await
        .expect("a key of the attacker's");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == active).expect("row");
        row.remote = Some(attacker.reference.clone());
        *raw.generation += 1;
    });
    s.keyring.refresh().await.expect("refresh");
    let snap = s.keyring.snapshot();
    assert!(
        snap.integrity().tampered.iter().any(|t| t.kid == active),
        "{:?}",
        snap.integrity()
    );
    assert!(snap.active_kid().is_none(), "the tampered row does not sign");
    let now = s.clock.now().timestamp();
    let signed = s
        .keyring
        .sign_async(&serde_json::json!({"sub": "x", "exp": now + 60}))
        .await;
    assert!(matches!(signed, Err(SignError::NoActiveKey)), "{signed:?}");
    s.clock.advance(TimeDelta::seconds(1));
    assert!(
        r.force_rotate(RequestContext::actor("t"), "on top of tampering", false)
            .await
            .is_err(),
        "the rotator refuses a tampered ring"
    );
}
