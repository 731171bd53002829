//! What encrypted and signed cookies cost, paired (the jobs interleaved in shuffled
//! rounds, each job's calls from a shifted stack; medians over rounds and median per-round
//! ratios, `paired/mod.rs`), on thread CPU time (`KEYROT_BENCH_CLOCK=wall` for wall time):
//!
//! * **primitives**, one 1 KiB payload: `AeadRing::encrypt` / `decrypt` against raw
//!   `chacha20poly1305::XChaCha20Poly1305` (`Aead::encrypt` / `decrypt` with a fresh
//!   `getrandom` nonce per call, the cipher built once), and `MacRing::sign` / `verify`
//!   against raw `hmac::Hmac<Sha256>` (`new_from_slice` + `update` + `finalize` /
//!   `verify_slice`). keyrot's side also reads the ring's snapshot, picks the key, builds its
//!   versioned header and records its metric. Same key length and payload; the raw side's
//!   key is a random one (the time does not depend on the key).
//! * **codec**: `SealedCookies::open` / `SignedCookies::open` of a session cookie against the
//!   ring call underneath (`AeadRing::decrypt`, `MacRing::verify`): base64url, the name
//!   binding and the staleness check.
//! * **axum in process** (one request through the router with `tower::oneshot`, no
//!   sockets): a handler reading its session cookie in plain text (the same strict `Cookie`
//!   parsing), and the same handler reading it sealed, or signed, with
//!   `keyrot_axum::read_cookie`. The cookie layer's cost per request is the per-round
//!   difference.
//!
//! Run with `cargo bench -p keyrot-benches --bench cookies`; `KEYROT_BENCH_TOTAL_MS=500`
//! for a short run (the measured time of each group; default 2500).

#[allow(dead_code, reason = "the harness's fixed-round helpers are for other bench targets")]
mod paired;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Mac as _;
use keyrot_axum::{CookieCodec, Headers, SealedCookies, SignedCookies, read_cookie};
use keyrot_core::{
    AeadRing, Algorithm, KeyRing, MacRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, Outcome, Policy,
    RequestContext, RingName, Rotator,
};
use keyrot_http::{BearerToken, TokenSource};
use paired::{Budget, Clock, Group, Job};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const SESSION: &str = "session";
const USER: &str = "user-7f3a9c2e";

/// A bootstrapped symmetric ring on memory storage.
fn ring(rt: &tokio::runtime::Runtime, name: &str, alg: Algorithm) -> KeyRing {
    let policy = Policy::builder().with_algorithm(alg).build().expect("policy");
    let storage = Arc::new(MemoryStorage::new());
    let sealer =
        Arc::new(MasterKeySealer::new(MasterKey::generate("bench-mk").expect("master key"), []).expect("sealer"));
    let name = RingName::new(name).expect("ring name");
    rt.block_on(async {
        let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
            .with_policy(policy.clone())
            .build()
            .await
            .expect("keyring");
        let rotator = Rotator::builder(name, storage, Arc::new(MemoryLock::default()), sealer)
            .with_policy(policy)
            .with_keyring(keyring.clone())
            .build();
        let r = rotator.init(RequestContext::actor("bench")).await.expect("init");
        assert_eq!(r.outcome, Outcome::Bootstrapped, "{r:?}");
        keyring
    })
}

fn budget() -> Budget {
    let mut b = Budget::DEFAULT;
    if let Some(ms) = std::env::var("KEYROT_BENCH_TOTAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        b.total = Duration::from_millis(ms);
        b.warm_up = Duration::from_millis((ms / 10).max(20));
    }
    b
}

fn report(title: &str, jobs: &[Job<'_>], g: &Group, pairs: &[(usize, usize)]) {
    println!(
        "{title} ({} shuffled rounds of {} calls each; medians):",
        g.rounds, g.iters
    );
    for (j, (name, _)) in jobs.iter().enumerate() {
        println!("  {name:<34} {:>9.3} µs", g.median_of(j));
    }
    for &(a, b) in pairs {
        let mut d: Vec<f64> = g.per_round.iter().map(|r| r[a] - r[b]).collect();
        println!(
            "  {:<34} {:>9.3}×  ({:+.3} µs)",
            format!("{} / {}", jobs[a].0, jobs[b].0),
            g.ratio(a, b),
            paired::median(&mut d),
        );
    }
}

#[derive(Clone)]
struct Codecs {
    sealed: SealedCookies,
    signed: SignedCookies,
}

async fn plain_me(headers: HeaderMap) -> Result<String, StatusCode> {
    match TokenSource::cookie(SESSION).read(&Headers(&headers)) {
        BearerToken::Present(v) => Ok(v.to_owned()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

async fn sealed_me(State(c): State<Codecs>, headers: HeaderMap) -> Result<String, StatusCode> {
    match read_cookie(&c.sealed, &headers, SESSION) {
        Ok(Some(o)) => String::from_utf8(o.value).map_err(|_| StatusCode::BAD_REQUEST),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

async fn signed_me(State(c): State<Codecs>, headers: HeaderMap) -> Result<String, StatusCode> {
    match read_cookie(&c.signed, &headers, SESSION) {
        Ok(Some(o)) => Ok(o.value),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

fn request(path: &str, cookie: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get(path)
        .header("cookie", cookie)
        .body(axum::body::Body::empty())
        .expect("request")
}

fn main() {
    let clock = match std::env::var("KEYROT_BENCH_CLOCK").as_deref() {
        Ok("wall") => Clock::Wall,
        _ => Clock::ThreadCpu,
    };
    let budget = budget();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let aead = AeadRing::new(ring(&rt, "bench-aead", Algorithm::XChaCha20Poly1305)).expect("aead ring");
    let mac = MacRing::new(ring(&rt, "bench-mac", Algorithm::HmacSha256)).expect("mac ring");

    // Primitives, 1 KiB.
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 31 + 7) as u8).collect();
    let aad = b"keyrot-cookie/v1\0session";
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("random key");
    let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("cipher");
    let raw_encrypt = || {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("nonce");
        let nonce = XNonce::from(nonce);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: black_box(&payload),
                    aad,
                },
            )
            .expect("encrypt");
        (nonce, ct)
    };
    let (raw_nonce, raw_ct) = raw_encrypt();
    let keyrot_ct = aead.encrypt(&payload, aad).expect("encrypt");
    assert_eq!(aead.decrypt(&keyrot_ct, aad).expect("decrypt"), payload);
    let raw_tag = HmacSha256::new_from_slice(&key)
        .expect("hmac")
        .chain_update(&payload)
        .finalize()
        .into_bytes();
    let keyrot_tag = mac.sign(&payload).expect("sign");
    let jobs: Vec<Job<'_>> = vec![
        (
            "raw XChaCha20Poly1305 encrypt",
            Box::new(|| {
                black_box(raw_encrypt());
            }),
        ),
        (
            "AeadRing::encrypt",
            Box::new(|| {
                black_box(aead.encrypt(black_box(&payload), aad).expect("encrypt"));
            }),
        ),
        (
            "raw XChaCha20Poly1305 decrypt",
            Box::new(|| {
                black_box(
                    cipher
                        .decrypt(
                            &raw_nonce,
                            Payload {
                                msg: black_box(&raw_ct),
                                aad,
                            },
                        )
                        .expect("decrypt"),
                );
            }),
        ),
        (
            "AeadRing::decrypt",
            Box::new(|| {
                black_box(aead.decrypt(black_box(&keyrot_ct), aad).expect("decrypt"));
            }),
        ),
        (
            "raw HMAC-SHA-256",
            Box::new(|| {
                let mut m = HmacSha256::new_from_slice(black_box(&key)).expect("hmac");
                m.update(black_box(&payload));
                black_box(m.finalize().into_bytes());
            }),
        ),
        (
            "MacRing::sign",
            Box::new(|| {
                black_box(mac.sign(black_box(&payload)).expect("sign"));
            }),
        ),
        (
            "raw HMAC-SHA-256 verify",
            Box::new(|| {
                let mut m = HmacSha256::new_from_slice(black_box(&key)).expect("hmac");
                m.update(black_box(&payload));
                m.verify_slice(black_box(&raw_tag)).expect("verify");
            }),
        ),
        (
            "MacRing::verify",
            Box::new(|| {
                mac.verify(black_box(&payload), black_box(&keyrot_tag)).expect("verify");
            }),
        ),
    ];
    let g = paired::run_group(clock, budget, &jobs);
    report(
        "primitives, 1 KiB payload",
        &jobs,
        &g,
        &[(1, 0), (3, 2), (5, 4), (7, 6)],
    );

    // The codec over the ring call underneath (the codec's purpose-bound ring), one
    // session cookie.
    let sealed = SealedCookies::new(aead.clone());
    let signed = SignedCookies::new(mac.clone());
    let sealed_value = sealed.seal(SESSION, USER.as_bytes()).expect("seal");
    let signed_value = signed.seal(SESSION, USER).expect("seal");
    let sealed_bytes = keyrot_core::testing::b64::decode(&sealed_value).expect("base64url");
    let sealed_aad = b"session";
    // Signed: `USER.ISSUED.KID.TAG`, the MAC over `session=USER.ISSUED`; sealed: the
    // issue time (8 bytes) before the value.
    let signed_part = signed_value.rsplitn(3, '.').nth(2).expect("USER.ISSUED before KID.TAG");
    let signed_msg = format!("session={signed_part}");
    let signed_tag: keyrot_core::MacTag = signed_value[signed_part.len() + 1..].parse().expect("tag");
    assert_eq!(
        sealed
            .ring()
            .decrypt(&sealed_bytes, sealed_aad)
            .expect("the codec's format")
            .get(8..),
        Some(USER.as_bytes())
    );
    signed
        .ring()
        .verify(signed_msg.as_bytes(), &signed_tag)
        .expect("the codec's format");
    let jobs: Vec<Job<'_>> = vec![
        (
            "AeadRing::decrypt",
            Box::new(|| {
                black_box(
                    sealed
                        .ring()
                        .decrypt(black_box(&sealed_bytes), sealed_aad)
                        .expect("decrypt"),
                );
            }),
        ),
        (
            "SealedCookies::open",
            Box::new(|| {
                black_box(sealed.open(SESSION, black_box(&sealed_value)).expect("open"));
            }),
        ),
        (
            "MacRing::verify",
            Box::new(|| {
                signed
                    .ring()
                    .verify(black_box(signed_msg.as_bytes()), black_box(&signed_tag))
                    .expect("verify");
            }),
        ),
        (
            "SignedCookies::open",
            Box::new(|| {
                black_box(signed.open(SESSION, black_box(&signed_value)).expect("open"));
            }),
        ),
    ];
    let g = paired::run_group(clock, budget, &jobs);
    report("codec, one session cookie", &jobs, &g, &[(1, 0), (3, 2)]);

    // axum in process.
    let codecs = Codecs {
        sealed: sealed.clone(),
        signed: signed.clone(),
    };
    let router = Router::new()
        .route("/plain/me", get(plain_me))
        .route("/sealed/me", get(sealed_me))
        .route("/signed/me", get(signed_me))
        .with_state(codecs);
    let plain_cookie = format!("{SESSION}={USER}");
    let sealed_cookie = format!("{SESSION}={sealed_value}");
    let signed_cookie = format!("{SESSION}={signed_value}");
    let call = |path: &str, cookie: &str| {
        let resp = rt
            .block_on(router.clone().oneshot(request(path, cookie)))
            .expect("response");
        assert_eq!(resp.status(), 200);
        black_box(resp);
    };
    let jobs: Vec<Job<'_>> = vec![
        ("plain cookie", Box::new(|| call("/plain/me", &plain_cookie))),
        ("sealed cookie", Box::new(|| call("/sealed/me", &sealed_cookie))),
        ("signed cookie", Box::new(|| call("/signed/me", &signed_cookie))),
    ];
    let g = paired::run_group(clock, budget, &jobs);
    report(
        "axum in process, GET /me reading the session cookie",
        &jobs,
        &g,
        &[(1, 0), (2, 0)],
    );
}
