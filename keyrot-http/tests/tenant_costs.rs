//! What anonymous requests to a multi-tenant server can cost (issue 20, item 6): random
//! ring names, a tenant's JWKS, concurrent first requests, unknown kids across rings.

use keyrot_core::testing::Counting;
use keyrot_core::{
    Mac, ManagerConfig, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingManager, RingName,
    SealContext, SealError, SealedKey, Sealer, SecretBytes, Storage,
};
use keyrot_http::{HttpRequest, PathPattern, RingSelector, TenantAuth, TenantEndpoints, WithPath};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A sealer that refuses to open any sealed key, and counts the attempts.
#[derive(Debug)]
struct NoOpening {
    inner: MasterKeySealer,
    opens: AtomicU64,
}

impl Sealer for NoOpening {
    fn authenticate(&self, message: &[u8]) -> Result<Mac, SealError> {
        self.inner.authenticate(message)
    }

    fn check_authentication(&self, mac: &Mac, message: &[u8]) -> Result<(), SealError> {
        self.inner.check_authentication(mac, message)
    }

    fn primary_key_id(&self) -> String {
        self.inner.primary_key_id()
    }

    fn seal(&self, plaintext: &SecretBytes, ctx: &SealContext<'_>) -> Result<SealedKey, SealError> {
        self.inner.seal(plaintext, ctx)
    }

    fn open(&self, _: &SealedKey, _: &SealContext<'_>) -> Result<SecretBytes, SealError> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        Err(SealError::Format)
    }
}

fn master_key() -> MasterKey {
    MasterKey::new("mk-costs", SecretBytes::new(vec![7; 32])).expect("master key")
}

fn sealer() -> Arc<MasterKeySealer> {
    Arc::new(MasterKeySealer::new(master_key(), []).expect("sealer"))
}

fn ring(name: &str) -> RingName {
    RingName::new(name).expect("ring name")
}

fn manager(storage: &Arc<Counting<MemoryStorage>>, sealer: Arc<dyn Sealer>, config: ManagerConfig) -> RingManager {
    RingManager::builder(storage.clone(), Arc::new(MemoryLock::default()), sealer)
        .with_config(config)
        .build()
}

/// A store holding `names`, onboarded by another instance.
async fn store_with(names: &[&str]) -> Arc<Counting<MemoryStorage>> {
    let storage = Arc::new(Counting::new(MemoryStorage::new()).with_load_delay(Duration::from_millis(20)));
    let writer = manager(&storage, sealer(), ManagerConfig::default());
    for n in names {
        writer
            .onboard(&ring(n), RequestContext::actor("setup"))
            .await
            .expect("onboard");
    }
    storage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_ring_names_costs_about_one_query_a_second() {
    let storage = store_with(&["acme", "globex"]).await;
    let m = manager(&storage, sealer(), ManagerConfig::default());
    let before = storage.calls();
    let started = tokio::time::Instant::now();
    for i in 0..1000 {
        let name = ring(&format!("random-{i:04}-{:x}", i * 7919));
        assert!(m.existing_keyring(&name).await.expect("look-up").is_none());
    }
    let elapsed = started.elapsed();
    let queries = storage.calls() - before;
    println!("1000 random names in {elapsed:?}: {queries} storage queries");
    let allowed = 2 + elapsed.as_secs();
    assert!(
        queries <= allowed,
        "{queries} queries for 1000 unknown names (at most {allowed})"
    );
    assert_eq!(m.loaded_usage().0, 0, "nothing was loaded");
    // A real ring is still found (it was listed by the one look-up) and loaded.
    assert!(m.existing_keyring(&ring("acme")).await.expect("look-up").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_tenant_jwks_or_discovery_request_opens_no_sealed_key() {
    let storage = store_with(&["acme"]).await;
    let counting = Arc::new(NoOpening {
        inner: MasterKeySealer::new(master_key(), []).expect("sealer"),
        opens: AtomicU64::new(0),
    });
    let m = manager(&storage, counting.clone(), ManagerConfig::default());
    let tenants =
        TenantEndpoints::new(m.clone()).with_issuer(Arc::new(|r: &RingName| format!("https://id.example/t/{r}")));
    let headers: Vec<(&str, &str)> = Vec::new();
    let req = HttpRequest {
        method: "GET",
        headers: &headers,
    };
    let jwks = tenants
        .respond("/t/acme/.well-known/jwks.json", &req)
        .await
        .expect("a tenant route");
    assert_eq!(jwks.status, 200);
    assert_eq!(
        counting.opens.load(Ordering::SeqCst),
        0,
        "serving the JWKS opened no sealed key"
    );
    let body = String::from_utf8(jwks.body.as_bytes().to_vec()).expect("utf-8");
    let expected = storage.inner().load(&ring("acme")).await.expect("load").keys[0]
        .kid
        .clone();
    assert!(body.contains(&expected), "the tenant's key is published: {body}");
    let doc = tenants
        .respond("/.well-known/oauth-authorization-server/t/acme", &req)
        .await
        .expect("a tenant route");
    assert_eq!(doc.status, 200);
    assert_eq!(counting.opens.load(Ordering::SeqCst), 0, "no sealed key was opened");
    assert!(!m.is_loaded(&ring("acme")), "the ring was not loaded to serve it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_load_a_ring_once() {
    let storage = store_with(&["acme"]).await;
    let m = manager(&storage, sealer(), ManagerConfig::default());
    // Known first, so that only loading is measured.
    assert!(m.existing_keyring(&ring("globex")).await.expect("look-up").is_none());
    let loads = storage.loads();
    let requests: Vec<_> = (0..32)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.existing_keyring(&ring("acme")).await })
        })
        .collect();
    for r in requests {
        assert!(r.await.expect("task").expect("look-up").is_some());
    }
    assert_eq!(
        storage.loads() - loads,
        1,
        "32 concurrent first requests load the ring once"
    );
}

struct Headers(Vec<(&'static str, String)>);

impl keyrot_http::HeaderSource for Headers {
    fn for_each_value<'s>(&'s self, name: &str, f: &mut dyn FnMut(&'s [u8])) {
        for (n, v) in &self.0 {
            if *n == name {
                f(v.as_bytes());
            }
        }
    }
}

/// A well-formed token naming a kid no ring has (its signature is never checked).
fn unknown_kid_token(i: usize) -> String {
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let header = b64(serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": format!("unknown-{i}") }));
    let payload = b64(serde_json::json!({ "sub": "x", "exp": 4_000_000_000_i64 }));
    format!("{header}.{payload}.AAAA")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_across_many_rings_share_one_refresh_budget() {
    let names: Vec<String> = (0..20).map(|i| format!("tenant-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let storage = store_with(&refs).await;
    let budget = 5;
    let config = ManagerConfig {
        unknown_kid_refreshes_per_second: budget,
        ..ManagerConfig::default()
    };
    let m = manager(&storage, sealer(), config);
    let pattern = PathPattern::new("/t/{ring}/api").expect("pattern");
    let auth = TenantAuth::new(m.clone(), RingSelector::Path(pattern));
    for n in &names {
        m.keyring(&ring(n)).await.expect("loaded before");
    }
    let before = storage.calls();
    let started = tokio::time::Instant::now();
    for (i, n) in names.iter().enumerate() {
        let headers = Headers(vec![("authorization", format!("Bearer {}", unknown_kid_token(i)))]);
        let path = format!("/t/{n}/api");
        assert!(auth.authenticate(&WithPath::new(&headers, &path)).await.is_err());
    }
    let elapsed = started.elapsed();
    let refreshes = storage.calls() - before;
    println!("20 rings, random kids, in {elapsed:?}: {refreshes} refresh queries");
    let allowed = u64::from(budget) * (1 + elapsed.as_secs());
    assert!(
        refreshes <= allowed,
        "{refreshes} refreshes for unknown kids on 20 rings (budget {allowed})"
    );
}
