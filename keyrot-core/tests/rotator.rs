//! Behaviour of the rotator and the key ring through the public API: seed 004 rate
//! limits, idempotency, revocation, import, rewrap, refresh, outages and secret hygiene.

use async_trait::async_trait;
use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{
    Algorithm, Clock, ImportState, KeyRing, KeyState, ManualClock, MasterKey, MasterKeySealer, MemoryLock,
    MemoryStorage, Outcome, Policy, PrivateKey, RefreshError, Refusal, RequestContext, Ring, RingName, RotateError,
    Rotator, RsaBits, SealError, Storage, StorageError, TokenError,
};
use keyrot_core::{AuditLinker, AuditQuery, AuditRecord, Commit, CommitOutcome, IdempotencyRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A store that can be switched off: failure injection without mocks.
#[derive(Debug, Default)]
struct FlakyStorage {
    inner: MemoryStorage,
    down: AtomicBool,
    generation_queries: AtomicUsize,
}

impl FlakyStorage {
    fn check(&self) -> Result<(), StorageError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StorageError::Unavailable {
                message: "database unreachable (test)".into(),
                source: None,
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Storage for FlakyStorage {
    async fn load(&self, ring: &RingName) -> Result<Ring, StorageError> {
        self.check()?;
        self.inner.load(ring).await
    }
    async fn generation(&self, ring: &RingName) -> Result<u64, StorageError> {
        self.generation_queries.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.generation(ring).await
    }
    async fn commit(&self, commit: &Commit, l: &dyn AuditLinker) -> Result<CommitOutcome, StorageError> {
        self.check()?;
        self.inner.commit(commit, l).await
    }
    async fn record_attempt(
        &self,
        a: &AuditRecord,
        i: Option<&IdempotencyRecord>,
        l: &dyn AuditLinker,
    ) -> Result<(), StorageError> {
        self.check()?;
        self.inner.record_attempt(a, i, l).await
    }
    async fn audit_log(&self, ring: &RingName, q: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        self.check()?;
        self.inner.audit_log(ring, q).await
    }
    async fn idempotency(&self, ring: &RingName, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        self.check()?;
        self.inner.idempotency(ring, key).await
    }
}

struct Setup {
    master: MasterKey,
    clock: ManualClock,
    storage: Arc<FlakyStorage>,
    sealer: Arc<MasterKeySealer>,
    ring: RingName,
    keyring: KeyRing,
    rotator: Rotator,
}

async fn setup_with(policy: Policy) -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(FlakyStorage::default());
    let master = MasterKey::generate("mk1").expect("mk");
    let sealer = Arc::new(MasterKeySealer::new(master.clone(), []).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(policy.clone())
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
    .with_policy(policy)
    .with_instance("a")
    .with_keyring(keyring.clone())
    .build();
    Setup {
        master,
        clock,
        storage,
        sealer,
        ring,
        keyring,
        rotator,
    }
}

async fn setup() -> Setup {
    let s = setup_with(Policy::default()).await;
    let r = s.rotator.init(RequestContext::actor("test")).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    s
}

fn ctx() -> RequestContext {
    RequestContext::actor("scheduler-client")
}

fn claims(s: &Setup, ttl: i64) -> serde_json::Value {
    let now = s.clock.now().timestamp();
    serde_json::json!({"sub": "u", "iat": now, "exp": now + ttl})
}

#[tokio::test]
async fn normal_rotation_too_soon_is_refused_with_exact_retry_after() {
    let s = setup().await;
    s.clock.advance(TimeDelta::days(2) + TimeDelta::milliseconds(1500));
    let r = s.rotator.rotate(ctx()).await.expect("rotate");
    assert_eq!(r.outcome, Outcome::RateLimited);
    let expected = TimeDelta::days(4) - TimeDelta::milliseconds(1500);
    assert_eq!(r.retry_after_ms, Some(expected.num_milliseconds()));
    // Whole seconds, rounded up.
    assert_eq!(r.retry_after_secs(), Some(4 * 86_400 - 1));
    assert!(matches!(r.refusal, Some(Refusal::RateLimited { forced: false, .. })));
    // At exactly min_interval it is allowed (scheduled: the new key is published first).
    s.clock.advance(expected);
    let r = s.rotator.rotate(ctx()).await.expect("rotate");
    assert_eq!(r.outcome, Outcome::Scheduled);
    assert_eq!(r.activates_at, Some(s.clock.now() + TimeDelta::days(1)));
}

#[tokio::test]
async fn forced_rotation_within_an_hour_is_refused_and_allowed_after() {
    let s = setup().await;
    let first = s.rotator.force_rotate(ctx(), "key leaked", false).await.expect("force");
    assert_eq!(first.outcome, Outcome::Rotated);
    assert!(first.forced);
    s.clock.advance(TimeDelta::minutes(59));
    let again = s.rotator.force_rotate(ctx(), "again", false).await.expect("force");
    assert_eq!(again.outcome, Outcome::RateLimited);
    assert_eq!(again.retry_after_secs(), Some(60));
    s.clock.advance(TimeDelta::minutes(1));
    let after = s.rotator.force_rotate(ctx(), "again", false).await.expect("force");
    assert_eq!(after.outcome, Outcome::Rotated);
    assert_eq!(after.old_kid, first.new_kid);
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit");
    let forced: Vec<_> = audit.iter().filter(|a| a.forced).map(|a| a.outcome).collect();
    assert_eq!(forced, vec![Outcome::Rotated, Outcome::RateLimited, Outcome::Rotated]);
}

#[tokio::test]
async fn forced_rotation_requires_a_reason() {
    let s = setup().await;
    for reason in ["", "   "] {
        let r = s.rotator.force_rotate(ctx(), reason, false).await.expect("force");
        assert_eq!(r.outcome, Outcome::Refused);
        assert_eq!(r.refusal, Some(Refusal::ReasonRequired));
    }
    assert_eq!(s.storage.generation(&s.ring).await.expect("gen"), 1);
}

#[tokio::test]
async fn forced_rotation_takes_effect_at_once_and_revoke_old_kills_old_tokens() {
    let s = setup().await;
    let old_token = s.keyring.sign(&claims(&s, 600)).expect("sign");
    let r = s.rotator.force_rotate(ctx(), "leak", true).await.expect("force");
    assert_eq!(r.outcome, Outcome::Rotated);
    // This instance serves the new key at once.
    assert_eq!(s.keyring.snapshot().active_kid(), r.new_kid.as_deref());
    assert_eq!(s.keyring.verify(&old_token).err(), Some(TokenError::UnknownKid));
    let new_token = s.keyring.sign(&claims(&s, 600)).expect("sign");
    assert!(s.keyring.verify(&new_token).is_ok());
    let ring = s.storage.load(&s.ring).await.expect("load");
    let old = ring.key(r.old_kid.as_deref().expect("old")).expect("old key");
    assert_eq!(old.state, KeyState::Expired);
    assert_eq!(old.revoke_reason.as_deref(), Some("leak"));
}

#[tokio::test]
async fn idempotency_key_rotates_once_and_replays_the_first_answer() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let c = ctx()
        .with_idempotency_key("slot-2026-03-01T14")
        .with_request_id("req-1");
    let first = s.rotator.force_rotate(c.clone(), "drill", false).await.expect("first");
    assert_eq!(first.outcome, Outcome::Rotated);
    s.clock.advance(TimeDelta::hours(2));
    let second = s.rotator.force_rotate(c.clone(), "drill", false).await.expect("second");
    assert!(second.replayed);
    assert_eq!(RotationView::of(&first), RotationView::of(&second), "same answer");
    assert_eq!(s.storage.generation(&s.ring).await.expect("gen"), 2, "rotated once");
    // The same key for a different request is refused.
    let other = s.rotator.force_rotate(c, "different reason", false).await;
    assert!(matches!(other, Err(RotateError::IdempotencyKeyReused)));
    // Every attempt has exactly one audit record.
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit");
    let outcomes: Vec<_> = audit.iter().rev().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Bootstrapped,
            Outcome::Rotated,
            Outcome::Replayed,
            Outcome::Refused
        ]
    );
    assert!(
        audit
            .iter()
            .take(3)
            .all(|a| a.idempotency_key.as_deref() == Some("slot-2026-03-01T14"))
    );
    assert_eq!(audit[2].request_id.as_deref(), Some("req-1"));
    // Invalid keys are refused before anything happens.
    let bad = s.rotator.rotate(ctx().with_idempotency_key("has space")).await;
    assert!(matches!(bad, Err(RotateError::InvalidIdempotencyKey)));
}

#[derive(Debug, PartialEq)]
struct RotationView(Outcome, Option<String>, Option<String>, u64);

impl RotationView {
    fn of(r: &keyrot_core::RotationReport) -> Self {
        Self(r.outcome, r.old_kid.clone(), r.new_kid.clone(), r.generation)
    }
}

#[tokio::test]
async fn revocation_rules() {
    let s = setup().await;
    let active = s.keyring.snapshot().active_kid().expect("active").to_owned();
    let r = s.rotator.revoke(ctx(), active.clone(), "nope").await.expect("revoke");
    assert!(matches!(r.refusal, Some(Refusal::CannotRevokeActive { .. })));
    let r = s.rotator.revoke(ctx(), "no-such-kid", "x").await.expect("revoke");
    assert!(matches!(r.refusal, Some(Refusal::UnknownKid { .. })));
    // A Retiring key's tokens verify until revoked.
    let token = s.keyring.sign(&claims(&s, 3600)).expect("sign");
    s.clock.advance(TimeDelta::hours(1) + TimeDelta::seconds(1));
    s.rotator.force_rotate(ctx(), "routine", false).await.expect("force");
    assert!(
        s.keyring
            .verify_at(&token, s.clock.now() - TimeDelta::minutes(10))
            .is_ok(),
        "retiring key verifies"
    );
    let r = s
        .rotator
        .revoke(ctx(), active.clone(), "compromised")
        .await
        .expect("revoke");
    assert_eq!(r.outcome, Outcome::Revoked);
    assert_eq!(s.keyring.verify(&token).err(), Some(TokenError::UnknownKid));
    let r = s.rotator.revoke(ctx(), active, "again").await.expect("revoke");
    assert!(matches!(r.refusal, Some(Refusal::AlreadyExpired { .. })));
}

#[tokio::test]
async fn imported_keys_keep_their_kid_and_are_never_duplicated() {
    let s = setup_with(Policy::default()).await;
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let mut jwk = key.public_key().to_jwk("legacy-kid-1");
    jwk["d"] = keyrot_core::testing::b64::encode(key.to_secret_bytes().expect("bytes").expose()).into();
    let imported = PrivateKey::from_jwk(&jwk, None).expect("import");
    assert_eq!(imported.effective_kid(), "legacy-kid-1");
    let r = s
        .rotator
        .import(ctx(), imported.clone(), ImportState::Active)
        .await
        .expect("import");
    assert_eq!(r.outcome, Outcome::Imported);
    assert_eq!(s.keyring.snapshot().active_kid(), Some("legacy-kid-1"));
    // Tokens the old issuer signed with that key keep verifying.
    let header = keyrot_core::testing::token::encode_header(Algorithm::EdDsa, "legacy-kid-1");
    let exp = s.clock.now().timestamp() + 60;
    let legacy = keyrot_core::testing::token::sign(
        &key.signing_key(),
        &header,
        &serde_json::json!({"exp": exp}),
        0,
        i64::MAX,
    )
    .expect("sign");
    assert!(s.keyring.verify(&legacy).is_ok());
    let again = s
        .rotator
        .import(ctx(), imported, ImportState::Pending)
        .await
        .expect("import");
    assert!(matches!(again.refusal, Some(Refusal::DuplicateKey { .. })));
    let ring = s.storage.load(&s.ring).await.expect("load");
    assert_eq!(ring.keys[0].fingerprint, key.public_key().thumbprint());
}

fn spec(mk: &MasterKey) -> String {
    String::from_utf8(mk.to_spec().expose().to_vec()).expect("utf8")
}

#[tokio::test]
async fn rewrap_moves_every_key_to_the_primary_and_unknown_ids_fail_closed() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    s.rotator
        .force_rotate(ctx(), "make two keys", false)
        .await
        .expect("force");
    let mk2 = MasterKey::generate("mk2").expect("mk2");
    // A sealer that only knows mk2 cannot open keys sealed under mk1: fail closed, naming the id.
    let only_new = Arc::new(MasterKeySealer::new(mk2.clone(), []).expect("sealer"));
    let err = KeyRing::builder(s.ring.clone(), s.storage.clone(), only_new.clone())
        .build()
        .await
        .err();
    match err {
        Some(RefreshError::Seal {
            source: SealError::UnknownMasterKey(id),
            ..
        }) => assert_eq!(id, "mk1"),
        other => panic!("expected unknown master key, got {other:?}"),
    }
    // Rewrap under the new primary with the old key still configured for opening.
    let both = Arc::new(MasterKeySealer::from_spec(&format!("{},{}", spec(&mk2), spec(&s.master))).expect("sealer"));
    let rot = Rotator::builder(s.ring.clone(), s.storage.clone(), Arc::new(MemoryLock::default()), both)
        .with_clock(Arc::new(s.clock.clone()))
        .build();
    let r = rot.rewrap(ctx()).await.expect("rewrap");
    assert_eq!(r.outcome, Outcome::Rewrapped);
    assert_eq!(r.generation, 3);
    let ring = s.storage.load(&s.ring).await.expect("load");
    assert!(
        ring.keys
            .iter()
            .all(|k| k.sealed.as_ref().is_some_and(|x| x.master_key_id == "mk2"))
    );
    assert!(
        KeyRing::builder(s.ring.clone(), s.storage.clone(), only_new)
            .build()
            .await
            .is_ok()
    );
    assert_eq!(rot.rewrap(ctx()).await.expect("rewrap").outcome, Outcome::NothingDue);
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit");
    assert_eq!(audit[0].trigger, keyrot_core::TriggerKind::Rewrap);
    assert_eq!(audit[1].outcome, Outcome::Rewrapped);
}

/// Time is paused (tokio's test clock), so waiting for the refresh interval is exact
/// and costs nothing; the storage counts its generation queries.
#[tokio::test(start_paused = true)]
async fn unknown_kid_refreshes_are_single_flight_and_a_real_kid_waits_at_most_the_interval() {
    let s = setup().await;
    // Instance B: its own key ring over the same store (default interval: 1 s).
    let b = KeyRing::builder(s.ring.clone(), s.storage.clone(), s.sealer.clone())
        .with_clock(Arc::new(s.clock.clone()))
        .build()
        .await
        .expect("b");
    s.clock.advance(TimeDelta::hours(2));
    s.rotator
        .force_rotate(ctx(), "rotate on A", false)
        .await
        .expect("force");
    let token = s.keyring.sign(&claims(&s, 300)).expect("sign");
    assert_eq!(
        b.verify(&token).err(),
        Some(TokenError::UnknownKid),
        "B has not seen the new key"
    );
    assert!(
        b.verify_refreshing(&token).await.is_ok(),
        "unknown kid triggers a refresh"
    );
    // A flood of 200 concurrent tokens with random kids: one shared refresh.
    let queries_before = s.storage.generation_queries.load(Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..200 {
        let b = b.clone();
        let forged = forge_with_kid(&format!("garbage-{i}"));
        flood.spawn(async move { b.verify_refreshing(&forged).await });
    }
    while let Some(r) = flood.join_next().await {
        assert_eq!(r.expect("join").err(), Some(TokenError::UnknownKid));
    }
    let flood_queries = s.storage.generation_queries.load(Ordering::SeqCst) - queries_before;
    assert_eq!(flood_queries, 1, "200 garbage kids cost one generation query");
    assert!(started.elapsed() <= std::time::Duration::from_secs(1));
    // Right after the flood a real new kid appears: it waits for the next refresh (at
    // most one interval) instead of being refused.
    s.clock.advance(TimeDelta::hours(2));
    s.rotator
        .force_rotate(ctx(), "rotate again", false)
        .await
        .expect("force");
    let token2 = s.keyring.sign(&claims(&s, 300)).expect("sign");
    let waited = tokio::time::Instant::now();
    assert!(
        b.verify_refreshing(&token2).await.is_ok(),
        "a real new kid verifies right after a flood"
    );
    assert!(
        waited.elapsed() <= std::time::Duration::from_secs(1),
        "delayed by at most the interval: {:?}",
        waited.elapsed()
    );
}

fn forge_with_kid(kid: &str) -> String {
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let header = keyrot_core::testing::token::encode_header(Algorithm::EdDsa, kid);
    keyrot_core::testing::token::sign(
        &key.signing_key(),
        &header,
        &serde_json::json!({"exp": i64::MAX}),
        0,
        i64::MAX,
    )
    .expect("sign")
}

#[tokio::test]
async fn outage_keeps_signing_and_verifying_and_rotation_fails_closed() {
    let s = setup().await;
    let token = s.keyring.sign(&claims(&s, 600)).expect("sign");
    s.storage.down.store(true, Ordering::SeqCst);
    assert!(s.keyring.refresh().await.is_err());
    assert!(s.keyring.is_stale(), "reports itself stale");
    assert!(s.keyring.verify(&token).is_ok(), "verifies from the snapshot");
    let t2 = s.keyring.sign(&claims(&s, 600)).expect("signs from the snapshot");
    assert!(s.keyring.verify(&t2).is_ok());
    s.clock.advance(TimeDelta::hours(2));
    let err = s.rotator.force_rotate(ctx(), "during outage", false).await;
    match err {
        Err(RotateError::Storage(e)) => assert!(e.to_string().contains("database unreachable")),
        other => panic!("rotation must fail closed, got {other:?}"),
    }
    s.storage.down.store(false, Ordering::SeqCst);
    assert!(s.keyring.refresh().await.is_ok());
    assert!(!s.keyring.is_stale());
    let r = s
        .rotator
        .force_rotate(ctx(), "after outage", false)
        .await
        .expect("force");
    assert_eq!(r.outcome, Outcome::Rotated);
}

#[tokio::test]
async fn private_key_bytes_never_leave_in_debug_errors_audit_jwks_or_reports() {
    let s = setup_with(Policy::default()).await;
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let secret = key.to_secret_bytes().expect("bytes");
    let forms = [
        keyrot_core::testing::b64::encode(secret.expose()),
        secret.expose().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        format!("{:?}", secret.expose()),
    ];
    let imported = keyrot_core::ImportedKey {
        key: key.clone(),
        kid: None,
    };
    let report = s
        .rotator
        .import(ctx(), imported, ImportState::Active)
        .await
        .expect("import");
    s.clock.advance(TimeDelta::hours(2));
    let report2 = s.rotator.force_rotate(ctx(), "hygiene", false).await.expect("force");
    let ring = s.storage.load(&s.ring).await.expect("load");
    let audit = s
        .storage
        .audit_log(&s.ring, AuditQuery::default())
        .await
        .expect("audit");
    let bad_token = s.keyring.verify("a.b.c").err();
    let mut haystacks = vec![
        format!("{key:?}"),
        format!("{:?}", key.signing_key()),
        format!("{secret:?}"),
        format!("{:?}", s.keyring),
        format!("{:?}", s.rotator),
        format!("{ring:?}"),
        format!("{audit:?}"),
        serde_json::to_string(&audit).expect("json"),
        serde_json::to_string(&report).expect("json"),
        serde_json::to_string(&report2).expect("json"),
        format!("{bad_token:?}"),
        String::from_utf8_lossy(s.keyring.snapshot().jwks().body()).into_owned(),
    ];
    for k in &ring.keys {
        haystacks.push(k.public_jwk.clone());
    }
    for h in &haystacks {
        for f in &forms {
            assert!(!h.contains(f.as_str()), "private key material leaked into: {h}");
        }
    }
    // Sealed bytes differ from the plaintext.
    let sealed = ring.keys[0].sealed.as_ref().expect("sealed");
    assert!(!sealed.ciphertext.windows(secret.len()).any(|w| w == secret.expose()));
    // The JWKS holds only public members.
    let jwks: serde_json::Value = serde_json::from_slice(s.keyring.snapshot().jwks().body()).expect("json");
    for k in jwks["keys"].as_array().expect("keys") {
        let mut members: Vec<&str> = k.as_object().expect("obj").keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, vec!["alg", "crv", "kid", "kty", "use", "x"]);
    }
}

#[tokio::test]
async fn jwks_etag_and_lifecycle_aware_max_age() {
    let s = setup().await;
    let now = s.clock.now();
    let j1 = s.keyring.snapshot().jwks().clone();
    // Next change: a Pending key at activated + 7d − 1d = 6 days away; the cap (1 h) wins.
    assert_eq!(j1.max_age_secs(now), 3600);
    assert_eq!(j1.cache_control(now), "public, max-age=3600");
    assert!(j1.etag().starts_with('"') && j1.etag().ends_with('"') && !j1.etag().starts_with("W/"));
    assert!(j1.matches_if_none_match(j1.etag()));
    assert!(j1.matches_if_none_match(&format!("\"x\", {}", j1.etag())));
    assert!(!j1.matches_if_none_match("\"other\""));
    // 10 minutes before the scheduler publishes the next key, caches must not outlive that.
    let soon = now + TimeDelta::days(6) - TimeDelta::minutes(10);
    assert_eq!(j1.max_age_secs(soon), 600);
    // A pending key appears in the JWKS before it signs, and the ETag changes.
    s.clock.set(now + TimeDelta::days(6));
    let r = s.rotator.tick().await.expect("tick");
    assert_eq!(r.outcome, Outcome::Scheduled);
    let snap = s.keyring.snapshot();
    let j2 = snap.jwks();
    assert_ne!(j2.etag(), j1.etag());
    let body = String::from_utf8_lossy(j2.body()).into_owned();
    assert!(
        body.contains(r.new_kid.as_deref().expect("kid")),
        "pending key published"
    );
    assert_ne!(snap.active_kid(), r.new_kid.as_deref(), "but not signing");
}

#[tokio::test]
async fn rsa_rings_rotate_sign_and_verify() {
    for alg in [Algorithm::Rs256, Algorithm::Ps256] {
        let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
        let s = setup_with(policy).await;
        let r = s.rotator.init(RequestContext::actor("t")).await.expect("init");
        assert_eq!(r.outcome, Outcome::Bootstrapped);
        let token = s.keyring.sign(&claims(&s, 60)).expect("sign");
        let v = s.keyring.verify(&token).expect("verify");
        assert_eq!(v.alg, alg);
        let jwks: serde_json::Value = serde_json::from_slice(s.keyring.snapshot().jwks().body()).expect("json");
        assert_eq!(jwks["keys"][0]["alg"], alg.as_str());
        assert_eq!(jwks["keys"][0]["kty"], "RSA");
    }
}

#[tokio::test]
async fn signing_enforces_the_token_ttl_and_needs_an_active_key() {
    let s = setup_with(Policy::default()).await;
    assert!(matches!(
        s.keyring.sign(&claims(&s, 60)),
        Err(keyrot_core::SignError::NoActiveKey)
    ));
    s.rotator.init(ctx()).await.expect("init");
    assert!(s.keyring.sign(&claims(&s, 3600)).is_ok());
    assert!(matches!(
        s.keyring.sign(&claims(&s, 3601)),
        Err(keyrot_core::SignError::TtlTooLong {
            requested_secs: 3601,
            max_secs: 3600
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn scheduler_bootstraps_ticks_and_shuts_down_cleanly() {
    let s = setup_with(Policy::default()).await;
    let cfg = keyrot_core::SchedulerConfig {
        interval: std::time::Duration::from_secs(30),
        jitter: std::time::Duration::from_secs(5),
    };
    let handle = keyrot_core::spawn_scheduler(s.rotator.clone(), cfg);
    // Paused tokio time auto-advances while every task is idle: no real waiting.
    tokio::time::sleep(std::time::Duration::from_secs(100)).await;
    let ticks = handle.shutdown().await;
    assert!(
        (3..=4).contains(&ticks),
        "ticks at 0, 30–35, 60–70, 90–105 s: got {ticks}"
    );
    assert!(
        s.keyring.snapshot().active_kid().is_some(),
        "the first tick bootstrapped the ring"
    );
    assert_eq!(
        s.storage.generation(&s.ring).await.expect("gen"),
        1,
        "later ticks had nothing to do"
    );
}

#[tokio::test]
async fn refresher_follows_the_change_feed() {
    let s = setup().await;
    let storage = Arc::new(s.storage.inner.clone());
    let b = KeyRing::builder(s.ring.clone(), storage.clone(), s.sealer.clone())
        .build()
        .await
        .expect("b");
    let handle = b.spawn_refresher(Some(storage.clone()), std::time::Duration::from_secs(3600));
    // Let the refresher subscribe before A commits.
    tokio::task::yield_now().await;
    let rot = Rotator::builder(
        s.ring.clone(),
        storage,
        Arc::new(MemoryLock::default()),
        s.sealer.clone(),
    )
    .with_clock(Arc::new(s.clock.clone()))
    .build();
    s.clock.advance(TimeDelta::hours(2));
    let r = rot.force_rotate(ctx(), "feed", false).await.expect("force");
    let want = r.new_kid.clone().expect("kid");
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if b.snapshot().active_kid() == Some(want.as_str()) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(seen.is_ok(), "B learned of the rotation through the change feed");
    handle.shutdown().await;
}

#[tokio::test]
async fn keyring_fast_path_for_its_own_headers_still_checks_everything_else() {
    let s = setup().await;
    let token = s.keyring.sign(&claims(&s, 60)).expect("sign");
    let (header, rest) = token.split_once('.').expect("header");
    let (_, sig) = rest.split_once('.').expect("sig");
    let forged_payload = keyrot_core::testing::b64::encode(br#"{"sub":"admin","exp":99999999999}"#);
    let tampered = format!("{header}.{forged_payload}.{sig}");
    assert_eq!(s.keyring.verify(&tampered).err(), Some(TokenError::BadSignature));
    assert!(matches!(
        s.keyring.verify(&format!("{token}.x")),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(
        s.keyring.verify(&format!("{header}..{sig}")),
        Err(TokenError::Malformed(_))
    ));
    let huge = format!("{header}.{}.{sig}", "A".repeat(9000));
    assert!(matches!(s.keyring.verify(&huge), Err(TokenError::TooLarge { .. })));
    s.clock.advance(TimeDelta::seconds(60 + 30));
    assert_eq!(s.keyring.verify(&token).err(), Some(TokenError::Expired));
    // A header keyrot did not write (other member order) takes the full path and verifies too.
    let key_header = keyrot_core::testing::b64::encode(
        format!(
            r#"{{"kid":"{}","alg":"EdDSA"}}"#,
            s.keyring.snapshot().active_kid().expect("kid")
        )
        .as_bytes(),
    );
    assert_ne!(key_header, header);
}

#[tokio::test]
async fn idempotency_keys_belong_to_their_actor_and_rate_limits_are_not_replayed() {
    let s = setup().await;
    s.clock.advance(TimeDelta::hours(2));
    let a = RequestContext::actor("client-a").with_idempotency_key("k-1");
    let b = RequestContext::actor("client-b").with_idempotency_key("k-1");
    assert_eq!(
        s.rotator.force_rotate(a.clone(), "a", false).await.expect("a").outcome,
        Outcome::Rotated
    );
    // Client B's identical key is its own: not refused as reused, not answered with A's reply.
    let rb = s.rotator.force_rotate(b, "b", false).await.expect("b");
    assert!(!rb.replayed);
    assert_eq!(rb.outcome, Outcome::RateLimited);
    // A rate-limited answer is not stored: after the limit lifts, the same key rotates.
    let c = RequestContext::actor("client-c").with_idempotency_key("k-2");
    assert_eq!(
        s.rotator.force_rotate(c.clone(), "c", false).await.expect("c").outcome,
        Outcome::RateLimited
    );
    s.clock.advance(TimeDelta::hours(1));
    let again = s.rotator.force_rotate(c, "c", false).await.expect("c again");
    assert_eq!(again.outcome, Outcome::Rotated);
    assert!(!again.replayed);
}
