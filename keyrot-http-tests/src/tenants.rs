//! Many tenants behind one server: each ring's JWKS and discovery document by path, and
//! the middleware picking the ring from the token's `iss`, the path or the host.

use crate::{Start, TENANT_HOST_PATH, TENANT_ISS_PATH, World};
use keyrot_core::{KeyRing, RequestContext, RingManager, RingName};
use keyrot_http::{PathPattern, RingSelector, TenantAuth, TenantEndpoints};
use serde_json::json;
use std::sync::Arc;

/// The issuer URL of a tenant ring.
pub(crate) fn issuer(ring: &str) -> String {
    format!("https://issuer.example/t/{ring}")
}

/// The tenant routes and middlewares of the test app, over `manager`.
pub(crate) fn app(manager: &RingManager) -> (TenantEndpoints, TenantAuth, TenantAuth, TenantAuth) {
    // Each ring's issuer comes from the manager (`World` gives it `with_issuers`).
    let tenants = TenantEndpoints::new(manager.clone());
    let by_issuer = RingSelector::Issuer(Arc::new(|iss: &str| {
        RingName::new(iss.strip_prefix("https://issuer.example/t/")?).ok()
    }));
    let path = PathPattern::new(crate::TENANT_PATH_PATTERN).expect("the suite's pattern is valid");
    let by_host = RingSelector::Host(Arc::new(|host: &str| {
        RingName::new(host.strip_suffix(".tenants.example")?).ok()
    }));
    (
        tenants,
        TenantAuth::new(manager.clone(), by_issuer),
        TenantAuth::new(manager.clone(), RingSelector::Path(path)),
        TenantAuth::new(manager.clone(), by_host),
    )
}

async fn onboard(w: &World, ring: &str) -> KeyRing {
    let r = RingName::new(ring).expect("ring name");
    w.manager
        .onboard(&r, RequestContext::actor("tenant-test"))
        .await
        .expect("onboard the tenant")
}

fn token(w: &World, kr: &KeyRing, iss: &str) -> String {
    let exp = w.now().timestamp() + 300;
    kr.sign(&json!({ "sub": "alice", "iss": iss, "exp": exp }))
        .expect("sign")
}

/// Each tenant ring's JWKS (with `ETag`/`304`) and discovery document at its path; an
/// unknown ring is `404` and is not loaded.
pub async fn tenant_jwks_and_discovery_are_served_per_ring(start: Start) {
    let w = World::start(start).await;
    let a = onboard(&w, "tenant-a").await;
    let b = onboard(&w, "tenant-b").await;
    for (name, kr) in [("tenant-a", &a), ("tenant-b", &b)] {
        let jwks = w.get(&format!("/t/{name}/.well-known/jwks.json"), None).await;
        assert_eq!(jwks.status, 200, "{}", jwks.text());
        assert_eq!(jwks.header("content-type"), Some("application/jwk-set+json"));
        let body = jwks.json();
        let kids: Vec<&str> = body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(
            kids,
            [kr.snapshot().active_kid().expect("active")],
            "{name} serves its own key"
        );
        let etag = jwks.header("etag").expect("etag").to_owned();
        let again = w
            .send(
                "GET",
                &format!("/t/{name}/.well-known/jwks.json"),
                &[("if-none-match", etag)],
                None,
            )
            .await;
        assert_eq!(again.status, 304, "the tenant JWKS answers conditional requests");
        let doc = w
            .get(&format!("/.well-known/oauth-authorization-server/t/{name}"), None)
            .await;
        assert_eq!(doc.status, 200, "{}", doc.text());
        assert_eq!(doc.json()["issuer"], issuer(name));
        assert_eq!(
            doc.json()["jwks_uri"],
            format!("{}/.well-known/jwks.json", issuer(name))
        );
    }
    assert_ne!(
        a.snapshot().active_kid(),
        b.snapshot().active_kid(),
        "rings have their own keys"
    );
    let unknown = w.get("/t/nobody/.well-known/jwks.json", None).await;
    assert_eq!(unknown.status, 404, "a ring the store does not hold is not found");
    assert!(
        !w.manager.is_loaded(&RingName::new("nobody").expect("name")),
        "and is not loaded"
    );
    let bad = w.get("/t/bad%20name/.well-known/jwks.json", None).await;
    assert_eq!(bad.status, 404);
}

/// The tenant middleware verifies with the ring named by the token's `iss`, the path or
/// the host, and refuses a token another ring's keys do not verify.
pub async fn tenant_middleware_picks_the_ring_from_iss_path_or_host(start: Start) {
    let w = World::start(start).await;
    let a = onboard(&w, "tenant-a").await;
    onboard(&w, "tenant-b").await;
    let good = token(&w, &a, &issuer("tenant-a"));
    // A tenant-a key, but the token claims tenant-b: tenant-b's keys do not verify it.
    let claims_b = token(&w, &a, &issuer("tenant-b"));
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));

    let ok = w.get(TENANT_ISS_PATH, Some(&good)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["sub"], "alice");
    assert_eq!(w.get(TENANT_ISS_PATH, Some(&claims_b)).await.status, 401);
    assert_eq!(w.get(TENANT_ISS_PATH, None).await.status, 401, "a token is required");
    let unknown_issuer = token(&w, &a, "https://elsewhere.example");
    assert_eq!(w.get(TENANT_ISS_PATH, Some(&unknown_issuer)).await.status, 401);

    assert_eq!(
        w.get("/tenant/tenant-a/whoami", Some(&good)).await.status,
        200,
        "ring from the path"
    );
    assert_eq!(
        w.get("/tenant/tenant-b/whoami", Some(&good)).await.status,
        401,
        "another ring's path"
    );
    assert_eq!(
        w.get("/tenant/nobody/whoami", Some(&good)).await.status,
        401,
        "an unknown ring"
    );

    let host = |h: &str| ("host", h.to_owned());
    let on = |h: &str| vec![bearer(&good), host(h)];
    assert_eq!(
        w.send("GET", TENANT_HOST_PATH, &on("tenant-a.tenants.example"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        w.send("GET", TENANT_HOST_PATH, &on("tenant-a.tenants.example:8080"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        w.send("GET", TENANT_HOST_PATH, &on("tenant-b.tenants.example"), None)
            .await
            .status,
        401
    );
    assert_eq!(
        w.send("GET", TENANT_HOST_PATH, &on("localhost"), None).await.status,
        401
    );
}

/// Tenant offboarding over HTTP: once its ring is retired, a tenant's JWKS and discovery
/// document are `404`, its tokens are refused by every selector, and another tenant is
/// untouched.
pub async fn a_retired_tenant_is_not_found_and_its_tokens_are_refused(start: Start) {
    let w = World::start(start).await;
    let gone = onboard(&w, "tenant-gone").await;
    let stays = onboard(&w, "tenant-stays").await;
    let token_gone = token(&w, &gone, &issuer("tenant-gone"));
    let token_stays = token(&w, &stays, &issuer("tenant-stays"));
    assert_eq!(w.get(TENANT_ISS_PATH, Some(&token_gone)).await.status, 200);
    assert_eq!(w.get("/t/tenant-gone/.well-known/jwks.json", None).await.status, 200);

    let ring = RingName::new("tenant-gone").expect("name");
    let report = w
        .manager
        .retire(&ring, RequestContext::actor("tenant-test"), "contract ended")
        .await
        .expect("retire");
    assert_eq!(report.outcome, keyrot_core::Outcome::Retired, "{report:?}");

    for path in [
        "/t/tenant-gone/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server/t/tenant-gone",
    ] {
        let r = w.get(path, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    assert_eq!(w.get(TENANT_ISS_PATH, Some(&token_gone)).await.status, 401, "by iss");
    assert_eq!(
        w.get("/tenant/tenant-gone/whoami", Some(&token_gone)).await.status,
        401,
        "by path"
    );
    let host = vec![
        ("authorization", format!("Bearer {token_gone}")),
        ("host", "tenant-gone.tenants.example".to_owned()),
    ];
    assert_eq!(
        w.send("GET", TENANT_HOST_PATH, &host, None).await.status,
        401,
        "by host"
    );
    assert_eq!(
        w.get(TENANT_ISS_PATH, Some(&token_stays)).await.status,
        200,
        "the other tenant is untouched"
    );
    assert_eq!(w.get("/t/tenant-stays/.well-known/jwks.json", None).await.status, 200);
}

/// A route that names a tenant admits only that tenant's tokens, whichever selector picks
/// the ring: tenant A's valid token is `401` on tenant B's routes (by `iss` and by host,
/// where the selector would pick A); a token of A's key claiming another issuer is
/// refused on A's own route; and the handler sees the ring that verified the token.
pub async fn a_tenant_token_is_refused_on_another_tenants_routes(start: Start) {
    let w = World::start(start).await;
    let a = onboard(&w, "tenant-a").await;
    let b = onboard(&w, "tenant-b").await;
    let token_a = token(&w, &a, &issuer("tenant-a"));
    let token_b = token(&w, &b, &issuer("tenant-b"));
    let by_iss = |ring: &str| format!("/tenant-iss/{ring}/whoami");

    let ok = w.get(&by_iss("tenant-a"), Some(&token_a)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json(),
        json!({ "sub": "alice", "ring": "tenant-a" }),
        "the handler sees the ring"
    );
    let refused = w.get(&by_iss("tenant-b"), Some(&token_a)).await;
    assert_eq!(refused.status, 401, "A's token on B's route: {}", refused.text());
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(w.get(&by_iss("tenant-b"), Some(&token_b)).await.status, 200);
    assert_eq!(
        w.get("/tenant-iss/tenant%2Db/whoami", Some(&token_b)).await.status,
        401,
        "another spelling of the ring is not it"
    );

    let world = &w;
    let on_host = |t: &str, path: &str| {
        let headers = vec![
            ("authorization", format!("Bearer {t}")),
            ("host", "tenant-a.tenants.example".to_owned()),
        ];
        let path = path.to_owned();
        async move { world.send("GET", &path, &headers, None).await }
    };
    let ok = on_host(&token_a, "/tenant-host/tenant-a/whoami").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["ring"], "tenant-a");
    assert_eq!(
        on_host(&token_a, "/tenant-host/tenant-b/whoami").await.status,
        401,
        "the host picks A, the path names B"
    );

    // The ring's own key, but not the ring's own issuer: refused wherever the ring is
    // picked from the path.
    let foreign = token(&w, &a, "https://elsewhere.example");
    assert_eq!(w.get("/tenant/tenant-a/whoami", Some(&foreign)).await.status, 401);
    assert_eq!(w.get("/tenant/tenant-a/whoami", Some(&token_a)).await.status, 200);
}
