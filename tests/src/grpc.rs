//! gRPC clients that carry an API token.

use anxin_proto::v1::{admin_client::AdminClient, dispatch_client::DispatchClient};
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
