//! The tonic `Dispatch` and `Admin` services. Callers send their API token
//! as `authorization: Bearer <token>` metadata.

use std::pin::Pin;

use anxin_proto::v1::{
    AcknowledgeRequest, ActRequest, Alert, AlertAction, AlertState, AlertUpdate, AuditList,
    AuditQuery, DeviceList, DeviceRecord, GatewayList, GetRequest, ImportReport, ImportRequest,
    IssueTokenRequest, IssueTokenResponse, ListAlertsRequest, ListAlertsResponse, ListRequest,
    ListTokensRequest, Place, PlaceList, PutGatewayRequest, PutGatewayResponse, Report,
    ReportRequest, Resident, ResidentList, ResolveRequest, RevokeTokenRequest, RevokeTokenResponse,
    RotateGatewayTokenRequest, RotateGatewayTokenResponse, Staff, StaffList, TokenList,
    WatchAlertsRequest, admin_server::Admin, dispatch_server::Dispatch,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::{
    desks::admin::AdminDesk,
    desks::alerts::{Act, AlertDesk},
    desks::auth::Authenticator,
    domain::rights::Principal,
};

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Unauthorized(m) => Status::unauthenticated(m),
            ApiError::Forbidden(m) => Status::permission_denied(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Conflict(m) => Status::failed_precondition(m),
            ApiError::BadRequest(m) => Status::invalid_argument(m),
            ApiError::TooLarge(m) => Status::resource_exhausted(m),
            ApiError::Internal(m) => Status::internal(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

fn status(err: impl Into<ApiError>) -> Status {
    err.into().into()
}

/// The bearer token of a gRPC request's `authorization` metadata.
pub fn token_of<T>(request: &Request<T>) -> Option<&str> {
    Authenticator::bearer(
        request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
    )
}

/// The caller of a gRPC request, from its `authorization` metadata.
pub fn caller<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    authenticated(auth, token_of(request))
}

/// Who `token` is, or the status that refuses it.
pub fn authenticated(auth: &Authenticator, token: Option<&str>) -> Result<Principal, Status> {
    auth.authenticate(token).map_err(status)
}

fn staff_caller<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    match caller(auth, request)? {
        Principal::Gateway(_) => Err(Status::permission_denied(
            "gateway tokens are for the uplink only",
        )),
        principal => Ok(principal),
    }
}

fn unknown_kind(kind: &str) -> Status {
    Status::invalid_argument(format!(
        "subject_kind {kind:?} is not \"staff\" or \"gateway\""
    ))
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
    auth: Authenticator,
}

impl DispatchService {
    pub fn new(desk: AlertDesk, auth: Authenticator) -> Self {
        Self { desk, auth }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<AlertUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatch for DispatchService {
    async fn list_alerts(
        &self,
        request: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.get_ref();
        let states = states(&req.states)?;
        if req.limit == 0
            && req.after.is_empty()
            && req.community_id.is_empty()
            && req.from_ms == 0
            && req.to_ms == 0
        {
            let alerts = self.desk.list(&who, &states).map_err(status)?;
            return Ok(Response::new(ListAlertsResponse {
                alerts,
                next: String::new(),
            }));
        }
        let query = crate::domain::listing::ListQuery {
            limit: req.limit as usize,
            after: req.after.clone(),
            community: req.community_id.clone(),
            states,
            from_ms: req.from_ms,
            to_ms: req.to_ms,
            ..Default::default()
        };
        let page = self.desk.history(&who, query).map_err(status)?;
        Ok(Response::new(ListAlertsResponse {
            alerts: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    type WatchAlertsStream = UpdateStream;

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let states = states(&request.get_ref().states)?;
        let (snapshot, mut changes) = self.desk.watch(&who, &states).map_err(status)?;
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
                    Ok(alert)
                        if who.sees(&alert.community_id)
                            && (states.is_empty() || states.contains(&alert.state())) =>
                    {
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
        let who = staff_caller(&self.auth, &request)?;
        let req = request.into_inner();
        let alert = self
            .desk
            .acknowledge(&who, &req.alert_id)
            .await
            .map_err(status)?;
        Ok(Response::new(alert))
    }

    async fn resolve(&self, request: Request<ResolveRequest>) -> Result<Response<Alert>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.into_inner();
        let outcome = if req.outcome.is_empty() {
            "attended"
        } else {
            &req.outcome
        };
        let alert = self
            .desk
            .resolve(&who, &req.alert_id, outcome)
            .await
            .map_err(status)?;
        Ok(Response::new(alert))
    }

    async fn act(&self, request: Request<ActRequest>) -> Result<Response<Alert>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.into_inner();
        let act = Act {
            action: AlertAction::try_from(req.action).ok(),
            outcome: req.outcome,
            note: req.note,
            staff_id: req.staff_id,
        };
        let alert = self
            .desk
            .act(&who, &req.alert_id, act)
            .await
            .map_err(status)?;
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

pub struct AdminService {
    admin: AdminDesk,
    auth: Authenticator,
}

impl AdminService {
    pub fn new(admin: AdminDesk, auth: Authenticator) -> Self {
        Self { admin, auth }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put_place(&self, request: Request<Place>) -> Result<Response<Place>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let place = self
            .admin
            .put_place(&who, request.into_inner())
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(place))
    }

    async fn list_places(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<PlaceList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let query = list_query(request.get_ref());
        let page = self.admin.places(&who, query).map_err(status)?;
        Ok(Response::new(PlaceList {
            places: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn put_resident(&self, request: Request<Resident>) -> Result<Response<Resident>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let resident = self
            .admin
            .put_resident(&who, request.into_inner())
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(resident))
    }

    async fn get_resident(
        &self,
        request: Request<GetRequest>,
    ) -> Result<Response<Resident>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let resident = self
            .admin
            .resident(&who, &request.get_ref().id)
            .await
            .map_err(status)?;
        Ok(Response::new(resident))
    }

    async fn list_residents(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ResidentList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let query = list_query(request.get_ref());
        let page = self.admin.residents(&who, query).map_err(status)?;
        Ok(Response::new(ResidentList {
            residents: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn put_device(
        &self,
        request: Request<DeviceRecord>,
    ) -> Result<Response<DeviceRecord>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let device = self
            .admin
            .put_device(&who, request.into_inner())
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(device))
    }

    async fn list_devices(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<DeviceList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let query = list_query(request.get_ref());
        let page = self.admin.devices(&who, query).map_err(status)?;
        Ok(Response::new(DeviceList {
            devices: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn put_gateway(
        &self,
        request: Request<PutGatewayRequest>,
    ) -> Result<Response<PutGatewayResponse>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.into_inner();
        let (gateway, token) = self
            .admin
            .put_gateway(&who, req.gateway.unwrap_or_default(), &req.token)
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(PutGatewayResponse {
            gateway: Some(gateway),
            token,
        }))
    }

    async fn list_gateways(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<GatewayList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let query = list_query(request.get_ref());
        let page = self.admin.gateways(&who, query).map_err(status)?;
        Ok(Response::new(GatewayList {
            gateways: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn put_staff(&self, request: Request<Staff>) -> Result<Response<Staff>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let staff = self
            .admin
            .put_staff(&who, request.into_inner())
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(staff))
    }

    async fn list_staff(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<StaffList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let query = list_query(request.get_ref());
        let page = self.admin.staff(&who, query).map_err(status)?;
        Ok(Response::new(StaffList {
            staff: page.items,
            next: page.next.unwrap_or_default(),
        }))
    }

    async fn issue_token(
        &self,
        request: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenResponse>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let token = self
            .admin
            .tokens()
            .issue_token(&who, &request.get_ref().staff_id, None)
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(IssueTokenResponse { token: token.token }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<TokenList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let ListTokensRequest {
            subject_kind,
            subject_id,
        } = request.get_ref();
        let tokens = self.admin.tokens();
        let listed = match subject_kind.as_str() {
            "staff" => tokens.staff_tokens(&who, subject_id),
            "gateway" => tokens.gateway_tokens(&who, subject_id),
            other => return Err(unknown_kind(other)),
        }
        .map_err(status)?;
        Ok(Response::new(TokenList {
            tokens: listed
                .into_iter()
                .map(|t| anxin_proto::v1::TokenInfo {
                    token_id: t.token_id,
                    issued_ms: t.issued_ms,
                    expires_ms: t.expires_ms,
                    revoked_ms: t.revoked_ms,
                    last_used_ms: t.last_used_ms,
                    session: t.session,
                })
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let RevokeTokenRequest {
            subject_kind,
            subject_id,
            token_id,
        } = request.get_ref();
        let tokens = self.admin.tokens();
        match subject_kind.as_str() {
            "staff" => tokens.revoke_token(&who, subject_id, token_id),
            "gateway" => tokens.revoke_gateway_token(&who, subject_id, token_id),
            other => return Err(unknown_kind(other)),
        }
        .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn rotate_gateway_token(
        &self,
        request: Request<RotateGatewayTokenRequest>,
    ) -> Result<Response<RotateGatewayTokenResponse>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let ttl_ms = request
            .get_ref()
            .ttl_secs
            .map(|s| (s as i64).saturating_mul(1000));
        let (issued, earlier_valid_until_ms) = self
            .admin
            .tokens()
            .rotate_gateway_token(&who, &request.get_ref().gateway_id, ttl_ms)
            .map_err(status)?;
        super::durable(self.admin.store(), ())
            .await
            .map_err(status)?;
        Ok(Response::new(RotateGatewayTokenResponse {
            token: issued.token,
            token_id: issued.token_id,
            expires_ms: issued.expires_ms,
            earlier_valid_until_ms,
        }))
    }

    async fn import(
        &self,
        request: Request<ImportRequest>,
    ) -> Result<Response<ImportReport>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.into_inner();
        let report = self
            .admin
            .import(
                &who,
                &req.kind,
                crate::desks::admin::ImportSource::Text(req.csv),
                |_| {},
            )
            .await
            .map_err(status)?;
        Ok(Response::new(report))
    }

    async fn query_audit(
        &self,
        request: Request<AuditQuery>,
    ) -> Result<Response<AuditList>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let entries = self.admin.audit(&who, request.get_ref()).map_err(status)?;
        Ok(Response::new(AuditList { entries }))
    }

    async fn get_report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<Report>, Status> {
        let who = staff_caller(&self.auth, &request)?;
        let req = request.get_ref();
        let report = self
            .admin
            .report(&who, &req.community_id, req.from_ms, req.to_ms)
            .map_err(status)?;
        Ok(Response::new(report))
    }
}

/// A directory list request as the desks take it (the caller's scope is
/// theirs to set).
fn list_query(request: &ListRequest) -> crate::domain::listing::ListQuery {
    crate::domain::listing::ListQuery {
        limit: request.limit as usize,
        after: request.after.clone(),
        community: request.community_id.clone(),
        search: request.search.clone(),
        gateway: request.gateway_id.clone(),
        resident: request.resident_id.clone(),
        parent: request.parent_id.clone(),
        ..Default::default()
    }
}
