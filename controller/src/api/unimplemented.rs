//! Services of the v1 contract that later work implements. They are served (so clients and
//! reflection see the whole contract) and answer every call with UNIMPLEMENTED.
use flotilla_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::server::Router;

/// Stands in for a service whose RPCs are not built yet (the generated default methods).
#[derive(Clone, Copy, Default)]
pub struct NotYetImplemented;

impl pb::quota_service_server::QuotaService for NotYetImplemented {}
impl pb::image_service_server::ImageService for NotYetImplemented {}
impl pb::server_service_server::ServerService for NotYetImplemented {}
impl pb::server_group_service_server::ServerGroupService for NotYetImplemented {}
impl pb::host_service_server::HostService for NotYetImplemented {}
impl pb::network_service_server::NetworkService for NotYetImplemented {}
impl pb::operation_service_server::OperationService for NotYetImplemented {}
impl pb::agent_service_server::AgentService for NotYetImplemented {}

pub fn add_all<I>(router: Router, intercept: I) -> Router
where
    I: Interceptor + Clone + Send + Sync + 'static,
{
    let s = NotYetImplemented;
    router
        .add_service(InterceptedService::new(pb::quota_service_server::QuotaServiceServer::new(s), intercept.clone()))
        .add_service(InterceptedService::new(pb::image_service_server::ImageServiceServer::new(s), intercept.clone()))
        .add_service(InterceptedService::new(pb::server_service_server::ServerServiceServer::new(s), intercept.clone()))
        .add_service(InterceptedService::new(
            pb::server_group_service_server::ServerGroupServiceServer::new(s),
            intercept.clone(),
        ))
        .add_service(InterceptedService::new(pb::host_service_server::HostServiceServer::new(s), intercept.clone()))
        .add_service(InterceptedService::new(pb::network_service_server::NetworkServiceServer::new(s), intercept.clone()))
        .add_service(InterceptedService::new(pb::operation_service_server::OperationServiceServer::new(s), intercept))
}
