//! Issue 8 through the public API, on the in-memory store (the same attacks run on the
//! real databases in keyrot-sqlx/tests/tamper.rs): key lifetimes enforced at
//! verification, key rows authenticated against tampering, rollback refused, the
//! integrity migration, the audit chain, and idempotency under the lock.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use keyrot_core::{
    Algorithm, Clock, ImportState, ImportedKey, KeyRing, KeyState, ManualClock, MasterKey, MasterKeySealer, MemoryLock,
    MemoryStorage, Outcome, Policy, PrivateKey, RefreshError, RequestContext, Ring, RingIntegrity, RingName,
    RotateError, Rotator, RsaBits, Storage, StorageError, TokenError,
};
use keyrot_core::{AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Setup {
    clock: ManualClock,
    storage: Arc<MemoryStorage>,
    sealer: Arc<MasterKeySealer>,
    ring: RingName,
    keyring: KeyRing,
    rotator: Rotator,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time")
}

async fn setup() -> Setup {
    let clock = ManualClock::new(t0());
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring.clone(),
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer.clone(),
    )
    .with_clock(Arc::new(clock.clone()))
    .with_instance("a")
    .with_keyring(keyring.clone())
    .build();
    let r = rotator.init(ctx()).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    Setup {
        clock,
        storage,
        sealer,
        ring,
        keyring,
        rotator,
    }
}

fn ctx() -> RequestContext {
    RequestContext::actor("ops")
}

/// A fresh instance over the same store.
async fn instance(s: &Setup) -> KeyRing {
    KeyRing::builder(s.ring.clone(), s.storage.clone(), s.sealer.clone())
        .with_clock(Arc::new(s.clock.clone()))
        .build()
        .await
        .expect("instance")
}

fn sign_with(key: &PrivateKey, kid: &str, now: DateTime<Utc>) -> String {
    let header = keyrot_core::testing::token::encode_header(key.algorithm(), kid);
    keyrot_core::testing::token::sign(
        &key.signing_key(),
        &header,
        &serde_json::json!({"sub": "mallory", "exp": now.timestamp() + 300}),
        now.timestamp(),
        3_600,
    )
    .expect("sign")
}

fn claims(s: &Setup) -> serde_json::Value {
    let now = s.clock.now().timestamp();
    serde_json::json!({"sub": "u", "exp": now + 300})
}

/// Issue 8 §1, the repro: an imported key becomes Retiring through a forced rotation, no
/// tick runs, and past its expires_at a fresh token signed with its private key is refused.
#[tokio::test]
async fn a_retiring_key_refuses_from_its_expiry_without_any_tick() {
    let s = setup().await;
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    s.clock.advance(TimeDelta::hours(2));
    let imported = ImportedKey {
        key: PrivateKey::from_secret_bytes(Algorithm::EdDsa, &key.to_secret_bytes().expect("bytes")).expect("copy"),
        kid: Some("legacy-1".into()),
    };
    let r = s
        .rotator
        .import(ctx(), imported, ImportState::Active)
        .await
        .expect("import");
    assert_eq!(r.outcome, Outcome::Imported);
    s.clock.advance(TimeDelta::hours(2));
    let r = s.rotator.force_rotate(ctx(), "move on", false).await.expect("force");
    assert_eq!(r.outcome, Outcome::Rotated);
    let ring = s.storage.load(&s.ring).await.expect("load");
    let legacy = ring.key("legacy-1").expect("legacy row");
    assert_eq!(legacy.state, KeyState::Retiring);
    let expires_at = legacy.expires_at.expect("expires_at");
    // Before its expiry it verifies; at and after it, it refuses — on an instance whose
    // snapshot is as stale as can be (no tick, no refresh).
    let stale = instance(&s).await;
    let before = expires_at - TimeDelta::seconds(1);
    let token = sign_with(&key, "legacy-1", before);
    assert!(stale.verify_at(&token, before).is_ok());
    s.clock.set(expires_at + TimeDelta::days(3));
    let fresh = sign_with(&key, "legacy-1", s.clock.now());
    assert_eq!(stale.verify(&fresh).err(), Some(TokenError::KeyExpired));
    assert_eq!(stale.verify_at(&token, expires_at).err(), Some(TokenError::KeyExpired));
    assert!(
        stale.verify_at(&token, before).is_ok(),
        "verify_at answers with the key's state at t"
    );
    assert!(!stale.snapshot().verifies_at("legacy-1", expires_at));
}

/// Issue 8 §1: every commit carries the maintenance that is due, so a ring driven only by
/// rotation requests shrinks its JWKS and purges material on time.
#[tokio::test]
async fn commits_without_ticks_expire_and_purge_what_is_due() {
    let s = setup().await;
    let first = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "one", false).await.expect("force");
    let policy = Policy::default();
    // Past the grace: the next commit (here another forced rotation) expires the first key.
    s.clock.advance(policy.retire_grace() + TimeDelta::seconds(1));
    s.rotator.force_rotate(ctx(), "two", false).await.expect("force");
    let ring = s.storage.load(&s.ring).await.expect("load");
    assert_eq!(ring.key(&first).map(|k| k.state), Some(KeyState::Expired));
    let jwks: serde_json::Value = serde_json::from_slice(s.keyring.snapshot().jwks().body()).expect("json");
    assert!(!jwks.to_string().contains(&first), "the JWKS shrank without a tick");
    // Past purge_after: a revocation commit purges its material.
    s.clock.advance(policy.purge_after() + TimeDelta::seconds(1));
    let retiring = ring
        .in_state(KeyState::Retiring)
        .next()
        .map(|k| k.kid.clone())
        .expect("a retiring key");
    s.rotator.revoke(ctx(), retiring, "tidy").await.expect("revoke");
    let ring = s.storage.load(&s.ring).await.expect("load");
    let k = ring.key(&first).expect("metadata stays");
    assert!(
        k.sealed.is_none() && k.purged_at.is_some(),
        "material purged without a tick"
    );
}

/// Issue 8 §2: write access to the store without the master key does not forge tokens.
#[tokio::test]
async fn tampered_rows_never_verify_and_are_reported_while_the_rest_serves() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let old = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let good = s.keyring.sign(&claims(&s)).expect("sign");
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let attacker_jwk = attacker.public_key().to_jwk(&old).to_string();

    // 1. Swap the public key of a published (Retiring) row, bump the generation.
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == old).expect("row");
        row.public_jwk = attacker_jwk.clone();
        *raw.generation += 1;
    });
    let b = instance(&s).await;
    let forged = sign_with(&attacker, &old, s.clock.now());
    assert!(b.verify(&forged).is_err(), "the attacker's key does not verify");
    assert!(b.verify(&good).is_ok(), "the untouched Active key still verifies");
    let snap = b.snapshot();
    assert!(!snap.integrity().is_intact());
    assert!(snap.integrity().tampered.iter().any(|t| t.kid == old));
    assert!(
        snap.keys().iter().any(|k| k.kid == old && k.tampered.is_some()),
        "the status shows the row as tampered"
    );
    assert!(
        !String::from_utf8_lossy(snap.jwks().body()).contains(&old),
        "not published"
    );
    assert!(b.sign(&claims(&s)).is_ok(), "signing goes on");
    // The rotator refuses to build on a tampered ring.
    s.clock.advance(TimeDelta::hours(2));
    let generation = s.storage.generation(&s.ring).await.expect("g");
    let refused = s.rotator.force_rotate(ctx(), "on top of tampering", false).await;
    assert!(
        matches!(refused, Err(RotateError::Integrity(ref m)) if m.contains(&old)),
        "{refused:?}"
    );
    assert_eq!(
        s.storage.generation(&s.ring).await.expect("g"),
        generation,
        "nothing committed"
    );
}

#[tokio::test]
async fn inserted_and_resurrected_rows_never_verify() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let old_key_row = s
        .storage
        .load(&s.ring)
        .await
        .expect("load")
        .active()
        .cloned()
        .expect("active");
    s.rotator.force_rotate(ctx(), "leak", true).await.expect("force revoke");
    let now = s.clock.now();
    // 2. Insert a Retiring row with the attacker's key and no sealed material.
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let kid = attacker.public_key().thumbprint();
    let mut inserted = old_key_row.clone();
    inserted.kid = kid.clone();
    inserted.fingerprint = kid.clone();
    inserted.public_jwk = attacker.public_key().to_jwk(&kid).to_string();
    inserted.state = KeyState::Retiring;
    inserted.sealed = None;
    inserted.expires_at = Some(now + TimeDelta::days(7));
    // 3. Resurrect the revoked key: replay its row image from before the revocation, as
    //    Retiring.
    let mut resurrected = old_key_row.clone();
    resurrected.state = KeyState::Retiring;
    resurrected.expires_at = Some(now + TimeDelta::days(7));
    s.storage.tamper(&s.ring, |raw| {
        raw.keys.push(inserted);
        let row = raw.keys.iter_mut().find(|k| k.kid == old_key_row.kid).expect("row");
        *row = resurrected;
        *raw.generation += 1;
    });
    let b = instance(&s).await;
    assert!(
        b.verify(&sign_with(&attacker, &kid, now)).is_err(),
        "inserted row refused"
    );
    let tampered: Vec<String> = b
        .snapshot()
        .integrity()
        .tampered
        .iter()
        .map(|t| t.kid.clone())
        .collect();
    assert!(
        tampered.contains(&kid) && tampered.contains(&old_key_row.kid),
        "{tampered:?}"
    );
    assert!(!b.snapshot().verifies(&old_key_row.kid), "the revoked key stays dead");
    assert!(b.sign(&claims(&s)).is_ok(), "the rest of the ring serves");
}

#[tokio::test]
async fn an_altered_active_row_stops_signing_but_not_verifying_the_others() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    let retiring = s
        .storage
        .load(&s.ring)
        .await
        .expect("load")
        .in_state(KeyState::Retiring)
        .next()
        .map(|k| k.kid.clone())
        .expect("retiring");
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == active).expect("row");
        row.expires_at = Some(t0());
        *raw.generation += 1;
    });
    let b = instance(&s).await;
    assert!(b.snapshot().active_kid().is_none(), "a tampered Active row never signs");
    assert!(b.snapshot().verifies(&retiring), "the other rows keep verifying");
}

/// Issue 8 §2: an instance never goes back to a lower generation than one it served.
#[tokio::test]
async fn a_rollback_of_the_store_is_refused() {
    let s = setup().await;
    let image: (u64, Vec<keyrot_core::KeyRecord>, Option<String>) = s
        .storage
        .tamper(&s.ring, |raw| (*raw.generation, raw.keys.clone(), raw.manifest.clone()));
    s.clock.advance(TimeDelta::hours(2));
    s.rotator
        .force_rotate(ctx(), "revoke the first", true)
        .await
        .expect("force");
    let served = s.keyring.snapshot().generation();
    // Replay the whole older, once-valid state: rows, manifest and generation.
    s.storage.tamper(&s.ring, |raw| {
        *raw.generation = image.0;
        *raw.keys = image.1.clone();
        *raw.manifest = image.2.clone();
    });
    match s.keyring.reload().await {
        Err(RefreshError::Rollback { found, served: sv }) => assert_eq!((found, sv), (image.0, served)),
        other => panic!("expected a refused rollback, got {other:?}"),
    }
    assert_eq!(
        s.keyring.snapshot().generation(),
        served,
        "the newer snapshot keeps serving"
    );
    assert!(s.keyring.is_stale());
    s.clock.advance(TimeDelta::hours(2));
    let r = s.rotator.force_rotate(ctx(), "on a rollback", false).await;
    assert!(matches!(r, Err(RotateError::Rollback { .. })), "{r:?}");
}

/// Issue 8 §2: rings written before authentication get it only through the explicit,
/// audited migration — never on load.
#[tokio::test]
async fn legacy_rings_verify_nothing_until_the_audited_migration() {
    let s = setup().await;
    let token = s.keyring.sign(&claims(&s)).expect("sign");
    // A ring as keyrot wrote it before manifests and chains existed.
    s.storage.tamper(&s.ring, |raw| {
        *raw.manifest = None;
        for a in raw.audit.iter_mut() {
            a.mac = None;
            a.seq = 0;
        }
    });
    let b = instance(&s).await;
    assert_eq!(b.snapshot().integrity().integrity, RingIntegrity::Unauthenticated);
    assert_eq!(b.verify(&token).err(), Some(TokenError::UnknownKid), "nothing verifies");
    let r = s.rotator.authenticate_ring(ctx()).await.expect("migrate");
    assert_eq!(r.outcome, Outcome::Authenticated);
    b.refresh().await.expect("refresh");
    assert!(b.verify(&token).is_ok());
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit");
    assert_eq!(audit[0].outcome, Outcome::Authenticated);
    assert_eq!(audit[0].actor, "ops");
    assert!(s.rotator.verify_audit_chain().await.expect("read").is_ok());
    // Once is enough; and a chained ring whose manifest disappears is tampering, not legacy.
    let again = s.rotator.authenticate_ring(ctx()).await.expect("again");
    assert_eq!(again.outcome, Outcome::Refused);
    s.storage.tamper(&s.ring, |raw| *raw.manifest = None);
    let r = s.rotator.authenticate_ring(ctx()).await.expect("refused");
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.detail.unwrap_or_default().contains("tampered"));
}

/// Issue 8 §3: the ledger is a MAC chain; a deleted, altered, inserted or reordered
/// record is found and named.
#[tokio::test]
async fn the_audit_chain_finds_the_first_broken_record() {
    let s = setup().await;
    for i in 0..4 {
        s.clock.advance(TimeDelta::hours(2));
        s.rotator
            .force_rotate(ctx(), format!("r{i}"), false)
            .await
            .expect("force");
        let _ = s.rotator.rotate(ctx()).await.expect("rotate");
    }
    let intact = s.rotator.verify_audit_chain().await.expect("read").expect("intact");
    assert_eq!(intact.records, 9);
    let original: Vec<AuditRecord> = s.storage.tamper(&s.ring, |raw| raw.audit.clone());
    let broken_at = |f: &dyn Fn(&mut Vec<AuditRecord>)| {
        s.storage.tamper(&s.ring, |raw| {
            *raw.audit = original.clone();
            f(raw.audit);
        });
    };
    let check = async || s.rotator.verify_audit_chain().await.expect("read");
    // Altered.
    broken_at(&|a| a[3].detail = Some("nothing to see".into()));
    assert_eq!(check().await.err().map(|b| b.id), Some(original[3].id.clone()));
    // Deleted.
    broken_at(&|a| {
        a.remove(4);
    });
    assert_eq!(check().await.err().map(|b| b.id), Some(original[5].id.clone()));
    // Inserted (a copy with a new id and the next free seq is not enough without the key).
    broken_at(&|a| {
        let mut fake = a[8].clone();
        fake.id = "forged".into();
        fake.seq = 10;
        a.push(fake);
    });
    assert_eq!(check().await.err().map(|b| b.id), Some("forged".into()));
    // Reordered (two records swap positions).
    broken_at(&|a| {
        let (x, y) = (a[2].seq, a[6].seq);
        a[2].seq = y;
        a[6].seq = x;
    });
    let b = check().await.expect_err("reorder is found");
    assert!(b.id == original[2].id || b.id == original[6].id, "{b:?}");
    // An unchained record slipped in after the chain started.
    broken_at(&|a| {
        let mut fake = a[8].clone();
        fake.id = "unchained".into();
        fake.mac = None;
        fake.seq = 0;
        a.push(fake);
    });
    assert_eq!(check().await.err().map(|b| b.id), Some("unchained".into()));
    // The newest records deleted (the ledger truncated back to before the last commit):
    // the manifest names the last commit's record.
    broken_at(&|a| a.truncate(7));
    let b = check().await.expect_err("truncation is found");
    assert_eq!(b.id, original[7].id, "the last commit's record: {b:?}");
    assert!(b.reason.contains("last commit"), "{b:?}");
    broken_at(&|_| {});
    assert!(check().await.is_ok());
}

/// A store whose idempotency lookups miss until told otherwise: it stands for the
/// window between a request's first (unlocked) idempotency check and its lock, during
/// which a concurrent request with the same key commits.
#[derive(Debug)]
struct LateIdempotency {
    inner: MemoryStorage,
    misses_left: AtomicUsize,
}

#[async_trait]
impl Storage for LateIdempotency {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.inner.load(ring).await
    }
    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        self.inner.generation(ring).await
    }
    async fn commit(&self, c: &Commit, l: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        self.inner.commit(c, l).await
    }
    async fn record_attempt(
        &self,
        a: &AuditRecord,
        i: Option<&IdempotencyRecord>,
        l: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        self.inner.record_attempt(a, i, l).await
    }
    async fn audit_log(&self, ring: &RingName, q: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.inner.audit_log(ring, q).await
    }
    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        if self
            .misses_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(None);
        }
        self.inner.idempotency(ring, key).await
    }
}

/// Issue 8 §4: the idempotency check is repeated under the lock.
#[tokio::test]
async fn the_idempotency_check_is_repeated_under_the_lock() {
    let clock = ManualClock::new(t0());
    let storage = Arc::new(LateIdempotency {
        inner: MemoryStorage::new(),
        misses_left: AtomicUsize::new(0),
    });
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let rotator = Rotator::builder(
        ring,
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .build();
    rotator.init(ctx()).await.expect("init");
    clock.advance(TimeDelta::days(6));
    let first = rotator
        .rotate(ctx().with_idempotency_key("slot-1"))
        .await
        .expect("first");
    assert_eq!(first.outcome, Outcome::Scheduled);
    // The second request's first check ran before the first committed (it missed).
    storage.misses_left.store(1, Ordering::SeqCst);
    let second = rotator
        .rotate(ctx().with_idempotency_key("slot-1"))
        .await
        .expect("second");
    assert!(
        second.replayed,
        "answered from the record found under the lock: {second:?}"
    );
    assert_eq!(second.outcome, first.outcome);
    assert_eq!(second.new_kid, first.new_kid);
}

/// The way back from tampering: quarantining makes every failing row Expired (revoked,
/// material dropped) and re-issues the manifest; the ring is intact again, nothing the
/// attacker wrote verifies, and rotation works again.
#[tokio::test]
async fn quarantine_repairs_a_tampered_ring_without_trusting_what_was_written() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let old = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    let good = s.keyring.sign(&claims(&s)).expect("sign");
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let jwk = attacker.public_key().to_jwk(&old).to_string();
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == old).expect("row");
        row.public_jwk = jwk.clone();
        *raw.generation += 1;
    });
    // An intact ring has nothing to repair; a reason is required.
    let refused = s.rotator.quarantine_tampered(ctx(), " ").await.expect("answer");
    assert_eq!(refused.outcome, Outcome::Refused);
    let r = s
        .rotator
        .quarantine_tampered(ctx(), "INC-7 rows altered in the database")
        .await
        .expect("repair");
    assert_eq!(r.outcome, Outcome::Quarantined, "{r:?}");
    let b = instance(&s).await;
    assert!(
        b.snapshot().integrity().is_intact(),
        "{}",
        b.snapshot().integrity().summary()
    );
    assert!(b.verify(&sign_with(&attacker, &old, s.clock.now())).is_err());
    assert!(b.verify(&good).is_ok(), "the authentic Active key still verifies");
    assert_eq!(b.snapshot().active_kid(), Some(active.as_str()));
    let ring = s.storage.load(&s.ring).await.expect("load");
    let q = ring.key(&old).expect("row");
    assert_eq!(q.state, KeyState::Expired);
    assert!(q.sealed.is_none() && q.revoke_reason.as_deref().unwrap_or("").starts_with("quarantined"));
    let again = s.rotator.quarantine_tampered(ctx(), "again").await.expect("answer");
    assert_eq!(again.outcome, Outcome::Refused, "nothing left to repair");
    s.clock.advance(TimeDelta::hours(2));
    let rotated = s
        .rotator
        .force_rotate(ctx(), "after the repair", true)
        .await
        .expect("force");
    assert_eq!(rotated.outcome, Outcome::Rotated);
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery { limit: 3 })
        .await
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.outcome == Outcome::Quarantined && a.actor == "ops")
    );
    assert!(s.rotator.verify_audit_chain().await.expect("read").is_ok());
}

/// A quarantined Active row leaves the ring without an Active key: `init` bootstraps a
/// fresh one.
#[tokio::test]
async fn after_quarantining_the_active_row_the_ring_bootstraps_again() {
    let s = setup().await;
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == active).expect("row");
        row.activated_at = Some(t0() - TimeDelta::days(30));
    });
    let r = s.rotator.quarantine_tampered(ctx(), "INC-8").await.expect("repair");
    assert_eq!(r.outcome, Outcome::Quarantined);
    assert_eq!(
        s.keyring.snapshot().active_kid(),
        None,
        "the altered Active key never signs again"
    );
    let boot = s.rotator.init(ctx()).await.expect("init");
    assert_eq!(boot.outcome, Outcome::Bootstrapped);
    assert_ne!(boot.new_kid.as_deref(), Some(active.as_str()));
    assert!(s.keyring.sign(&claims(&s)).is_ok());
}

/// A rotator on its own (no key ring that served the newer state, as in `keyrotctl`)
/// still refuses a whole-ring rollback: the ledger proves a newer commit.
#[tokio::test]
async fn a_whole_ring_rollback_is_refused_by_a_fresh_rotator_through_the_ledger() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let image: (u64, Vec<keyrot_core::KeyRecord>, Option<String>) = s
        .storage
        .tamper(&s.ring, |raw| (*raw.generation, raw.keys.clone(), raw.manifest.clone()));
    s.clock.advance(TimeDelta::hours(2));
    s.rotator
        .force_rotate(ctx(), "revoke the old one", true)
        .await
        .expect("force");
    let fresh = || operator(&s, Policy::default());
    // Old rows and manifest restored, the generation column left where it was …
    s.storage.tamper(&s.ring, |raw| {
        *raw.keys = image.1.clone();
        *raw.manifest = image.2.clone();
    });
    s.clock.advance(TimeDelta::hours(2));
    let r = fresh().force_rotate(ctx(), "on a rollback", false).await;
    assert!(matches!(r, Err(RotateError::Rollback { .. })), "{r:?}");
    let r = fresh().quarantine_tampered(ctx(), "repair a rollback?").await;
    assert!(
        matches!(r, Err(RotateError::Rollback { .. })),
        "repair never blesses a rollback: {r:?}"
    );
    // … or set back too.
    s.storage.tamper(&s.ring, |raw| *raw.generation = image.0);
    let r = fresh().force_rotate(ctx(), "on a rollback", false).await;
    assert!(matches!(r, Err(RotateError::Rollback { .. })), "{r:?}");
}

/// A running instance whose store is corrupted after a revocation elsewhere still stops
/// verifying the revoked key: changes that only remove trust are applied.
#[tokio::test]
async fn a_revocation_reaches_an_instance_even_when_the_manifest_is_corrupted() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let b = instance(&s).await;
    let retiring = s
        .storage
        .load(&s.ring)
        .await
        .expect("load")
        .in_state(KeyState::Retiring)
        .next()
        .map(|k| k.kid.clone())
        .expect("retiring");
    assert!(b.snapshot().verifies(&retiring));
    s.rotator
        .revoke(ctx(), retiring.clone(), "leaked")
        .await
        .expect("revoke");
    s.storage.tamper(&s.ring, |raw| *raw.manifest = Some("{}".into()));
    assert!(b.reload().await.is_err(), "the corrupted state is not accepted");
    assert!(!b.snapshot().verifies(&retiring), "but the revocation is");
    assert!(b.snapshot().active_kid().is_some(), "the Active key keeps signing");
}

/// Repair leaves nothing of the attacker's row that counts: an inserted "forced
/// activation in the year 9999" does not block forced rotation afterwards.
#[tokio::test]
async fn repair_sanitises_quarantined_rows() {
    let s = setup().await;
    let mut forged = s.storage.load(&s.ring).await.expect("load").keys[0].clone();
    forged.kid = "forged".into();
    forged.state = KeyState::Expired;
    forged.forced = true;
    forged.activated_at = Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).single();
    s.storage.tamper(&s.ring, |raw| raw.keys.push(forged));
    let r = s.rotator.quarantine_tampered(ctx(), "INC-9").await.expect("repair");
    assert_eq!(r.outcome, Outcome::Quarantined);
    s.clock.advance(TimeDelta::hours(2));
    let f = s
        .rotator
        .force_rotate(ctx(), "after repair", false)
        .await
        .expect("force");
    assert_eq!(f.outcome, Outcome::Rotated, "{f:?}");
    let ring = s.storage.load(&s.ring).await.expect("load");
    let q = ring.key("forged").expect("row");
    assert!(!q.forced && q.activated_at.is_none() && q.fingerprint.starts_with("quarantined:"));
}

/// The integrity migration: a refusal chained on a legacy ring does not block it; a row
/// whose public key was swapped (fingerprint left alone) is refused; a reviewed digest
/// that no longer matches is refused.
#[tokio::test]
async fn the_integrity_migration_checks_what_it_vouches_for() {
    let s = setup().await;
    let legacy = |s: &Setup| {
        s.storage.tamper(&s.ring, |raw| {
            *raw.manifest = None;
            for a in raw.audit.iter_mut() {
                a.mac = None;
                a.seq = 0;
            }
        })
    };
    legacy(&s);
    // An operator's rotator, as keyrotctl builds it (no key ring that served the ring).
    let rotator = operator(&s, Policy::default());
    // A stray request fails on the legacy ring and writes a chained record.
    let failed = rotator.revoke(ctx(), "nope", "typo").await;
    assert!(matches!(failed, Err(RotateError::Integrity(_))), "{failed:?}");
    assert!(
        s.storage
            .audit_log(&s.ring, AuditQuery::default())
            .await
            .expect("audit")[0]
            .mac
            .is_some()
    );
    let ring = s.storage.load(&s.ring).await.expect("load");
    let digest = keyrot_core::rows_digest(&ring);
    let stale = rotator
        .authenticate_ring_reviewed(ctx(), Some("not-what-was-reviewed"))
        .await
        .expect("answer");
    assert_eq!(stale.outcome, Outcome::Refused);
    assert!(
        stale
            .detail
            .unwrap_or_default()
            .contains("changed since they were reviewed")
    );
    // A swapped public key with the stored fingerprint left alone.
    let active = ring.active().expect("active").kid.clone();
    let attacker = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let jwk = attacker.public_key().to_jwk(&active).to_string();
    let original = ring.keys.clone();
    s.storage.tamper(&s.ring, |raw| raw.keys[0].public_jwk = jwk.clone());
    let r = rotator.authenticate_ring(ctx()).await.expect("answer");
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.detail.unwrap_or_default().contains(&active), "names the row");
    s.storage.tamper(&s.ring, |raw| *raw.keys = original.clone());
    let ok = rotator
        .authenticate_ring_reviewed(ctx(), Some(&digest))
        .await
        .expect("migrate");
    assert_eq!(ok.outcome, Outcome::Authenticated, "{ok:?}");
    assert!(rotator.verify_audit_chain().await.expect("read").is_ok());
}

/// A corrupted sealed private key is a tampered row, not a ring that fails to load.
#[tokio::test]
async fn a_corrupted_sealed_key_is_a_tampered_row() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.storage.tamper(&s.ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == active).expect("row");
        if let Some(sealed) = row.sealed.as_mut()
            && let Some(b) = sealed.ciphertext.last_mut()
        {
            *b ^= 1;
        }
        *raw.generation += 1;
    });
    let b = instance(&s).await;
    assert!(b.snapshot().integrity().tampered.iter().any(|t| t.kid == active));
    assert_eq!(b.snapshot().active_kid(), None);
    assert_eq!(b.snapshot().keys().iter().filter(|k| k.tampered.is_none()).count(), 1);
}

/// Unchained records in a ledger that was chained from its start, and records with a
/// position but no MAC, are breaks.
#[tokio::test]
async fn unchained_records_are_only_history_the_migration_vouched_for() {
    let s = setup().await;
    let mut fake = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit")[0]
        .clone();
    fake.id = "backdated".into();
    fake.at = t0() - TimeDelta::days(365);
    fake.mac = None;
    fake.seq = 0;
    s.storage.tamper(&s.ring, |raw| raw.audit.push(fake.clone()));
    let b = s.rotator.verify_audit_chain().await.expect("read");
    assert_eq!(b.err().map(|b| b.id), Some("backdated".to_owned()));
    s.storage.tamper(&s.ring, |raw| {
        let last = raw.audit.last_mut().expect("record");
        last.seq = 2;
    });
    let b = s.rotator.verify_audit_chain().await.expect("read");
    assert_eq!(
        b.err().map(|b| b.id),
        Some("backdated".to_owned()),
        "a position without a MAC"
    );
}

/// A ring with a manifest whose ledger lost every MAC (stripped) is a break: the manifest
/// names the chained record of its commit.
#[tokio::test]
async fn a_ledger_stripped_of_its_macs_is_a_break() {
    let s = setup().await;
    s.storage.tamper(&s.ring, |raw| {
        for a in raw.audit.iter_mut() {
            a.mac = None;
            a.seq = 0;
        }
    });
    let b = s
        .rotator
        .verify_audit_chain()
        .await
        .expect("read")
        .expect_err("stripped MACs are found");
    assert!(b.reason.contains("last commit"), "{b:?}");
}

/// Retiring a ring (tenant offboarding) revokes every key, destroys every private key,
/// and is recorded in the authenticated manifest: someone who can write to the database
/// cannot take the marker away (the manifest then fails authentication, and a repair keeps
/// the ring retired from its chained ledger).
#[tokio::test]
async fn a_retired_ring_stays_retired_even_against_a_writer_to_the_database() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let token = s.keyring.sign(&claims(&s)).expect("sign");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();

    let r = s.rotator.retire_ring(ctx(), "tenant offboarded").await.expect("retire");
    assert_eq!(r.outcome, Outcome::Retired, "{r:?}");
    assert_eq!(r.old_kid.as_deref(), Some(active.as_str()));
    let radius = r.revocation.as_ref().expect("when the last active key is refused");
    assert_eq!(radius.kid, active);
    let ring = s.storage.load(&s.ring).await.expect("load");
    assert!(ring.keys.len() >= 2);
    for k in &ring.keys {
        assert_eq!(k.state, KeyState::Expired, "{}", k.kid);
        assert!(
            k.revoked_at.is_some() && k.sealed.is_none() && k.purged_at.is_some(),
            "{}",
            k.kid
        );
        assert!(
            k.revoke_reason
                .as_deref()
                .is_some_and(|r| r.contains("tenant offboarded"))
        );
    }
    assert!(keyrot_core::check_ring(&ring, &*s.sealer).retired);
    assert!(s.keyring.snapshot().is_retired());
    assert!(s.keyring.verify(&token).is_err(), "nothing of the ring verifies");
    assert!(s.keyring.sign(&claims(&s)).is_err(), "nor signs");
    let audit = &s
        .storage
        .audit_log(&s.ring, AuditQuery { limit: 1 })
        .await
        .expect("audit")[0];
    assert_eq!(
        (audit.trigger.as_str(), audit.outcome, audit.reason.as_deref()),
        ("retire_ring", Outcome::Retired, Some("tenant offboarded"))
    );

    // No new key, ever: init, rotations, forced rotations and imports are refused; a
    // tick finds nothing due and writes nothing; retiring again changes nothing.
    let g = ring.generation;
    s.clock.advance(TimeDelta::days(400));
    assert_eq!(s.rotator.tick().await.expect("tick").outcome, Outcome::NothingDue);
    for r in [
        s.rotator.init(ctx()).await.expect("init"),
        s.rotator.rotate(ctx()).await.expect("rotate"),
        s.rotator.force_rotate(ctx(), "again", true).await.expect("force"),
    ] {
        assert_eq!(
            (r.outcome, r.refusal.clone()),
            (Outcome::Refused, Some(keyrot_core::Refusal::RingRetired)),
            "{r:?}"
        );
    }
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let imported = s
        .rotator
        .import(ctx(), ImportedKey { key, kid: None }, ImportState::Active)
        .await
        .expect("import");
    assert_eq!(imported.refusal, Some(keyrot_core::Refusal::RingRetired));
    let again = s.rotator.retire_ring(ctx(), "twice").await.expect("retire again");
    assert_eq!(again.outcome, Outcome::NothingDue);
    assert_eq!(
        s.storage.generation(&s.ring).await.expect("generation"),
        g,
        "nothing was committed"
    );

    // A writer to the database strips the marker: the manifest no longer authenticates,
    // so nothing is trusted and no rotation builds on it.
    let manifest = ring.manifest.clone().expect("manifest");
    assert!(manifest.contains("\"retired\":true"), "the marker is stored");
    let stripped = manifest.replace(",\"retired\":true", "");
    assert_ne!(stripped, manifest);
    s.storage.tamper(&s.ring, |raw| *raw.manifest = Some(stripped));
    let tampered = s.storage.load(&s.ring).await.expect("load");
    let report = keyrot_core::check_ring(&tampered, &*s.sealer);
    assert!(
        matches!(report.integrity, RingIntegrity::ManifestInvalid(_)),
        "{report:?}"
    );
    assert!(s.rotator.init(ctx()).await.is_err(), "nothing builds on it");
    // The operator's repair re-issues the manifest: still retired (from the ledger), and
    // still nothing is due or may be created.
    // (An operator's fresh rotator: this one served the authenticated generation, and
    // refuses to go back from it.)
    let operator = Rotator::builder(
        s.ring.clone(),
        s.storage.clone(),
        Arc::new(MemoryLock::default()),
        s.sealer.clone(),
    )
    .with_clock(Arc::new(s.clock.clone()))
    .build();
    let repaired = operator.quarantine_tampered(ctx(), "INC-7").await.expect("repair");
    assert_eq!(repaired.outcome, Outcome::Quarantined, "{repaired:?}");
    let ring = s.storage.load(&s.ring).await.expect("load");
    assert!(
        keyrot_core::check_ring(&ring, &*s.sealer).retired,
        "a repair keeps it retired"
    );
    let r = operator.init(ctx()).await.expect("init");
    assert_eq!(r.refusal, Some(keyrot_core::Refusal::RingRetired), "{r:?}");
}

/// Retiring needs a reason and a ring that exists.
#[tokio::test]
async fn retiring_is_refused_without_a_reason_or_a_ring() {
    let s = setup().await;
    let r = s.rotator.retire_ring(ctx(), "  ").await.expect("retire");
    assert_eq!(r.refusal, Some(keyrot_core::Refusal::ReasonRequired), "{r:?}");
    assert!(s.keyring.snapshot().active_kid().is_some(), "nothing changed");
    let unknown = Rotator::builder(
        RingName::new("never-created").expect("ring"),
        s.storage.clone(),
        Arc::new(MemoryLock::default()),
        s.sealer.clone(),
    )
    .build();
    let r = unknown.retire_ring(ctx(), "offboarding").await.expect("retire");
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert_eq!(r.generation, 0);
    let never = RingName::new("never-created").expect("ring");
    assert_eq!(
        s.storage.generation(&never).await.expect("generation"),
        0,
        "no ring was made"
    );
}

/// Takes `s`'s ring back to how keyrot wrote rings before authentication: no manifest, an
/// unchained ledger.
fn make_legacy(s: &Setup) {
    s.storage.tamper(&s.ring, |raw| {
        *raw.manifest = None;
        for a in raw.audit.iter_mut() {
            a.mac = None;
            a.seq = 0;
        }
    });
}

/// An operator's rotator with `policy`, as keyrotctl builds it (no key ring).
fn operator(s: &Setup, policy: Policy) -> Rotator {
    Rotator::builder(
        s.ring.clone(),
        s.storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(s.clock.clone()))),
        s.sealer.clone(),
    )
    .with_clock(Arc::new(s.clock.clone()))
    .with_policy(policy)
    .build()
}

/// Issue 20 §2: the integrity migration refuses lifecycle times no rotation under the
/// policy produces, at their exact bounds: a past event up to `clock_skew` ahead passes and
/// one a millisecond later is refused; a Retiring row without `retired_at` is refused; a
/// Retiring window longer than `retire_grace` is refused under the default policy and
/// accepted under the longer `retire_grace` it was written with.
#[tokio::test]
async fn the_integrity_migration_refuses_times_the_policy_could_not_produce() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let retiring = s.keyring.snapshot().active_kid().expect("active").to_owned();
    s.rotator.force_rotate(ctx(), "two keys", false).await.expect("force");
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    make_legacy(&s);
    let rotator = operator(&s, Policy::default());
    let skew = Policy::default().clock_skew();
    let at = |kid: &str, f: &dyn Fn(&mut keyrot_core::KeyRecord)| {
        s.storage.tamper(&s.ring, |raw| {
            f(raw.keys.iter_mut().find(|k| k.kid == kid).expect("row"))
        })
    };
    let refused = |needle: &'static str, kid: String| {
        let rotator = rotator.clone();
        async move {
            let r = rotator.authenticate_ring(ctx()).await.expect("answer");
            assert_eq!(r.outcome, Outcome::Refused, "{needle}: {r:?}");
            let detail = r.detail.unwrap_or_default();
            assert!(detail.contains(&kid) && detail.contains(needle), "{detail}");
        }
    };
    let original = s.storage.load(&s.ring).await.expect("load").keys;
    let now = s.clock.now();
    at(&active, &|k| {
        k.activated_at = Some(now + skew + TimeDelta::milliseconds(1))
    });
    refused("activated_at", active.clone()).await;
    at(&retiring, &|k| k.retired_at = None);
    refused("without a retired_at", retiring.clone()).await;
    s.storage.tamper(&s.ring, |raw| *raw.keys = original.clone());
    at(&retiring, &|k| {
        k.expires_at = k.retired_at.map(|t| t + TimeDelta::days(14))
    });
    refused("retire_grace (7d)", retiring.clone()).await;
    at(&active, &|k| k.activated_at = Some(now + skew));
    let written_with = Policy::builder()
        .with_retire_grace(std::time::Duration::from_secs(14 * 86_400))
        .build()
        .expect("policy");
    let ok = operator(&s, written_with)
        .authenticate_ring(ctx())
        .await
        .expect("answer");
    assert_eq!(ok.outcome, Outcome::Authenticated, "{ok:?}");
}

/// Issue 20 §3 on the in-memory store: the generation column at `u64::MAX`, at `2^62 + 1`
/// and one ahead of the manifest is reported as altered; repair works from the authenticated
/// generation without overflowing, says what it found, and the ring serves and rotates. A
/// legacy ring with a generation above the bound is not authenticated.
#[tokio::test]
async fn repair_works_from_the_authenticated_generation_whatever_the_column_says() {
    let s = setup().await;
    let token = s.keyring.sign(&claims(&s)).expect("sign");
    let mut generation = 1;
    for (stored, expected_next) in [(u64::MAX, 2), ((1 << 62) + 1, 3), (4, 5)] {
        s.storage.tamper(&s.ring, |raw| *raw.generation = stored);
        let b = instance(&s).await;
        let summary = b.snapshot().integrity().summary();
        assert!(
            summary.contains("the stored generation was altered"),
            "{stored}: {summary}"
        );
        assert!(
            b.verify(&token).is_ok(),
            "{stored}: the authenticated rows still verify"
        );
        let r = operator(&s, Policy::default())
            .quarantine_tampered(ctx(), "generation drill")
            .await
            .expect("repair");
        assert_eq!(r.outcome, Outcome::Quarantined, "{stored}: {r:?}");
        let detail = r.detail.unwrap_or_default();
        assert!(detail.contains("the stored generation was altered"), "{detail}");
        assert!(
            detail.contains(&format!("authenticated generation is {generation}")),
            "{detail}"
        );
        assert_eq!(r.generation, expected_next, "{stored}");
        assert_eq!(s.storage.generation(&s.ring).await.expect("generation"), expected_next);
        let c = instance(&s).await;
        assert!(
            c.snapshot().integrity().is_intact(),
            "{}",
            c.snapshot().integrity().summary()
        );
        assert!(c.verify(&token).is_ok());
        generation = expected_next;
    }
    s.clock.advance(TimeDelta::hours(2));
    let rotated = operator(&s, Policy::default())
        .force_rotate(ctx(), "after the repairs", false)
        .await
        .expect("rotate");
    assert_eq!(
        (rotated.outcome, rotated.generation),
        (Outcome::Rotated, generation + 1)
    );
    assert!(s.rotator.verify_audit_chain().await.expect("read").is_ok());

    make_legacy(&s);
    s.storage.tamper(&s.ring, |raw| *raw.generation = (1 << 62) + 1);
    let r = operator(&s, Policy::default())
        .authenticate_ring(ctx())
        .await
        .expect("answer");
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(
        r.detail
            .unwrap_or_default()
            .contains("the stored generation was altered")
    );
}
