//! The tonic `Dispatch` service.

use std::pin::Pin;

use anxin_proto::v1::{
    AcknowledgeRequest, Alert, AlertState, AlertUpdate, ListAlertsRequest, ListAlertsResponse,
    ResolveRequest, WatchAlertsRequest, dispatch_server::Dispatch,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::alerts::AlertDesk;

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Conflict(m) => Status::failed_precondition(m),
            ApiError::BadRequest(m) => Status::invalid_argument(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

fn store_status(err: crate::store::StoreError) -> Status {
    ApiError::from(err).into()
}

fn states(raw: &[i32]) -> Result<Vec<AlertState>, Status> {
    raw.iter()
        .map(|s| {
            AlertState::try_from(*s)
                .map_err(|_| Status::invalid_argument(format!("unknown alert state {s}")))
        })
        .collect()
}

pub struct DispatchService {
    desk: AlertDesk,
}

impl DispatchService {
    pub fn new(desk: AlertDesk) -> Self {
        Self { desk }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<AlertUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatch for DispatchService {
    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let states = states(&request.get_ref().states)?;
        let alerts = self.desk.list(&states).map_err(store_status)?;
        Ok(Response::new(ListAlertsResponse { alerts }))
    }

    type WatchAlertsStream = UpdateStream;

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let states = states(&request.get_ref().states)?;
        let (snapshot, mut changes) = self.desk.watch(&states).map_err(store_status)?;
        let stream = async_stream(move |tx| async move {
            for alert in snapshot {
                if tx
                    .send(Ok(AlertUpdate { alert: Some(alert) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                let item = match changes.recv().await {
                    Ok(alert) if states.is_empty() || states.contains(&alert.state()) => {
                        Ok(AlertUpdate { alert: Some(alert) })
                    }
                    Ok(_) => continue,
                    // A watcher that fell behind must re-watch to get a fresh
                    // snapshot rather than silently miss changes.
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "watcher fell {n} changes behind; watch again for a fresh snapshot"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<Alert>, Status> {
        let req = request.into_inner();
        let alert = self
            .desk
            .acknowledge(&req.alert_id, &req.by)
            .await
            .map_err(store_status)?;
        Ok(Response::new(alert))
    }

    async fn resolve(&self, request: Request<ResolveRequest>) -> Result<Response<Alert>, Status> {
        let req = request.into_inner();
        let alert = self
            .desk
            .resolve(&req.alert_id, &req.by, &req.outcome)
            .await
            .map_err(store_status)?;
        Ok(Response::new(alert))
    }
}

/// A stream fed by a spawned task through a small channel.
fn async_stream<T, F, Fut>(produce: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
