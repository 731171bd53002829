//! The gRPC load generator: `keyrot.example.v1.Me/Get` of the gRPC resource server over
//! HTTP/2 (tonic), one connection per closed loop with one call in flight, as the HTTP
//! generator does. Any status but `OK` fails the run.

use crate::client::{Load, LoadError, Window};
use crate::population::Rng;
use grpc_resource_server::{GetRequest, GetResponse, ME_GET_PATH};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::task::JoinSet;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

type Client = tonic::client::Grpc<Channel>;

async fn connect(addr: SocketAddr) -> Result<Client, LoadError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(tonic::client::Grpc::new(channel))
}

/// One connection's closed loop until `deadline`.
async fn drive(
    mut client: Client,
    load: Load,
    tokens: std::sync::Arc<Vec<AsciiMetadataValue>>,
    index: usize,
    deadline: Instant,
) -> Result<Window, LoadError> {
    let mut rng = Rng::new(load.seed.wrapping_add(index as u64));
    let mut out = Window::default();
    let path = PathAndQuery::from_static(ME_GET_PATH);
    while Instant::now() < deadline {
        let user = load.zipf.sample(&mut rng);
        let started = Instant::now();
        let mut request = tonic::Request::new(GetRequest {});
        request.metadata_mut().insert("authorization", tokens[user].clone());
        client.ready().await?;
        let codec = tonic_prost::ProstCodec::<GetRequest, GetResponse>::default();
        let answer = client.unary(request, path.clone(), codec).await;
        let micros = started.elapsed().as_micros();
        match answer {
            Ok(response) if !response.get_ref().sub.is_empty() => {}
            Ok(_) => return Err(format!("Me.Get answered no sub for user-{user:05}").into()),
            Err(status) => return Err(format!("Me.Get answered {:?} for user-{user:05}", status.code()).into()),
        }
        out.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
        out.users.push(u32::try_from(user)?);
    }
    Ok(out)
}

/// Opens `load.connections` HTTP/2 connections to `addr`, then drives them all for
/// `load.duration` with the users' tokens.
pub async fn window(addr: SocketAddr, load: &Load) -> Result<Window, LoadError> {
    let tokens: Vec<AsciiMetadataValue> = load
        .tokens
        .iter()
        .map(|h| AsciiMetadataValue::try_from(h.as_bytes()))
        .collect::<Result<_, _>>()?;
    let tokens = std::sync::Arc::new(tokens);
    let mut clients = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        clients.push(connect(addr).await?);
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(drive(
            client,
            load.clone(),
            std::sync::Arc::clone(&tokens),
            index,
            deadline,
        ));
    }
    crate::client::join(tasks, started).await
}
