//! Every request that changes the ring — init, rotate, revoke, a forced rotation, an
//! import, the integrity migration, repair and rewrap — goes through the same lock, load,
//! seal, commit, notify and release phases. One test in its own binary, with the
//! capturing subscriber installed globally.

use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{
    Algorithm, ImportState, ImportedKey, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage,
    Outcome, PrivateKey, RequestContext, RingName, Rotator, RsaBits,
};
use std::sync::{Arc, Mutex};

/// Records, in order, `attempt:<trigger>` for every attempt span and the `phase` of
/// every phase span.
#[derive(Clone, Default)]
struct Phases(Arc<Mutex<Vec<String>>>);

struct Field<'a> {
    name: &'static str,
    value: &'a mut Option<String>,
}

impl tracing::field::Visit for Field<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == self.name {
            *self.value = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name {
            *self.value = Some(format!("{value:?}"));
        }
    }
}

impl tracing::Subscriber for Phases {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let (prefix, name) = match span.metadata().name() {
            "keyrot.attempt" => ("attempt:", "trigger"),
            "keyrot.phase" => ("", "phase"),
            _ => return tracing::span::Id::from_u64(1),
        };
        let mut value = None;
        span.record(&mut Field {
            name,
            value: &mut value,
        });
        if let Some(v) = value {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{prefix}{v}"));
        }
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Phases {
    /// The phases of the attempts since the last call, one list per attempt.
    fn take(&self) -> Vec<Vec<String>> {
        let log = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let mut attempts: Vec<Vec<String>> = Vec::new();
        for entry in log {
            if entry.starts_with("attempt:") {
                attempts.push(vec![entry]);
            } else if let Some(current) = attempts.last_mut() {
                current.push(entry);
            }
        }
        attempts
    }
}

fn spec(mk: &MasterKey) -> String {
    String::from_utf8(mk.to_spec().expose().to_vec()).expect("utf8")
}

#[tokio::test]
async fn every_commit_runs_the_same_phases() {
    let phases = Phases::default();
    tracing::subscriber::set_global_default(phases.clone()).expect("the only subscriber");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
    let storage = Arc::new(MemoryStorage::new());
    let mk1 = MasterKey::generate("mk1").expect("mk1");
    let sealer = Arc::new(MasterKeySealer::from_spec(&spec(&mk1)).expect("sealer"));
    let ring = RingName::new("svc").expect("ring");
    let rotator = |sealer: Arc<MasterKeySealer>, keyring: KeyRing| {
        Rotator::builder(
            ring.clone(),
            storage.clone(),
            Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
            sealer,
        )
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring)
        .build()
    };
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rot = rotator(sealer.clone(), keyring);
    let ctx = || RequestContext::actor("ops");
    let mut answers = Vec::new();

    answers.push(rot.init(ctx()).await.expect("init"));
    clock.advance(TimeDelta::days(7));
    answers.push(rot.rotate(ctx().with_idempotency_key("k1")).await.expect("rotate"));
    let pending = answers[1].new_kid.clone().expect("scheduled");
    answers.push(rot.revoke(ctx(), pending, "not needed").await.expect("revoke"));
    clock.advance(TimeDelta::hours(2));
    answers.push(rot.force_rotate(ctx(), "drill", false).await.expect("force"));
    clock.advance(TimeDelta::hours(2));
    let key = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("keygen");
    let imported = ImportedKey { key, kid: None };
    answers.push(rot.import(ctx(), imported, ImportState::Active).await.expect("import"));
    // A ring as keyrot wrote it before manifests: the integrity migration.
    storage.tamper(&ring, |raw| {
        *raw.manifest = None;
        for a in raw.audit.iter_mut() {
            a.mac = None;
            a.seq = 0;
        }
    });
    answers.push(rot.authenticate_ring(ctx()).await.expect("authenticate"));
    // A retired row altered in the database: repair.
    let first = answers[0].new_kid.clone().expect("bootstrapped");
    storage.tamper(&ring, |raw| {
        let row = raw.keys.iter_mut().find(|k| k.kid == first).expect("row");
        row.public_jwk = row.public_jwk.replace('"', "'");
    });
    answers.push(rot.quarantine_tampered(ctx(), "INC-1").await.expect("repair"));
    // A new primary master key: rewrap.
    let mk2 = MasterKey::generate("mk2").expect("mk2");
    let both = Arc::new(MasterKeySealer::from_spec(&format!("{},{}", spec(&mk2), spec(&mk1))).expect("sealer"));
    let keyring2 = KeyRing::builder(ring.clone(), storage.clone(), both.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    answers.push(rotator(both, keyring2).rewrap(ctx()).await.expect("rewrap"));

    let outcomes: Vec<Outcome> = answers.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Bootstrapped,
            Outcome::Scheduled,
            Outcome::Revoked,
            Outcome::Rotated,
            Outcome::Imported,
            Outcome::Authenticated,
            Outcome::Quarantined,
            Outcome::Rewrapped,
        ]
    );
    let attempts = phases.take();
    let triggers: Vec<&str> = attempts.iter().map(|a| a[0].as_str()).collect();
    assert_eq!(
        triggers,
        [
            "attempt:init",
            "attempt:rotate",
            "attempt:revoke",
            "attempt:force_rotate",
            "attempt:import",
            "attempt:authenticate",
            "attempt:repair",
            "attempt:rewrap",
        ]
    );
    for a in &attempts {
        let phases: Vec<&str> = a[1..].iter().map(String::as_str).collect();
        let lock = phases.iter().position(|p| *p == "lock");
        let load = phases.iter().position(|p| *p == "load");
        assert!(lock.is_some() && lock < load, "{}: lock, then load: {phases:?}", a[0]);
        assert_eq!(
            phases[phases.len() - 4..],
            ["seal", "commit", "notify", "release"],
            "{}: the one commit step: {phases:?}",
            a[0]
        );
        assert_eq!(phases.iter().filter(|p| **p == "commit").count(), 1, "{}", a[0]);
    }
    assert_eq!(
        attempts[1][1..3],
        ["idempotency", "lock"],
        "a request with an idempotency key is checked for a replay first"
    );
}
