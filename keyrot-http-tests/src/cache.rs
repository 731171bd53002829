//! The middleware with a verified-token cache (issue 12), over real HTTP: a repeated token
//! is answered from the cache, and a revocation or the token's expiry refuses it at once.

use crate::{PROTECTED_PATH, Start, World};
use chrono::TimeDelta;
use keyrot_core::{TokenCache, TokenCacheConfig};
use keyrot_http::BearerAuth;
use serde_json::json;

/// Hits for a repeated token; a forced rotation with `revoke_old` refuses the cached
/// token on the next request (no refresh, no wait); a token past its `exp` is refused on
/// the first request after it, though it was cached.
pub async fn middleware_token_cache_hits_and_never_outlives_a_revocation(start: Start) {
    let cache = TokenCache::new(TokenCacheConfig::new());
    let in_auth = cache.clone();
    let w = World::start_with_auth(
        start,
        |_, b| b,
        async move |keyring, _| BearerAuth::new(keyring).with_token_cache(in_auth),
    )
    .await;
    let now = w.now().timestamp();
    let old = w.sign(&json!({"sub": "bob", "client_id": "app", "exp": now + 3000}));
    for _ in 0..3 {
        let a = w.get(PROTECTED_PATH, Some(&old)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json(), json!({"sub": "bob", "client_id": "app"}));
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.entries), (2, 1), "{stats:?}");

    let a = w
        .rotate(
            Some(&w.admin_token()),
            Some(json!({"force": true, "reason": "compromised", "revoke_old": true})),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        w.get(PROTECTED_PATH, Some(&old)).await.status,
        401,
        "revoked key: refused at once"
    );
    assert_eq!(cache.stats().invalidations, 1);

    let fresh = w.sign(&json!({"sub": "bob", "client_id": "app", "exp": now + 60}));
    assert_eq!(w.get(PROTECTED_PATH, Some(&fresh)).await.status, 200);
    assert_eq!(w.get(PROTECTED_PATH, Some(&fresh)).await.status, 200);
    let leeway = w.keyring.validation().leeway_secs();
    w.advance(TimeDelta::seconds(60 + leeway));
    assert_eq!(
        w.get(PROTECTED_PATH, Some(&fresh)).await.status,
        401,
        "past exp + leeway"
    );
    assert_eq!(cache.stats().entries, 0, "the expired entry is gone");
}
