//! What verifying against a remote issuer's JWKS costs, beside verifying against the
//! local ring: the same Ed25519 key and the same token, `JwksVerifier::verify` (the key
//! set fetched over real HTTP from the ring's own JWKS) and `KeyRing::verify`,
//! interleaved in shuffled rounds in one process (this shared VM's speed drifts, so only
//! interleaved figures compare). Reported: each one's median over rounds, and the median
//! per-round ratio. A third job verifies a token whose header another issuer wrote
//! (members in another order, so the header is decoded rather than recognised), signed by
//! a second Ed25519 key of the same JWKS.
//!
//! Run with `cargo bench -p keyrot-benches --bench remote`.

mod paired;

use keyrot_core::testing::{b64, token::sign};
use keyrot_core::{Algorithm, PrivateKey, RsaBits};
use keyrot_core::{KeyRing, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator};
use keyrot_jwks::JwksVerifier;
use paired::Job;
use std::hint::black_box;
use std::sync::Arc;

const ROUNDS: usize = 300;
const ITERS: usize = 100;

/// Serves `body` as the JWKS at `/jwks` on 127.0.0.1; returns the URL.
async fn serve(body: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("cache-control", "max-age=3600")], body) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

fn main() {
    // A runtime that outlives the measurement: it runs the JWKS server and the
    // verifier's background refresh (idle here: max-age is an hour).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let other = PrivateKey::generate(Algorithm::EdDsa, RsaBits::B2048).expect("key");
    let (keyring, remote) = rt.block_on(async {
        let storage = Arc::new(MemoryStorage::new());
        let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
        let ring = RingName::new("bench").expect("ring");
        let keyring = KeyRing::builder(ring.clone(), storage.clone(), sealer.clone())
            .build()
            .await
            .expect("keyring");
        Rotator::builder(ring, storage, Arc::new(MemoryLock::default()), sealer)
            .with_keyring(keyring.clone())
            .build()
            .init(RequestContext::actor("bench"))
            .await
            .expect("init");
        let mut jwks: serde_json::Value = serde_json::from_slice(keyring.snapshot().jwks().body()).expect("jwks");
        jwks["keys"]
            .as_array_mut()
            .expect("keys")
            .push(other.public_key().to_jwk("other"));
        let url = serve(serde_json::to_vec(&jwks).expect("json")).await;
        let remote = JwksVerifier::builder()
            .jwks_url(url)
            .build()
            .await
            .expect("remote verifier");
        (keyring, remote)
    });
    let exp = chrono::Utc::now().timestamp() + 3600;
    let token = keyring
        .sign(&serde_json::json!({"sub": "bench", "exp": exp}))
        .expect("sign");
    let foreign_header = b64::encode(br#"{"typ":"JWT","kid":"other","alg":"EdDSA"}"#);
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"sub": "bench", "exp": exp});
    let foreign = sign(&other.signing_key(), &foreign_header, &claims, now, 7200).expect("sign");
    remote.verify(&foreign).expect("foreign header");
    assert_eq!(
        remote.verify(&token).expect("remote").kid,
        keyring.verify(&token).expect("local").kid
    );

    let jobs: Vec<Job<'_>> = vec![
        (
            "KeyRing::verify",
            Box::new(|| {
                black_box(keyring.verify(black_box(&token))).expect("verify");
            }),
        ),
        (
            "JwksVerifier::verify",
            Box::new(|| {
                black_box(remote.verify(black_box(&token))).expect("verify");
            }),
        ),
        (
            "JwksVerifier (foreign)",
            Box::new(|| {
                black_box(remote.verify(black_box(&foreign))).expect("verify");
            }),
        ),
    ];
    let per_round = paired::rounds(&jobs, ROUNDS, ITERS);
    println!("remote verification, median of {ROUNDS} shuffled rounds of {ITERS} calls (EdDSA):");
    paired::print_medians(&jobs, &per_round);
    println!(
        "  JwksVerifier::verify / KeyRing::verify, median per-round ratio: {:.3}",
        paired::median_ratio(&per_round, 1, 0)
    );
    println!(
        "  JwksVerifier::verify (foreign header) / KeyRing::verify, median per-round ratio: {:.3}",
        paired::median_ratio(&per_round, 2, 0)
    );
    drop(jobs);
    rt.block_on(remote.shutdown());
}
