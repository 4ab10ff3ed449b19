//! gRPC clients that carry an API token.

use anxin_proto::v1::dispatch_client::DispatchClient;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Dispatch = DispatchClient<InterceptedService<Channel, Bearer>>;

pub async fn dispatch(url: &str, token: &str) -> Dispatch {
    let channel = Channel::from_shared(url.to_string())
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connecting to the server's gRPC port");
    let bearer = Bearer(format!("Bearer {token}").parse().expect("ASCII token"));
    DispatchClient::with_interceptor(channel, bearer)
}
