//! The Open Inference Protocol over gRPC against the real server, with the protocol's client
//! generated from the same .proto (the answers themselves are compared with `/explain`'s by
//! the platforms' own clients in tests/e2e/protocols.rs): keys in the `authorization`
//! metadata, the client's `grpc-timeout`, a full queue, the message size limit, faults in the
//! model thread and the drain, each refused with its gRPC code and the server ready after.

use crate::common::server::Server;
use bytes::Bytes;
use gradcam_serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gradcam_serve::proto::inference::{
    ModelInferRequest, ModelMetadataRequest, ServerReadyRequest, model_infer_request,
};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type Client = GrpcInferenceServiceClient<Channel>;

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client without tonic's channel, whose own timer would end a call at its `grpc-timeout`
/// before the server's answer arrives: here the server's deadline is what ends it.
async fn without_client_deadline(
    server: &Server,
) -> GrpcInferenceServiceClient<LegacyClient<HttpConnector, tonic::body::Body>> {
    let client = LegacyClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{}", server.grpc_target()).parse().unwrap();
    GrpcInferenceServiceClient::with_origin(client, origin)
}

pub(crate) async fn connect(server: &Server) -> Client {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_target()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

/// A request for `fixture`'s class (no map: the cheapest call that still runs the model).
pub(crate) fn infer_request(fixture: &str, outputs: &[&str]) -> ModelInferRequest {
    let photo = crate::common::fixture_bytes(fixture);
    let mut raw = (photo.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(&photo);
    ModelInferRequest {
        model_name: "resnet50".into(),
        inputs: vec![model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        outputs: outputs
            .iter()
            .map(|n| model_infer_request::InferRequestedOutputTensor {
                name: n.to_string(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

/// One ModelInfer call with metadata `(key, value)` pairs; the class index on success.
pub(crate) async fn infer(
    client: &mut Client,
    metadata: &[(&'static str, &str)],
    request: ModelInferRequest,
) -> Result<i64, Status> {
    let mut req = Request::new(request);
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let answer = client.model_infer(req).await?.into_inner();
    let raw = &answer.raw_output_contents[0];
    Ok(i64::from_le_bytes(raw[..8].try_into().unwrap()))
}

async fn ready(client: &mut Client) -> bool {
    let r = client.server_ready(ServerReadyRequest {}).await.unwrap();
    r.into_inner().ready
}

/// What `grpc.health.v1.Health/Check` says of `service`.
async fn health(server: &Server, service: &str) -> Result<ServingStatus, Status> {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_target()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let answer = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).unwrap())
}

#[test]
fn keys_guard_the_model_calls_in_metadata_and_leave_health_open() {
    let server = Server::start(&["--grpc-port", "0", "--api-keys", "grpc-key-3e1f"]);
    runtime().block_on(async {
        let mut client = connect(&server).await;
        let request = || infer_request("coffee.jpg", &["class_index"]);
        for (metadata, says) in [
            (vec![], "Bearer KEY"),
            (vec![("authorization", "Bearer not-the-key")], "not valid"),
            (vec![("authorization", "grpc-key-3e1f")], "Bearer"),
        ] {
            let e = infer(&mut client, &metadata, request()).await.unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{metadata:?}: {e:?}");
            assert!(e.message().contains(says), "{e:?}");
        }
        let keyed = [("authorization", "Bearer grpc-key-3e1f")];
        let class = infer(&mut client, &keyed, request()).await.unwrap();
        assert!((0..1000).contains(&class));
        // The model's metadata is keyed as /v2/models/NAME is.
        let e = client
            .model_metadata(ModelMetadataRequest {
                name: "resnet50".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // Health and the server's own readiness stay open to probes.
        assert!(ready(&mut client).await);
        assert_eq!(health(&server, "").await.unwrap(), ServingStatus::Serving);
    });
    // ModelInfer and ModelMetadata without a key.
    assert_eq!(
        server.metric("gradcam_auth_failures_total{reason=\"missing\"}"),
        2.0
    );
    assert_eq!(
        server.metric("gradcam_protocol_requests_total{protocol=\"oip_grpc\",status=\"401\"}"),
        4.0
    );
    let log = server.wait_log("\"ready\"");
    assert!(!log.contains("grpc-key-3e1f"), "a key reached the log");
}

#[test]
fn a_full_queue_refuses_with_resource_exhausted_and_a_retry_hint() {
    let server = Server::start(&[
        "--grpc-port",
        "0",
        "--queue-capacity",
        "1",
        "--max-batch-size",
        "1",
    ]);
    let outcomes: Vec<Result<i64, Status>> = runtime().block_on(async {
        let client = connect(&server).await;
        let calls = (0..16).map(|_| {
            let mut c = client.clone();
            async move {
                let request = infer_request("chelsea.png", &["class_index"]);
                infer(&mut c, &[], request).await
            }
        });
        futures_util::future::join_all(calls).await
    });
    let mut refused = 0;
    for o in &outcomes {
        match o {
            Ok(class) => assert!((0..1000).contains(class)),
            Err(e) => {
                refused += 1;
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert_eq!(e.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
                assert_eq!(e.metadata().get("retry-after").unwrap(), "1");
            }
        }
    }
    assert!(refused > 0, "16 calls into a queue of 1: {outcomes:?}");
    assert!(refused < 16, "none answered: {outcomes:?}");
    assert_eq!(server.ready(), 200);
    assert_eq!(
        server.metric("gradcam_rejections_total{reason=\"queue_full\"}"),
        refused as f64
    );
    let route = "route=\"/inference.GRPCInferenceService/ModelInfer\"";
    assert_eq!(
        server.metric(&format!("gradcam_requests_total{{{route},status=\"429\"}}")),
        refused as f64
    );
}

#[test]
fn the_clients_grpc_timeout_bounds_the_call_and_a_fault_fails_only_its_own() {
    let server = Server::start(&["--grpc-port", "0"]);
    runtime().block_on(async {
        let mut client = connect(&server).await;
        let request = || infer_request("coffee.jpg", &["class_index"]);
        // The model thread held for 3 s; the client allows 400 ms: the server says so then.
        let started = std::time::Instant::now();
        let slow = [("x-gradcam-fault", "sleep=3000"), ("grpc-timeout", "400m")];
        let mut req = Request::new(request());
        for (k, v) in slow {
            req.metadata_mut().insert(k, v.parse().unwrap());
        }
        let mut raw = without_client_deadline(&server).await;
        let e = raw.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("400 ms"), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(2900), "{e:?}");
        let e = infer(&mut client, &[("grpc-timeout", "soon")], request())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // A libtorch error in the model thread fails that call alone, as INTERNAL without
        // its detail; the next is answered.
        let e = infer(&mut client, &[("x-gradcam-fault", "error")], request())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{e:?}");
        assert_eq!(e.message(), "internal error");
        assert!(infer(&mut client, &[], request()).await.is_ok());
        assert!(ready(&mut client).await);
    });
    assert_eq!(server.ready(), 200);
}

#[test]
fn a_message_over_the_body_limit_is_refused_and_bad_input_is_invalid_argument() {
    let server = Server::start(&["--grpc-port", "0", "--body-limit", "100000"]);
    runtime().block_on(async {
        let mut client = connect(&server).await;
        // chelsea.png is larger than 100 000 bytes.
        let e = infer(
            &mut client,
            &[],
            infer_request("chelsea.png", &["class_index"]),
        )
        .await
        .unwrap_err();
        // tonic's own refusal, before the message is read: counted as REST's 413.
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        assert!(e.message().contains("100000"), "{e:?}");
        let mut bad = infer_request("coffee.jpg", &["class_index"]);
        bad.raw_input_contents = vec![b"\x05\x00\x00\x00hello".to_vec().into()];
        let e = infer(&mut client, &[], bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut other = infer_request("coffee.jpg", &["class_index"]);
        other.model_name = "resnet7".into();
        let e = infer(&mut client, &[], other).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        // More tensors than any request needs: refused before the message is decoded.
        let mut many = infer_request("coffee.jpg", &["class_index"]);
        many.inputs = vec![Default::default(); 100];
        let e = infer(&mut client, &[], many).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("at most 16"), "{e:?}");
        assert!(ready(&mut client).await);
    });
    let route = "route=\"/inference.GRPCInferenceService/ModelInfer\"";
    assert_eq!(
        server.metric(&format!("gradcam_requests_total{{{route},status=\"413\"}}")),
        1.0
    );
}

#[test]
fn a_message_that_trickles_in_is_cut_off_at_the_body_read_timeout() {
    let server = Server::start(&["--grpc-port", "0", "--body-read-timeout-ms", "1000"]);
    runtime().block_on(async {
        // A message frame that announces 1000 bytes, then nothing more.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 3, 232]))))
            .await
            .unwrap();
        let body = StreamBody::new(tokio_stream_of(rx));
        let client = LegacyClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let request = axum::http::Request::post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            server.grpc_target()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(20), async {
            let res = client.request(request).await.unwrap();
            let (parts, body) = res.into_parts();
            let trailers = body
                .collect()
                .await
                .ok()
                .and_then(|b| b.trailers().cloned());
            (parts.headers, trailers)
        })
        .await
        .expect("the call ended, at the server's body deadline");
        let status = res
            .0
            .get("grpc-status")
            .or(res.1.as_ref().and_then(|t| t.get("grpc-status")));
        assert!(status.is_some_and(|s| s != "0"), "{res:?}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{res:?}");
        drop(tx);
    });
    assert_eq!(server.ready(), 200);
}

/// The receiving half of a channel as a stream of body frames.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn draining_turns_readiness_off_ends_health_watches_then_refuses_with_unavailable() {
    let mut server = Server::start(&["--grpc-port", "0", "--drain-delay-ms", "3000"]);
    let watched = runtime().block_on(async {
        let mut client = connect(&server).await;
        assert!(ready(&mut client).await);
        for service in ["", "inference.GRPCInferenceService"] {
            assert_eq!(
                health(&server, service).await.unwrap(),
                ServingStatus::Serving
            );
        }
        let e = health(&server, "grpc.other").await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let channel = Channel::from_shared(format!("http://{}", server.grpc_target()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap().status;
        server.signal_term();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Not ready (what a Kubernetes gRPC probe asks), still serving during the drain delay.
        assert!(!ready(&mut client).await);
        assert_eq!(
            health(&server, "").await.unwrap(),
            ServingStatus::NotServing
        );
        let request = || infer_request("coffee.jpg", &["class_index"]);
        assert!(infer(&mut client, &[], request()).await.is_ok());
        // Past the delay: no new work (refused, or the connection closed for good).
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let e = infer(&mut client, &[], request()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        // The watch said NOT_SERVING and ended rather than hold the drain open.
        let mut statuses = vec![first];
        while let Ok(Some(m)) = watch.message().await {
            statuses.push(m.status);
        }
        statuses
    });
    let want: Vec<i32> = vec![
        ServingStatus::Serving.into(),
        ServingStatus::NotServing.into(),
    ];
    assert_eq!(watched, want);
    let exited = std::time::Instant::now();
    assert!(server.wait_exit().success());
    // Well before the 30 s drain timeout a watch left open would have held it for.
    assert!(exited.elapsed() < Duration::from_secs(20));
}
