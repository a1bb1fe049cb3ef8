//! `inference.GRPCInferenceService`: the REST routes' twins, on the same state. The calls it
//! answers are counted here in `gradcam_requests_total` under their gRPC path (with the HTTP
//! status of the REST side's same answer) and in
//! `gradcam_protocol_requests_total{protocol="oip_grpc"}`, refusals counted and logged as
//! REST's are; [`super::edge`] counts the rest and checks keys before the message is read.

use super::convert;
use crate::http::AppState;
use crate::http::answer::RenderTime;
use crate::http::explain::within;
use crate::http::problem::ApiError;
use crate::http::protocols::oip;
use crate::http::protocols::run::{MODEL_VERSION, served};
use crate::http::work::blocking;
use crate::metrics::Clock;
use crate::proto::inference as pb;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use std::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub struct Inference {
    pub state: AppState,
}

/// The service's path, before each method's name.
const SERVICE: &str = "/inference.GRPCInferenceService/";

impl Inference {
    /// Counts one call's outcome and logs a refusal, as the REST side's middleware does; a
    /// refusal becomes its status.
    fn finish<T>(&self, method: &str, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        let route = format!("{SERVICE}{method}");
        let metrics = &self.state.metrics;
        super::edge::counted();
        match r {
            Ok(answer) => {
                metrics.request(&route, 200);
                metrics.protocol_request("oip_grpc", 200);
                Ok(Response::new(answer))
            }
            Err(e) => {
                let (status, kind, _) = e.parts();
                metrics.request(&route, status.as_u16());
                metrics.protocol_request("oip_grpc", status.as_u16());
                metrics.rejection(kind);
                crate::http::log_refusal(&route, status.as_u16(), kind);
                if let ApiError::Internal(detail) = &e {
                    tracing::error!(%route, %detail, "internal error");
                }
                Err(convert::status(&e))
            }
        }
    }

    /// The served model's name when `name` and `version` (empty: any) name it.
    fn model(&self, name: &str, version: &str) -> Result<String, ApiError> {
        served(&self.state, name, Some(version).filter(|v| !v.is_empty()))
    }

    async fn infer(
        &self,
        metadata: MetadataMap,
        req: pb::ModelInferRequest,
    ) -> Result<pb::ModelInferResponse, ApiError> {
        let started = Instant::now();
        let state = &self.state;
        let name = self.model(&req.model_name, &req.model_version)?;
        let server_limit = state.config.request_timeout();
        let client_limit = convert::client_timeout(&metadata)?.filter(|t| *t < server_limit);
        let limit = client_limit.unwrap_or(server_limit);
        let r = within(state, started, limit, async {
            state.serving()?;
            let size = state.engine.description().input.size;
            let (request, images) = blocking(state, move || {
                let (request, contents) = convert::request(req)?;
                let images = oip::images(size, &request, contents)?;
                Ok::<_, ApiError>((request, images))
            })
            .await??;
            let (plan, answered) = oip::run_plan(state, &request, images, started + limit).await?;
            let engine = state.engine.clone();
            let id = request.id;
            let (answer, time) = blocking(state, move || {
                let mut time = RenderTime::default();
                let outputs = oip::outputs(&plan, engine.description(), &answered, &mut time)?;
                let (answer, took) =
                    Clock::time(|| convert::response(name, MODEL_VERSION.into(), id, &outputs));
                time.serialized(took);
                Ok::<_, ApiError>((answer, time))
            })
            .await??;
            time.record(&state.metrics, true);
            Ok(answer)
        })
        .await;
        match r {
            // The client's own deadline, not the server's load: DEADLINE_EXCEEDED, which
            // clients do not retry elsewhere as they would UNAVAILABLE.
            Err(ApiError::Overloaded { .. } | ApiError::Expired | ApiError::Timeout(_))
                if client_limit.is_some() =>
            {
                Err(ApiError::Timeout(limit.as_millis() as u64))
            }
            r => r,
        }
    }
}

/// The metadata's tensors, as the protocol's messages.
fn specs(list: Vec<oip::TensorSpec>) -> Vec<pb::model_metadata_response::TensorMetadata> {
    list.into_iter()
        .map(|t| pb::model_metadata_response::TensorMetadata {
            name: t.name.into(),
            datatype: t.datatype.into(),
            shape: t.shape,
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        self.finish("ServerLive", Ok(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.state.ready().is_ok();
        self.finish("ServerReady", Ok(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let m = request.get_ref();
        let r = self
            .model(&m.name, &m.version)
            .map(|_| pb::ModelReadyResponse {
                ready: self.state.ready().is_ok(),
            });
        self.finish("ModelReady", r)
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let answer = pb::ServerMetadataResponse {
            name: "gradcam-serve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into()],
        };
        self.finish("ServerMetadata", Ok(answer))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let m = request.get_ref();
        let r = self.model(&m.name, &m.version).map(|name| {
            let (inputs, outputs) = oip::tensors(self.state.engine.description());
            pb::ModelMetadataResponse {
                name,
                versions: vec![MODEL_VERSION.into()],
                platform: oip::PLATFORM.into(),
                inputs: specs(inputs),
                outputs: specs(outputs),
            }
        });
        self.finish("ModelMetadata", r)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        // Test builds: the fault the metadata names, as REST's header does.
        #[cfg(feature = "fault-injection")]
        let r = {
            let fault = metadata.get("x-gradcam-fault").map(|v| v.as_bytes());
            match crate::http::fault_named(fault) {
                Ok(fault) => crate::fault::within(fault, self.infer(metadata, req)).await,
                Err(e) => Err(e),
            }
        };
        #[cfg(not(feature = "fault-injection"))]
        let r = self.infer(metadata, req).await;
        self.finish("ModelInfer", r)
    }
}
