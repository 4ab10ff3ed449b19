//! gRPC clients that carry an API token.

use std::pin::Pin;

use anxin_proto::v1::{
    ServerMessage,
    admin_client::AdminClient,
    dispatch_client::DispatchClient,
    uplink_server::{Uplink, UplinkServer},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Dispatch = DispatchClient<InterceptedService<Channel, Bearer>>;

pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

async fn channel(url: &str, token: &str) -> (Channel, Bearer) {
    let channel = Channel::from_shared(url.to_string())
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connecting to the server's gRPC port");
    (
        channel,
        Bearer(format!("Bearer {token}").parse().expect("ASCII token")),
    )
}

pub async fn dispatch(url: &str, token: &str) -> Dispatch {
    let (channel, bearer) = channel(url, token).await;
    DispatchClient::with_interceptor(channel, bearer)
}

pub async fn admin(url: &str, token: &str) -> Admin {
    let (channel, bearer) = channel(url, token).await;
    AdminClient::with_interceptor(channel, bearer)
}

/// The stream a stand-in `Uplink` service answers with.
pub type UplinkStream = Pin<Box<dyn futures::Stream<Item = Result<ServerMessage, Status>> + Send>>;

/// Serves a stand-in `Uplink` (a server that misbehaves in one chosen way)
/// with a real tonic server on a free loopback port; the port.
pub async fn serve_uplink<S: Uplink>(service: S) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let port = listener.local_addr().expect("a bound port").port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UplinkServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}
