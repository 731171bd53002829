//! The gRPC resource server's service: `keyrot.example.v1.Me/Get` answers the caller's
//! `sub`, behind [`keyrot_tonic::GrpcAuthLayer`], next to the standard health service
//! (`grpc.health.v1.Health`), which needs no token.
//!
//! The service is written against tonic's server API by hand rather than generated from
//! a `.proto` file, so that building the example needs no `protoc`. Its protocol is:
//!
//! ```text
//! syntax = "proto3";
//! package keyrot.example.v1;
//! service Me { rpc Get(GetRequest) returns (GetResponse); }
//! message GetRequest {}
//! message GetResponse { string sub = 1; }
//! ```

use keyrot_core::StandardClaims;
use keyrot_tonic::{GrpcAuth, GrpcAuthLayer, RequestClaims as _, TokenVerifier};
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};

/// The full name of the `Me` service.
pub const ME_SERVICE: &str = "keyrot.example.v1.Me";
/// The gRPC path of `Me.Get`.
pub const ME_GET_PATH: &str = "/keyrot.example.v1.Me/Get";
/// The full name of the standard health service, served without a token.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// `Me.Get`'s request: empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetRequest {}

/// `Me.Get`'s answer: the verified token's `sub`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetResponse {
    /// The caller's subject.
    #[prost(string, tag = "1")]
    pub sub: String,
}

/// The `Me` service.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeServer;

impl NamedService for MeServer {
    const NAME: &'static str = ME_SERVICE;
}

/// `Me.Get`: the `sub` of the token the layer verified.
#[derive(Debug, Clone, Copy)]
struct Get;

impl UnaryService<GetRequest> for Get {
    type Response = GetResponse;
    type Future = Ready<Result<tonic::Response<GetResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<GetRequest>) -> Self::Future {
        ready(request.claims::<StandardClaims>().map(|claims| {
            tonic::Response::new(GetResponse {
                sub: claims.sub.unwrap_or_default(),
            })
        }))
    }
}

impl tower::Service<http::Request<Body>> for MeServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == ME_GET_PATH {
            Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<GetResponse, GetRequest>::default();
                Ok(Grpc::new(codec).unary(Get, request).await)
            })
        } else {
            Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) })
        }
    }
}

/// What the server verifies tokens with: `verifier`, every `Me` call needing a token,
/// the health service none.
pub fn auth_layer(verifier: Arc<dyn TokenVerifier>) -> GrpcAuthLayer {
    GrpcAuthLayer::new(
        GrpcAuth::new(keyrot_tonic::BearerAuth::with_verifier(verifier)).allow_anonymous_service(HEALTH_SERVICE),
    )
}

/// Serves `Me` and the health service (reporting `Me` as serving) on `listener` behind
/// `layer` until `shutdown` completes.
pub async fn serve<G: keyrot_http::Guard>(
    listener: tokio::net::TcpListener,
    layer: GrpcAuthLayer<G>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<MeServer>().await;
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(health)
        .add_service(MeServer)
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await
}
