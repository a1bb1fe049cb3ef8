//! Between the protocol's gRPC messages and the service: a `ModelInferRequest` read as the REST
//! side reads its JSON (the same inputs, outputs and parameters), an answer's tensors written
//! as `raw_output_contents` (as Triton does: no base64, no per-element messages), and the
//! service's refusals as gRPC status codes.

use crate::http::problem::{ApiError, ProblemType};
use crate::http::protocols::tensor::{
    self, Contents, InferRequest, RequestInput, RequestOutput, Tensor,
};
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

fn malformed(why: impl Into<String>) -> ApiError {
    ApiError::Malformed(why.into())
}

/// A parameter as the REST side's JSON has it.
fn parameter(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        None => Value::Null,
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(*d),
        Some(ParameterChoice::StringParam(s)) => Value::String(s.clone()),
    }
}

fn parameters(map: &HashMap<String, InferParameter>) -> Map<String, Value> {
    // In name order, so that a refusal names the same parameter whatever the map's order.
    let mut sorted: Vec<_> = map.iter().collect();
    sorted.sort_by_key(|(k, _)| k.as_str());
    sorted
        .into_iter()
        .map(|(k, v)| (k.clone(), parameter(v)))
        .collect()
}

/// The request as the REST side reads it, with each input's contents: from
/// `raw_input_contents` when the client sent them (one per input), else from `contents`.
pub fn request(req: ModelInferRequest) -> Result<(InferRequest, Vec<Contents>), ApiError> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(malformed(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, or none",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut contents = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let read = RequestInput {
            name: input.name,
            shape: input.shape,
            datatype: input.datatype,
            parameters: parameters(&input.parameters),
            data: None,
        };
        let n = tensor::elements(&read.name, &read.shape)?;
        let c = match (raw.next(), input.contents) {
            (Some(_), Some(_)) => {
                return Err(malformed(format!(
                    "input {} has contents and raw_input_contents; send one of them",
                    read.name
                )));
            }
            (Some(bytes), None) => tensor::from_binary(&read, n, bytes)?,
            (None, Some(c)) => typed(&read, n, c)?,
            (None, None) => {
                return Err(malformed(format!(
                    "input {} has no contents and there is no raw_input_contents",
                    read.name
                )));
            }
        };
        inputs.push(read);
        contents.push(c);
    }
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| RequestOutput {
            parameters: parameters(&o.parameters),
            name: o.name,
        })
        .collect();
    let id = Some(req.id).filter(|id| !id.is_empty());
    Ok((
        InferRequest {
            id,
            parameters: parameters(&req.parameters),
            inputs,
            outputs,
        },
        contents,
    ))
}

/// An input's typed contents (`bytes_contents` for BYTES, `fp32_contents` for FP32).
fn typed(input: &RequestInput, n: usize, c: InferTensorContents) -> Result<Contents, ApiError> {
    let name = &input.name;
    let (count, contents) = match input.datatype.as_str() {
        "BYTES" => (c.bytes_contents.len(), Contents::Bytes(c.bytes_contents)),
        "FP32" => (c.fp32_contents.len(), Contents::Fp32(c.fp32_contents)),
        other => {
            return Err(malformed(format!(
                "input {name}: datatype {other} is not supported; allowed: BYTES (image), FP32 \
                 (input)"
            )));
        }
    };
    if count != n {
        return Err(malformed(format!(
            "input {name}: {count} elements for shape {:?}",
            input.shape
        )));
    }
    Ok(contents)
}

/// The answer: each output's shape and type, its bytes in `raw_output_contents`.
pub fn response(
    model_name: String,
    model_version: String,
    id: Option<String>,
    outputs: &[Tensor],
) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(outputs.len());
    let mut heads = Vec::with_capacity(outputs.len());
    for t in outputs {
        let mut bytes = Vec::new();
        t.data.append_binary(&mut bytes);
        raw.push(Bytes::from(bytes));
        heads.push(InferOutputTensor {
            name: t.name.to_string(),
            datatype: t.data.datatype().to_string(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    ModelInferResponse {
        model_name,
        model_version,
        id: id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs: heads,
        raw_output_contents: raw,
    }
}

/// The client's deadline (`grpc-timeout`: at most 8 digits and a unit, H M S m u n).
pub fn client_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || malformed("grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u or n)");
    let text = value.to_str().map_err(|_| bad())?;
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    Ok(Some(d))
}

/// The gRPC code of a refusal: the client's mistakes INVALID_ARGUMENT, a missing or wrong key
/// UNAUTHENTICATED, another model NOT_FOUND, load RESOURCE_EXHAUSTED (a full queue, memory
/// busy) or UNAVAILABLE (overloaded past the deadline, not ready, draining, the model stopped
/// or out of memory: go elsewhere), a passed deadline DEADLINE_EXCEEDED.
pub fn code(e: &ApiError) -> Code {
    use crate::fetch::FetchError;
    match e {
        ApiError::Malformed(_)
        | ApiError::UnsupportedMediaType(_)
        | ApiError::Image(_)
        | ApiError::OverBudget { .. }
        | ApiError::InvalidOption(_)
        | ApiError::MultipleImages
        | ApiError::NotAcceptable(_)
        | ApiError::Fetch(FetchError::InvalidUrl(_)) => Code::InvalidArgument,
        ApiError::Fetch(FetchError::Forbidden(_)) => Code::PermissionDenied,
        ApiError::Fetch(_) => Code::FailedPrecondition,
        ApiError::BodyTooLarge { .. } | ApiError::QueueFull | ApiError::MemoryBusy => {
            Code::ResourceExhausted
        }
        ApiError::Unauthorized(_) => Code::Unauthenticated,
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::MethodNotAllowed(_) => Code::Unimplemented,
        ApiError::Overloaded { .. }
        | ApiError::NotReady
        | ApiError::Draining
        | ApiError::OutOfMemory
        | ApiError::ModelStopped => Code::Unavailable,
        ApiError::Timeout(_) | ApiError::Expired | ApiError::BodyTimeout(_) => {
            Code::DeadlineExceeded
        }
        ApiError::Internal(_) => Code::Internal,
    }
}

/// The longest message a refusal carries, in bytes.
const MAX_MESSAGE: usize = 1024;

/// A refusal as a gRPC status: the same message as the REST answer's detail (an internal
/// error's detail stays in the log), and for load the retry hint, in seconds as REST's
/// `Retry-After` and in milliseconds as gRPC's own `grpc-retry-pushback-ms`.
pub fn status(e: &ApiError) -> Status {
    let mut message = match e {
        ApiError::Internal(_) => "internal error".to_string(),
        other => other.to_string(),
    };
    // Messages quote what the client sent (names, shapes): kept short enough for any client's
    // limit on metadata.
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    let mut status = Status::new(code(e), message);
    let retry_s = match e {
        ApiError::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
        ApiError::QueueFull
        | ApiError::NotReady
        | ApiError::MemoryBusy
        | ApiError::Draining
        | ApiError::OutOfMemory => Some(1),
        _ => None,
    };
    if let Some(s) = retry_s {
        let m = status.metadata_mut();
        m.insert("retry-after", MetadataValue::from(s));
        m.insert("grpc-retry-pushback-ms", MetadataValue::from(s * 1000));
    }
    // Stays in the process (tonic sends no source): the call's span names the problem type.
    status.set_source(std::sync::Arc::new(ProblemType(e.parts().1)));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_infer_request;

    #[test]
    fn every_refusal_has_the_code_its_http_status_means() {
        use axum::response::IntoResponse;
        for (e, again) in ApiError::examples().into_iter().zip(ApiError::examples()) {
            let (http, _, _) = e.parts();
            let want: &[Code] = match http.as_u16() {
                400 | 406 | 415 | 422 => &[Code::InvalidArgument, Code::FailedPrecondition],
                401 => &[Code::Unauthenticated],
                403 => &[Code::PermissionDenied],
                404 => &[Code::NotFound],
                405 => &[Code::Unimplemented],
                408 | 504 => &[Code::DeadlineExceeded],
                413 | 429 => &[Code::ResourceExhausted],
                500 => &[Code::Internal],
                503 => &[Code::Unavailable, Code::ResourceExhausted],
                other => panic!("{e:?}: status {other} has no gRPC code here"),
            };
            assert!(want.contains(&code(&e)), "{e:?}: {:?}", code(&e));
            let retry = status(&e)
                .metadata()
                .get("grpc-retry-pushback-ms")
                .is_some();
            let rest = again.into_response().headers().contains_key("retry-after");
            assert_eq!(
                retry, rest,
                "{e:?}: a retry hint in one protocol, not the other"
            );
        }
    }

    fn image_input(shape: Vec<i64>) -> model_infer_request::InferInputTensor {
        model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape,
            ..Default::default()
        }
    }

    fn refusal(req: ModelInferRequest) -> String {
        match request(req) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a bad request was read"),
        }
    }

    #[test]
    fn raw_and_typed_contents_are_read_and_inconsistent_ones_refused() {
        let file = |b: &[u8]| {
            let mut raw = (b.len() as u32).to_le_bytes().to_vec();
            raw.extend_from_slice(b);
            Bytes::from(raw)
        };
        let raw = ModelInferRequest {
            id: "x".into(),
            inputs: vec![image_input(vec![2])],
            raw_input_contents: vec![[file(b"ab"), file(b"c")].concat().into()],
            ..Default::default()
        };
        let (read, contents) = request(raw).expect("read");
        assert_eq!(read.id.as_deref(), Some("x"));
        assert!(matches!(&contents[..], [Contents::Bytes(b)] if b[0] == "ab" && b[1] == "c"));
        let mut typed = image_input(vec![1]);
        typed.contents = Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"png")],
            ..Default::default()
        });
        let (_, contents) = request(ModelInferRequest {
            inputs: vec![typed.clone()],
            ..Default::default()
        })
        .expect("read");
        assert!(matches!(&contents[..], [Contents::Bytes(b)] if b[0] == "png"));

        let both = ModelInferRequest {
            inputs: vec![typed.clone()],
            raw_input_contents: vec![file(b"png")],
            ..Default::default()
        };
        assert!(refusal(both).contains("send one of them"));
        let counts = ModelInferRequest {
            inputs: vec![image_input(vec![1]), image_input(vec![1])],
            raw_input_contents: vec![file(b"png")],
            ..Default::default()
        };
        assert!(refusal(counts).contains("2 inputs"));
        let mut short = typed;
        short.shape = vec![2];
        let e = refusal(ModelInferRequest {
            inputs: vec![short],
            ..Default::default()
        });
        assert!(e.contains("1 elements for shape [2]"), "{e}");
        let e = refusal(ModelInferRequest {
            inputs: vec![image_input(vec![0])],
            raw_input_contents: vec![file(b"png")],
            ..Default::default()
        });
        assert!(e.contains("BYTES elements"), "{e}");
        let e = refusal(ModelInferRequest {
            inputs: vec![image_input(vec![1])],
            ..Default::default()
        });
        assert!(e.contains("no contents"), "{e}");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let e = ApiError::Malformed("é".repeat(2000));
        let m = status(&e).message().to_string();
        assert!(
            m.len() <= MAX_MESSAGE + 3 && m.ends_with("..."),
            "{}",
            m.len()
        );
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_bad_ones_refused() {
        let read = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            client_timeout(&m)
        };
        assert_eq!(read("250m").ok(), Some(Some(Duration::from_millis(250))));
        assert_eq!(read("2S").ok(), Some(Some(Duration::from_secs(2))));
        assert_eq!(read("1H").ok(), Some(Some(Duration::from_secs(3600))));
        assert_eq!(
            read("99999999n").ok(),
            Some(Some(Duration::from_nanos(99_999_999)))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        assert_eq!(client_timeout(&MetadataMap::new()).ok(), Some(None));
    }
}
