//! keyrot-tonic over real sockets: a tonic client calls the example's `Me` and health
//! services on 127.0.0.1, and every refusal comes back with its gRPC status.

use grpc_resource_server::{GetRequest, GetResponse, HEALTH_SERVICE, ME_GET_PATH, MeServer, serve};
use keyrot_core::{
    KeyRing, ManualClock, MasterKey, MasterKeySealer, MemoryLock, MemoryStorage, RequestContext, RingName, Rotator,
    TokenError, TokenVerifier, Validation, Verified,
};
use keyrot_tonic::{BearerAuth, GrpcAuth, GrpcAuthLayer};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "https://grpc.example";

/// A server on an ephemeral port, stopped when dropped.
struct Running {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start<G: keyrot_http::Guard>(layer: GrpcAuthLayer<G>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(listener, layer, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Running { addr, _stop: stop }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// `Me.Get` with `authorization: Bearer TOKEN` (or the raw `authorization` value given).
async fn me(addr: SocketAddr, authorization: Option<&str>) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(GetRequest {});
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    let codec = tonic_prost::ProstCodec::<GetRequest, GetResponse>::default();
    let response = grpc
        .unary(request, PathAndQuery::from_static(ME_GET_PATH), codec)
        .await?;
    Ok(response.into_inner().sub)
}

async fn health(addr: SocketAddr, authorization: Option<&str>) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(channel(addr).await);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "keyrot.example.v1.Me".into(),
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("metadata value"));
    }
    Ok(client.check(request).await?.into_inner().status)
}

/// A ring with an Active key on a manual clock, verifying `iss`/`aud`.
async fn ring() -> (KeyRing, ManualClock) {
    let clock = ManualClock::new(chrono::Utc::now());
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let name = RingName::new("grpc").expect("ring");
    let keyring = KeyRing::builder(name.clone(), storage.clone(), sealer.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_validation(Validation::new().with_issuer(ISSUER).with_audience(AUDIENCE))
        .build()
        .await
        .expect("keyring");
    Rotator::builder(name, storage, Arc::new(MemoryLock::default()), sealer)
        .with_clock(Arc::new(clock.clone()))
        .with_keyring(keyring.clone())
        .build()
        .init(RequestContext::actor("test"))
        .await
        .expect("init");
    (keyring, clock)
}

fn token(keyring: &KeyRing, sub: &str, scope: &str) -> String {
    let now = keyring.clock().now().timestamp();
    keyring
        .sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "iat": now, "exp": now + 300}))
        .expect("sign")
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert_eq!(status.message(), message, "{what}");
}

const NO_TOKEN: &str = "a bearer token is required";
const INVALID: &str = "the access token is not valid";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_valid_tokens_reach_the_handler() {
    let (keyring, clock) = ring().await;
    let layer = GrpcAuthLayer::new(
        GrpcAuth::new(BearerAuth::new(keyring.clone()))
            .allow_anonymous_service(HEALTH_SERVICE)
            .require_scopes(ME_GET_PATH, ["profile"]),
    );
    let server = start(layer).await;
    let good = token(&keyring, "alice", "profile read");
    assert_eq!(
        me(server.addr, Some(&format!("Bearer {good}"))).await.expect("ok"),
        "alice"
    );

    assert_status(me(server.addr, None).await, Code::Unauthenticated, NO_TOKEN, "no token");
    assert_status(
        me(server.addr, Some("Bearer not-a-jwt")).await,
        Code::Unauthenticated,
        INVALID,
        "malformed",
    );
    assert_status(
        me(server.addr, Some(&format!("Basic {good}"))).await,
        Code::Unauthenticated,
        NO_TOKEN,
        "another scheme",
    );
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_status(
        me(server.addr, Some(&format!("Bearer {forged}"))).await,
        Code::Unauthenticated,
        INVALID,
        "bad signature",
    );
    let now = keyring.clock().now().timestamp();
    let elsewhere = keyring
        .sign(&json!({"iss": ISSUER, "aud": "https://other.example", "sub": "alice", "scope": "profile", "exp": now + 60}))
        .expect("sign");
    assert_status(
        me(server.addr, Some(&format!("Bearer {elsewhere}"))).await,
        Code::Unauthenticated,
        INVALID,
        "another audience",
    );
    let no_scope = token(&keyring, "bob", "read");
    assert_status(
        me(server.addr, Some(&format!("Bearer {no_scope}"))).await,
        Code::PermissionDenied,
        "the access token does not grant access to this resource",
        "without the method's scope",
    );

    // Health answers without a token; a token sent to it is still verified.
    assert_eq!(
        health(server.addr, None).await.expect("health"),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(server.addr, Some(&format!("Bearer {no_scope}")))
            .await
            .expect("health"),
        ServingStatus::Serving as i32,
        "scopes of other methods do not apply"
    );
    assert_status(
        health(server.addr, Some("Bearer not-a-jwt")).await,
        Code::Unauthenticated,
        INVALID,
        "an invalid token on an anonymous method",
    );

    clock.advance(chrono::TimeDelta::minutes(10));
    assert_status(
        me(server.addr, Some(&format!("Bearer {good}"))).await,
        Code::Unauthenticated,
        INVALID,
        "expired",
    );
}

/// A verifier whose keys are unavailable (a remote issuer down past `max_stale`).
#[derive(Debug)]
struct KeysDown;

#[async_trait::async_trait]
impl TokenVerifier for KeysDown {
    async fn verify(&self, _: &str) -> Result<Verified, TokenError> {
        Err(TokenError::KeysUnavailable)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_keys_are_unavailable_not_unauthenticated() {
    let server = start(GrpcAuthLayer::new(GrpcAuth::new(BearerAuth::with_verifier(Arc::new(
        KeysDown,
    )))))
    .await;
    assert_status(
        me(server.addr, Some("Bearer a.b.c")).await,
        Code::Unavailable,
        "the token cannot be checked now; retry later",
        "keys unavailable",
    );
    assert_status(me(server.addr, None).await, Code::Unauthenticated, NO_TOKEN, "no token");
}

/// Claims read on a server without the layer: `INTERNAL`, never an anonymous success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_without_the_layer_fail_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MeServer)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let (keyring, _) = ring().await;
    let good = token(&keyring, "alice", "profile");
    let status = me(addr, Some(&format!("Bearer {good}"))).await.expect_err("no layer");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
}

/// A tenant's token reaches the handler through a `TenantAuth` picking the ring by `iss`;
/// a token naming another issuer, or a ring that was never onboarded, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_selection_picks_the_ring_of_the_token() {
    use keyrot_http::{RingSelector, TenantAuth};
    let storage = Arc::new(MemoryStorage::new());
    let sealer = Arc::new(MasterKeySealer::new(MasterKey::generate("mk").expect("mk"), []).expect("sealer"));
    let manager = keyrot_core::RingManager::builder(storage, Arc::new(MemoryLock::default()), sealer).build();
    let acme = manager
        .onboard(&RingName::new("acme").expect("ring"), RequestContext::actor("test"))
        .await
        .expect("onboard");
    let by_issuer = RingSelector::Issuer(Arc::new(|iss: &str| {
        RingName::new(iss.strip_prefix("https://issuer.example/t/")?).ok()
    }));
    let server = start(GrpcAuthLayer::new(GrpcAuth::new(TenantAuth::new(manager, by_issuer)))).await;
    let exp = chrono::Utc::now().timestamp() + 300;
    let sign = |iss: &str| {
        acme.sign(&json!({"iss": iss, "sub": "carol", "exp": exp}))
            .expect("sign")
    };
    let own = sign("https://issuer.example/t/acme");
    assert_eq!(
        me(server.addr, Some(&format!("Bearer {own}"))).await.expect("acme"),
        "carol"
    );
    for (iss, what) in [
        ("https://issuer.example/t/globex", "a ring never onboarded"),
        ("https://elsewhere.example/t/acme", "an issuer no selector knows"),
    ] {
        let status = me(server.addr, Some(&format!("Bearer {}", sign(iss))))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
}
