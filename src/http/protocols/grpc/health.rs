//! `grpc.health.v1.Health`, the standard health service that Kubernetes' gRPC probes and
//! `grpc_health_probe` call. The server (service `""`) and the inference service are SERVING
//! when the instance is ready, as `/health/ready` says (not while starting, draining or with
//! its model stopped) and NOT_SERVING otherwise; any other service is NOT_FOUND (Check) or
//! SERVICE_UNKNOWN (Watch). Watch sends the status, then each change, checked every
//! [`WATCH_PERIOD`], and ends (after NOT_SERVING) when the drain stops taking work.

use crate::http::AppState;
use std::pin::Pin;
use std::time::Duration;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services this server reports on.
const SERVICES: [&str; 2] = ["", "inference.GRPCInferenceService"];

/// How often a watch looks at readiness.
const WATCH_PERIOD: Duration = Duration::from_millis(500);

pub struct Probe {
    pub state: AppState,
}

/// The status of `service` on an instance that is ready or not.
fn status(service: &str, ready: bool) -> ServingStatus {
    match (SERVICES.contains(&service), ready) {
        (false, _) => ServingStatus::ServiceUnknown,
        (true, true) => ServingStatus::Serving,
        (true, false) => ServingStatus::NotServing,
    }
}

fn answer(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s.into() }
}

#[tonic::async_trait]
impl Health for Probe {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match status(service, self.state.ready().is_ok()) {
            ServingStatus::ServiceUnknown => Err(Status::not_found(format!(
                "no service {service:?} here; known: \"\" (the server), {}",
                SERVICES[1]
            ))),
            s => Ok(Response::new(answer(s))),
        }
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let state = self.state.clone();
        // (the status last sent, if any): send the first at once, then only changes. Once the
        // server no longer takes work the watch says NOT_SERVING and ends, so that it does not
        // hold the drain open.
        let changes = futures_util::stream::unfold(Some(None), move |last| {
            let state = state.clone();
            let service = service.clone();
            async move {
                let last = last?;
                loop {
                    let closing = state.closing.load(std::sync::atomic::Ordering::SeqCst);
                    let now = status(&service, !closing && state.ready().is_ok());
                    if closing {
                        return (last != Some(now)).then(|| (Ok(answer(now)), None));
                    }
                    if last != Some(now) {
                        return Some((Ok(answer(now)), Some(Some(now))));
                    }
                    tokio::time::sleep(WATCH_PERIOD).await;
                }
            }
        });
        Ok(Response::new(Box::pin(changes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_and_the_inference_service_follow_readiness_and_others_are_unknown() {
        for service in SERVICES {
            assert_eq!(status(service, true), ServingStatus::Serving);
            assert_eq!(status(service, false), ServingStatus::NotServing);
        }
        assert_eq!(status("grpc.other", true), ServingStatus::ServiceUnknown);
    }
}
