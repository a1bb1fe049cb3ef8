//! The Open Inference Protocol's gRPC messages and service (`proto/inference.proto`), generated
//! at build time: the server's side (served on `--grpc-port` beside the HTTP API) and the
//! client's. Both use [`codec::Checked`], prost's codec with a bound on what a request may
//! claim.

pub mod codec;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}
