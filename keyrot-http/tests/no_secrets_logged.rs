//! No token, signature or `Authorization` header ever reaches the logs, whatever the
//! rotation endpoint, the status page and the bearer middleware are sent. One test in its
//! own binary, with the capturing subscriber installed globally.

use chrono::DateTime;
use keyrot_core::{
    Clock, KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName,
    Rotator,
};
use keyrot_http::{BearerAuth, HttpEndpoints, HttpRequest, RequestBody};
use serde_json::json;
use std::sync::{Arc, Mutex};

/// A subscriber that writes every span and event field into one string.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Visit<'a>(&'a mut String);

impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        span.record(&mut Visit(&mut s));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        values.record(&mut Visit(&mut s));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.push('\n');
        event.record(&mut Visit(&mut s));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn fixture(clock: &ManualClock) -> HttpEndpoints {
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let ring = RingName::new("t").expect("ring");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring,
        storage,
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .with_keyring(keyring.clone())
    .build();
    rotator.init(RequestContext::actor("t")).await.expect("init");
    HttpEndpoints::builder(keyring, rotator).build().expect("endpoints")
}

#[tokio::test]
async fn the_authorization_header_is_never_logged() {
    let capture = Capture::default();
    // The only test of this binary: the capture is the global subscriber, so no other
    // test's thread can make a callsite's cached interest miss it.
    tracing::subscriber::set_global_default(capture.clone()).expect("the only subscriber");
    let clock = ManualClock::new(DateTime::from_timestamp(1_900_000_000, 0).expect("time"));
    let e = fixture(&clock).await;
    let now = clock.now().timestamp();
    let sign = |scope: &str, sub: &str| {
        e.keyring()
            .sign(&json!({"sub": sub, "client_id": "svc", "scope": scope, "iat": now, "exp": now + 60}))
            .expect("sign")
    };
    let tokens = [
        sign("admin.force-rotate-keys", "svc"),
        sign("service.rotate-keys", "svc"),
        sign("service.rotate-keys", "user"),
        sign("other", "svc"),
        "eyJhbGciOiJFZERTQSIsImtpZCI6Im5vcGUifQ.e30.c2ln".to_owned(),
    ];
    for t in &tokens {
        let headers = vec![
            ("authorization", format!("Bearer {t}")),
            ("content-type", "application/json".to_owned()),
        ];
        let req = HttpRequest {
            method: "POST",
            headers: &headers,
        };
        let _ = e
            .rotate(&req, RequestBody::Complete(br#"{"force":true,"reason":"log test"}"#))
            .await;
        let _ = e.rotate(&req, RequestBody::Complete(b"")).await;
        let get = HttpRequest {
            method: "GET",
            headers: &headers,
        };
        let _ = e.status(&get).await;
        let _ = BearerAuth::new(e.keyring().clone()).authenticate(&headers).await;
    }
    let logged = capture.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(logged.contains("refused"), "the capture works: {logged}");
    assert!(logged.contains("rotated"), "the capture saw the rotation: {logged}");
    for t in &tokens {
        let signature = t.rsplit('.').next().unwrap_or(t);
        assert!(!logged.contains(signature), "a token was logged: {logged}");
    }
    assert!(
        !logged.contains("Bearer "),
        "an Authorization header was logged: {logged}"
    );
}
