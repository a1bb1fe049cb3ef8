//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, what
//! `tritonclient.grpc` and KServe's `InferenceGRPCClient` call) and the standard
//! `grpc.health.v1.Health`, on their own port (`--grpc-port`), behind the same queue, batching,
//! deadlines (the client's `grpc-timeout` within the server's own), pixel budget, keys
//! (`authorization` metadata, checked before the message is read), metrics and logs as the REST
//! routes. A message may be as large as a REST body (`--body-limit`) and must arrive as soon
//! (`--body-read-timeout-ms`); what it may claim is bounded before it is decoded
//! ([`crate::proto::codec`]).
//!
//! Served by the same accept loop as the REST side (header-read timeout, connection limit,
//! graceful drain), as HTTP/2 without TLS (h2c), as gRPC is inside a cluster.

mod convert;
mod edge;
mod health;
mod service;

use crate::http::AppState;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tonic_health::pb::health_server::HealthServer;

/// Every gRPC service, as a router for the accept loop. Unknown services and methods are
/// answered UNIMPLEMENTED.
pub fn router(state: AppState) -> axum::Router {
    let limit = state.config.body_limit;
    let inference = GrpcInferenceServiceServer::new(service::Inference {
        state: state.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let health = HealthServer::new(health::Probe {
        state: state.clone(),
    });
    let router = tonic::service::Routes::new(inference)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(state, edge::edge))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            edge::panicked,
        ));
    if !crate::telemetry::enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next| {
            crate::http::traced::grpc(edge::route_of(req.uri().path()), req, next)
        },
    ))
}
