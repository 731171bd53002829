//! Encrypted and signed session cookies over real HTTP, the same cases for every adapter
//! ([`cookie_suite!`](crate::cookie_suite)): a login route sets them, `/me` reads them,
//! through a rotation, the end of the Retiring window, a revocation, tampering, a value
//! moved to another cookie's name and a cookie sent twice. A refused cookie is answered
//! `401 {"error":"invalid_cookie"}`; no cookie at all is the handler's `401` with an empty
//! body.

#![allow(clippy::unwrap_used, missing_docs)]

use crate::RunningServer;
use chrono::{TimeDelta, TimeZone, Utc};
use keyrot_core::{
    AeadRing, Algorithm, Clock, KeyRing, KeyState, MacRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock,
    MemoryStorage, Outcome, Policy, RequestContext, RingName, Rotator,
};
use keyrot_http::{CookieOptions, SealedCookies, SignedCookies};
use std::future::Future;
use std::sync::Arc;

/// The session cookie's name, and another cookie the same codec sets.
/// The session cookie's name.
pub const SESSION: &str = "session";
/// Another cookie the same codec sets.
pub const THEME: &str = "theme";
/// What the session cookie holds.
pub const USER: &str = "user-7";
/// The cookies' lifetime (`CookieOptions::with_max_age`): longer than a rotation and the
/// Retiring window after it (14 days), so only the case about it reaches it.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// One test's world: an AEAD ring and a MAC ring on MemoryStorage (as the crate's other
/// HTTP tests), one manual clock, their rotators, and the running server.
struct World {
    clock: ManualClock,
    aead: Ring,
    mac: Ring,
    client: reqwest::Client,
    base: String,
    _server: RunningServer,
}

struct Ring {
    keyring: KeyRing,
    rotator: Rotator,
}

/// The two codecs an adapter's test server serves: `/sealed/login` and `/sealed/me`
/// with `sealed`, `/signed/login` and `/signed/me` with `signed`.
#[derive(Clone)]
pub struct Codecs {
    /// Encrypted cookies on the world's AEAD ring.
    pub sealed: SealedCookies,
    /// Signed cookies on the world's MAC ring.
    pub signed: SignedCookies,
}

/// Which codec a case exercises.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// [`SealedCookies`].
    Sealed,
    /// [`SignedCookies`].
    Signed,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Sealed => "/sealed",
            Kind::Signed => "/signed",
        }
    }
}

async fn ring(clock: &ManualClock, storage: &Arc<MemoryStorage>, name: &str, alg: Algorithm) -> Ring {
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk1").expect("mk"), []).expect("sealer"));
    let ring = RingName::new(name).expect("ring");
    let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
    let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_policy(policy.clone())
        .build()
        .await
        .expect("keyring");
    let rotator = Rotator::builder(
        ring,
        storage.clone(),
        Arc::new(MemoryLock::new(Arc::new(clock.clone()))),
        sealer,
    )
    .with_clock(Arc::new(clock.clone()))
    .with_policy(policy)
    .with_instance("a")
    .with_keyring(keyring.clone())
    .build();
    let r = rotator.init(ctx()).await.expect("init");
    assert_eq!(r.outcome, Outcome::Bootstrapped);
    Ring { keyring, rotator }
}

fn ctx() -> RequestContext {
    RequestContext::actor("test")
}

impl World {
    async fn new<F, Fut>(start: F) -> Self
    where
        F: FnOnce(Codecs) -> Fut,
        Fut: Future<Output = RunningServer>,
    {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time"));
        let storage = Arc::new(MemoryStorage::new());
        let aead = ring(&clock, &storage, "cookies-aead", Algorithm::XChaCha20Poly1305).await;
        let mac = ring(&clock, &storage, "cookies-mac", Algorithm::HmacSha256).await;
        let options = CookieOptions::default().with_max_age(MAX_AGE);
        let codecs = Codecs {
            sealed: SealedCookies::new(AeadRing::new(aead.keyring.clone()).expect("aead ring"))
                .with_options(options.clone()),
            signed: SignedCookies::new(MacRing::new(mac.keyring.clone()).expect("mac ring")).with_options(options),
        };
        let server = start(codecs).await;
        Self {
            clock,
            aead,
            mac,
            client: reqwest::Client::new(),
            base: format!("http://{}", server.addr()),
            _server: server,
        }
    }

    fn ring(&self, kind: Kind) -> &Ring {
        match kind {
            Kind::Sealed => &self.aead,
            Kind::Signed => &self.mac,
        }
    }

    fn active(&self, kind: Kind) -> String {
        self.ring(kind)
            .keyring
            .snapshot()
            .active_kid()
            .expect("active")
            .to_owned()
    }

    /// Both rings' rotators, once (the scheduler's tick).
    async fn tick(&self, expect: Option<Outcome>) {
        for r in [&self.aead, &self.mac] {
            let report = r.rotator.tick().await.expect("tick");
            if let Some(expect) = expect {
                assert_eq!(report.outcome, expect, "{report:?}");
            }
        }
    }

    /// Day 6: the next keys are scheduled (Pending); day 7: they activate, the old ones retire.
    async fn rotate(&self) {
        self.clock.advance(TimeDelta::days(6) + TimeDelta::seconds(1));
        self.tick(Some(Outcome::Scheduled)).await;
        self.clock.advance(TimeDelta::days(1));
        self.tick(Some(Outcome::Rotated)).await;
    }

    /// `POST {prefix}/login`: the `Set-Cookie` headers (`name=value` parts by name).
    async fn login(&self, kind: Kind) -> Vec<(String, String)> {
        let resp = self
            .client
            .post(format!("{}{}/login", self.base, kind.prefix()))
            .send()
            .await
            .expect("login");
        assert_eq!(resp.status().as_u16(), 200);
        let set: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(set.len(), 2, "{set:?}");
        for s in &set {
            for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
                assert!(s.split("; ").any(|a| a == attr), "{attr} in {s}");
            }
            if let Kind::Sealed = kind {
                assert!(!s.contains(USER), "the plaintext never appears in a sealed cookie: {s}");
            }
        }
        set.iter().map(|s| pair(s)).collect()
    }

    /// `GET {prefix}/me` with `cookie` headers: status, body, `Set-Cookie` pair if any.
    async fn me(&self, kind: Kind, cookies: &[&str]) -> (u16, String, Option<(String, String)>) {
        let mut req = self.client.get(format!("{}{}/me", self.base, kind.prefix()));
        for c in cookies {
            req = req.header("cookie", *c);
        }
        let resp = req.send().await.expect("me");
        let status = resp.status().as_u16();
        let set = resp
            .headers()
            .get("set-cookie")
            .map(|v| pair(v.to_str().expect("ascii")));
        (status, resp.text().await.expect("body"), set)
    }
}

/// `name=value; attributes` → `(name, value)`.
fn pair(set_cookie: &str) -> (String, String) {
    let first = set_cookie.split(';').next().expect("pair");
    let (n, v) = first.split_once('=').expect("name=value");
    (n.to_owned(), v.to_owned())
}

fn cookie(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

fn value_of<'a>(set: &'a [(String, String)], name: &str) -> &'a str {
    &set.iter().find(|(n, _)| n == name).expect("cookie set").1
}

const REFUSED: &str = r#"{"error":"invalid_cookie"}"#;

#[doc(hidden)]
pub async fn survives_rotation_is_reissued_and_refused_after_the_window<F, Fut>(start: F, kind: Kind)
where
    F: FnOnce(Codecs) -> Fut,
    Fut: Future<Output = RunningServer>,
{
    let w = World::new(start).await;
    let first = w.active(kind);
    let set = w.login(kind).await;
    let old = cookie(SESSION, value_of(&set, SESSION));
    assert_eq!(w.me(kind, &[&old]).await, (200, USER.to_owned(), None), "fresh cookie");
    if let Kind::Signed = kind {
        let issued = w.clock.now().timestamp();
        assert!(old.starts_with(&format!("{SESSION}={USER}.{issued}.{first}.")), "{old}");
    }

    w.rotate().await;
    assert_ne!(w.active(kind), first);
    // The Retiring key still opens it, and the answer re-issues it under the Active key.
    let (status, body, again) = w.me(kind, &[&old]).await;
    assert_eq!((status, body.as_str()), (200, USER), "inside the window");
    let (name, value) = again.expect("re-issued under the Active key");
    assert_eq!(name, SESSION);
    let new = cookie(SESSION, &value);
    assert_ne!(new, old);
    if let Kind::Signed = kind {
        // Under the Active key, with the first issue time, 7 days ago.
        let issued = (w.clock.now() - TimeDelta::days(7) - TimeDelta::seconds(1)).timestamp();
        assert!(
            new.starts_with(&format!("{SESSION}={USER}.{issued}.{}.", w.active(kind))),
            "{new}"
        );
    }
    assert_eq!(
        w.me(kind, &[&new]).await,
        (200, USER.to_owned(), None),
        "current: not re-issued"
    );

    // The Retiring window (retire_grace, 7 days) ends: the old cookie is refused.
    w.clock.advance(TimeDelta::days(7) + TimeDelta::seconds(1));
    assert_eq!(
        w.me(kind, &[&old]).await,
        (401, REFUSED.to_owned(), None),
        "past the window"
    );
    w.tick(None).await;
    let state = w
        .ring(kind)
        .keyring
        .snapshot()
        .keys()
        .iter()
        .find(|k| k.kid == first)
        .map(|k| k.state);
    assert!(matches!(state, None | Some(KeyState::Expired)), "{state:?}");
    assert_eq!(
        w.me(kind, &[&old]).await,
        (401, REFUSED.to_owned(), None),
        "expired key"
    );
    assert_eq!(w.me(kind, &[&new]).await, (200, USER.to_owned(), None));
}

#[doc(hidden)]
pub async fn refused_after_its_max_age_even_reissued<F, Fut>(start: F, kind: Kind)
where
    F: FnOnce(Codecs) -> Fut,
    Fut: Future<Output = RunningServer>,
{
    let w = World::new(start).await;
    let max_age = TimeDelta::from_std(MAX_AGE).expect("max age");
    let set = w.login(kind).await;
    let old = cookie(SESSION, value_of(&set, SESSION));
    // A rotation: the cookie is re-issued under the new key, keeping its first issue time.
    w.rotate().await;
    let (status, _, again) = w.me(kind, &[&old]).await;
    assert_eq!(status, 200);
    let new = cookie(SESSION, &again.expect("re-issued").1);
    // No tick from here on: the new key stays Active, so only the cookie's age decides.
    w.clock.advance(max_age - TimeDelta::days(7) - TimeDelta::seconds(2));
    assert_eq!(
        w.me(kind, &[&new]).await,
        (200, USER.to_owned(), None),
        "just inside max_age"
    );
    w.clock.advance(TimeDelta::seconds(1));
    assert_eq!(
        w.me(kind, &[&new]).await,
        (401, REFUSED.to_owned(), None),
        "max_age after the first issue, not after the re-issue"
    );
    let fresh = cookie(SESSION, value_of(&w.login(kind).await, SESSION));
    assert_eq!(w.me(kind, &[&fresh]).await, (200, USER.to_owned(), None), "a new login");
}

#[doc(hidden)]
pub async fn a_revoked_keys_cookie_is_refused<F, Fut>(start: F, kind: Kind)
where
    F: FnOnce(Codecs) -> Fut,
    Fut: Future<Output = RunningServer>,
{
    let w = World::new(start).await;
    let first = w.active(kind);
    let old = cookie(SESSION, value_of(&w.login(kind).await, SESSION));
    w.rotate().await;
    assert_eq!(w.me(kind, &[&old]).await.0, 200);
    w.ring(kind)
        .rotator
        .revoke(ctx(), &first, "leaked")
        .await
        .expect("revoke");
    assert_eq!(w.me(kind, &[&old]).await, (401, REFUSED.to_owned(), None), "revoked");
}

#[doc(hidden)]
pub async fn tampered_moved_duplicated_and_missing_cookies_are_refused<F, Fut>(start: F, kind: Kind)
where
    F: FnOnce(Codecs) -> Fut,
    Fut: Future<Output = RunningServer>,
{
    let w = World::new(start).await;
    let set = w.login(kind).await;
    let value = value_of(&set, SESSION).to_owned();
    let theme = value_of(&set, THEME).to_owned();
    assert_eq!(w.me(kind, &[&cookie(SESSION, &value)]).await.0, 200);
    // Every character changed, one at a time at a few places, is refused.
    for i in [0, value.len() / 3, value.len() / 2, value.len() - 1] {
        let mut b = value.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).expect("ascii");
        assert_eq!(w.me(kind, &[&cookie(SESSION, &t)]).await.0, 401, "byte {i} of {kind:?}");
    }
    if let Kind::Signed = kind {
        // The readable value changed, its tag kept.
        let forged = value.replacen(USER, "user-8", 1);
        assert_eq!(
            w.me(kind, &[&cookie(SESSION, &forged)]).await,
            (401, REFUSED.to_owned(), None)
        );
    }
    // A valid value of another cookie, copied under the session's name.
    assert_eq!(
        w.me(kind, &[&cookie(SESSION, &theme)]).await,
        (401, REFUSED.to_owned(), None),
        "another cookie's value"
    );
    // Sent twice (even the same value), or not at all.
    let twice = format!("{0}; {0}", cookie(SESSION, &value));
    assert_eq!(w.me(kind, &[&twice]).await, (401, REFUSED.to_owned(), None), "twice");
    assert_eq!(
        w.me(kind, &[&cookie(SESSION, &value), &cookie(SESSION, &value)])
            .await
            .0,
        401
    );
    assert_eq!(w.me(kind, &[]).await, (401, String::new(), None), "no cookie");
    assert_eq!(w.me(kind, &[&cookie(SESSION, "garbage")]).await.0, 401);
}

/// One `#[tokio::test]` per cookie case and codec, each starting the adapter's server with
/// `$start` (an `async fn(Codecs) -> RunningServer` serving `/sealed/login`, `/sealed/me`,
/// `/signed/login` and `/signed/me`).
#[macro_export]
macro_rules! cookie_suite {
    ($start:path) => {
        $crate::cookie_suite!(@case $start, sealed_cookie_survives_rotation_is_reissued_and_refused_after_the_window,
            survives_rotation_is_reissued_and_refused_after_the_window, Sealed);
        $crate::cookie_suite!(@case $start, signed_cookie_survives_rotation_is_reissued_and_refused_after_the_window,
            survives_rotation_is_reissued_and_refused_after_the_window, Signed);
        $crate::cookie_suite!(@case $start, sealed_cookie_is_refused_after_its_max_age_even_reissued,
            refused_after_its_max_age_even_reissued, Sealed);
        $crate::cookie_suite!(@case $start, signed_cookie_is_refused_after_its_max_age_even_reissued,
            refused_after_its_max_age_even_reissued, Signed);
        $crate::cookie_suite!(@case $start, sealed_cookie_of_a_revoked_key_is_refused,
            a_revoked_keys_cookie_is_refused, Sealed);
        $crate::cookie_suite!(@case $start, signed_cookie_of_a_revoked_key_is_refused,
            a_revoked_keys_cookie_is_refused, Signed);
        $crate::cookie_suite!(@case $start, sealed_cookies_tampered_moved_duplicated_or_missing_are_refused,
            tampered_moved_duplicated_and_missing_cookies_are_refused, Sealed);
        $crate::cookie_suite!(@case $start, signed_cookies_tampered_moved_duplicated_or_missing_are_refused,
            tampered_moved_duplicated_and_missing_cookies_are_refused, Signed);
    };
    (@case $start:path, $name:ident, $case:ident, $kind:ident) => {
        #[tokio::test]
        async fn $name() {
            $crate::cookies::$case($start, $crate::cookies::Kind::$kind).await;
        }
    };
}
