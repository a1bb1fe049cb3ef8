//! Tensors of the Open Inference Protocol (v2) over REST: JSON `data` (flat or nested, in
//! row-major order) and the binary tensor data extension: with `Inference-Header-Content-Length`
//! the body is that many bytes of JSON, then each binary tensor's bytes in the order of the
//! tensors that have `binary_data_size` (requests) or `binary_data` (answers). Numbers are
//! little-endian; a BYTES element is its length (4 bytes, little-endian) and then its bytes.

use crate::http::problem::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that says where the JSON of a request or answer ends.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Most elements one input tensor may have (each is at least a float).
const MAX_ELEMENTS: u64 = 1 << 28;

/// An inference request. Other members are ignored: clients add their own (KServe's SDK sends
/// `model_name`).
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Vec<RequestOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// An input tensor's contents.
pub enum Contents {
    Fp32(Vec<f32>),
    /// BYTES elements, each as sent (binary) or base64-decoded (JSON).
    Bytes(Vec<Bytes>),
}

fn malformed(why: impl Into<String>) -> ApiError {
    ApiError::Malformed(why.into())
}

/// The request's JSON and the binary part after it.
pub fn split(headers: &HeaderMap, body: Bytes) -> Result<(InferRequest, Bytes), ApiError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                malformed(format!(
                    "{HEADER_LENGTH} must be the length of the JSON at the start of the body \
                     (at most {} bytes here)",
                    body.len()
                ))
            })?,
    };
    let request = serde_json::from_slice(&body[..json_len])
        .map_err(|e| malformed(format!("the inference request is not valid: {e}")))?;
    Ok((request, body.slice(json_len..)))
}

/// The number of elements of `shape`, which must have only sizes >= 0.
pub fn elements(name: &str, shape: &[i64]) -> Result<usize, ApiError> {
    let mut n: u64 = 1;
    for &d in shape {
        let d = u64::try_from(d)
            .map_err(|_| malformed(format!("input {name}: shape {shape:?} has a negative size")))?;
        n = n.saturating_mul(d);
    }
    if n > MAX_ELEMENTS {
        return Err(malformed(format!(
            "input {name}: shape {shape:?} has more than {MAX_ELEMENTS} elements"
        )));
    }
    Ok(n as usize)
}

/// Each input's contents, from its `data` or from the binary part, which they must use up.
pub fn contents(inputs: &[RequestInput], mut binary: Bytes) -> Result<Vec<Contents>, ApiError> {
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let n = elements(&input.name, &input.shape)?;
        let name = &input.name;
        let binary_size = input.parameters.get("binary_data_size");
        let contents = match (binary_size, &input.data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|&s| s <= binary.len())
                    .ok_or_else(|| {
                        malformed(format!(
                            "input {name}: binary_data_size {size} is not a size within the \
                             {} bytes of binary data left",
                            binary.len()
                        ))
                    })?;
                from_binary(input, n, binary.split_to(size))?
            }
            (None, Some(data)) => from_json(input, n, data)?,
            _ => {
                return Err(malformed(format!(
                    "input {name} needs either \"data\" or the parameter binary_data_size"
                )));
            }
        };
        out.push(contents);
    }
    if !binary.is_empty() {
        return Err(malformed(format!(
            "{} bytes of binary data follow the inputs' own",
            binary.len()
        )));
    }
    Ok(out)
}

/// One input's contents from its raw bytes (little-endian numbers, length-prefixed BYTES).
pub fn from_binary(input: &RequestInput, n: usize, mut raw: Bytes) -> Result<Contents, ApiError> {
    let name = &input.name;
    match input.datatype.as_str() {
        "FP32" if raw.len() == n * 4 => Ok(Contents::Fp32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )),
        "FP32" => Err(malformed(format!(
            "input {name}: {} bytes of FP32 data for {n} elements",
            raw.len()
        ))),
        "BYTES" => {
            // Each element takes at least its 4 bytes of length: the shape alone, which costs the
            // client nothing to claim, does not size anything.
            let mut elements = Vec::with_capacity(n.min(raw.len() / 4));
            while !raw.is_empty() {
                let len = raw
                    .get(..4)
                    .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
                    .filter(|&len| len <= raw.len() - 4)
                    .ok_or_else(|| {
                        malformed(format!(
                            "input {name}: a BYTES element's length runs past its data"
                        ))
                    })?;
                let mut element = raw.split_to(4 + len);
                elements.push(element.split_off(4));
            }
            if elements.len() != n {
                return Err(malformed(format!(
                    "input {name}: {} BYTES elements for shape {:?}",
                    elements.len(),
                    input.shape
                )));
            }
            Ok(Contents::Bytes(elements))
        }
        other => Err(unsupported_type(name, other)),
    }
}

fn unsupported_type(name: &str, datatype: &str) -> ApiError {
    malformed(format!(
        "input {name}: datatype {datatype} is not supported; allowed: BYTES (image), FP32 (input)"
    ))
}

fn from_json(input: &RequestInput, n: usize, data: &Value) -> Result<Contents, ApiError> {
    let name = &input.name;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if flat.len() != n {
        return Err(malformed(format!(
            "input {name}: {} elements of data for shape {:?}",
            flat.len(),
            input.shape
        )));
    }
    match input.datatype.as_str() {
        "FP32" => flat
            .into_iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .map(Contents::Fp32)
            .ok_or_else(|| malformed(format!("input {name}: FP32 data must be numbers"))),
        "BYTES" => flat
            .into_iter()
            .map(|v| {
                let text = v.as_str()?;
                base64_simd::STANDARD
                    .decode_to_vec(text)
                    .ok()
                    .map(Bytes::from)
            })
            .collect::<Option<Vec<Bytes>>>()
            .map(Contents::Bytes)
            .ok_or_else(|| {
                malformed(format!(
                    "input {name}: in JSON, each BYTES element must be a base64 string (an \
                     image file in base64), or send it as binary data"
                ))
            }),
        other => Err(unsupported_type(name, other)),
    }
}

/// Row-major order of nested arrays; anything else is one element.
pub fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// An answer tensor's contents.
pub enum Data {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
    /// BYTES elements that are text: strings in JSON.
    Text(Vec<String>),
    /// BYTES elements that are files: base64 strings in JSON.
    Files(Vec<Vec<u8>>),
}

impl Data {
    pub fn datatype(&self) -> &'static str {
        match self {
            Data::Fp32(_) => "FP32",
            Data::Int64(_) => "INT64",
            Data::Text(_) | Data::Files(_) => "BYTES",
        }
    }

    /// The contents as raw bytes: little-endian numbers, BYTES elements length-prefixed.
    pub fn append_binary(&self, out: &mut Vec<u8>) {
        let element = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        match self {
            Data::Fp32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Data::Int64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Data::Text(v) => v.iter().for_each(|s| element(out, s.as_bytes())),
            Data::Files(v) => v.iter().for_each(|f| element(out, f)),
        }
    }
}

/// JSON `data`: numbers as they are (f32 as f32, the shortest text that reads back the same),
/// text as strings, files in base64.
impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Fp32(v) => v.serialize(s),
            Data::Int64(v) => v.serialize(s),
            Data::Text(v) => v.serialize(s),
            Data::Files(v) => {
                s.collect_seq(v.iter().map(|f| base64_simd::STANDARD.encode_to_string(f)))
            }
        }
    }
}

/// One output of an answer.
pub struct Tensor {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub data: Data,
    /// Sent as binary data rather than in the JSON.
    pub binary: bool,
}

#[derive(Serialize)]
struct OutputHead<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Data>,
}

#[derive(Serialize)]
struct Head<'a> {
    #[serde(flatten)]
    head: Map<String, Value>,
    outputs: Vec<OutputHead<'a>>,
}

/// The answer: `head` (model name, version, id) with the outputs, all in JSON, or, when any
/// output is binary, the JSON with `binary_data_size` in their place and their bytes after it.
pub fn answer(head: Map<String, Value>, outputs: &[Tensor]) -> Result<Response, ApiError> {
    let mut binary = Vec::new();
    let mut heads = Vec::with_capacity(outputs.len());
    for t in outputs {
        let (parameters, data) = if t.binary {
            let before = binary.len();
            t.data.append_binary(&mut binary);
            let size = binary.len() - before;
            (Some(serde_json::json!({ "binary_data_size": size })), None)
        } else {
            (None, Some(&t.data))
        };
        heads.push(OutputHead {
            name: t.name,
            datatype: t.data.datatype(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    let doc = Head {
        head,
        outputs: heads,
    };
    let mut json = serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
    if outputs.iter().all(|t| !t.binary) {
        return Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response());
    }
    let json_len = json.len();
    json.extend_from_slice(&binary);
    let mut res = ([(header::CONTENT_TYPE, "application/octet-stream")], json).into_response();
    res.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: Value) -> RequestInput {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn binary_and_json_inputs_read_the_same() {
        let inputs = [
            input(
                serde_json::json!({"name": "input", "shape": [1, 2], "datatype": "FP32",
                "parameters": {"binary_data_size": 8}}),
            ),
            input(
                serde_json::json!({"name": "image", "shape": [2], "datatype": "BYTES",
                "parameters": {"binary_data_size": 11}}),
            ),
            input(
                serde_json::json!({"name": "input", "shape": [2, 1], "datatype": "FP32",
                "data": [[1.5], [-2]]}),
            ),
            input(
                serde_json::json!({"name": "image", "shape": [1], "datatype": "BYTES",
                "data": ["AAEC"]}),
            ),
        ];
        let mut binary = Vec::new();
        binary.extend_from_slice(&1.5f32.to_le_bytes());
        binary.extend_from_slice(&(-2f32).to_le_bytes());
        binary.extend_from_slice(&3u32.to_le_bytes());
        binary.extend_from_slice(b"abc");
        binary.extend_from_slice(&0u32.to_le_bytes());
        let got = contents(&inputs, Bytes::from(binary)).unwrap();
        let Contents::Fp32(a) = &got[0] else { panic!() };
        let Contents::Fp32(b) = &got[2] else { panic!() };
        assert_eq!(a, b);
        assert_eq!(a, &[1.5, -2.0]);
        let Contents::Bytes(files) = &got[1] else {
            panic!()
        };
        assert_eq!(files, &[Bytes::from_static(b"abc"), Bytes::new()]);
        let Contents::Bytes(files) = &got[3] else {
            panic!()
        };
        assert_eq!(files, &[Bytes::from_static(&[0, 1, 2])]);
    }

    #[test]
    fn a_shape_claims_nothing_the_data_does_not_hold() {
        let huge = serde_json::json!({"name": "image", "shape": [MAX_ELEMENTS], "datatype": "BYTES",
            "parameters": {"binary_data_size": 4}});
        let Err(ApiError::Malformed(message)) =
            contents(&[input(huge)], Bytes::from_static(&[0, 0, 0, 0]))
        else {
            panic!("taken");
        };
        assert!(message.contains("1 BYTES elements for shape"), "{message}");
        let json = serde_json::json!({"name": "input", "shape": [MAX_ELEMENTS], "datatype": "FP32",
            "data": [1.0]});
        assert!(contents(&[input(json)], Bytes::new()).is_err());
    }

    #[test]
    fn inconsistent_tensors_are_refused_with_the_reason() {
        let cases = [
            (
                serde_json::json!({"name": "input", "shape": [3], "datatype": "FP32",
                "data": [1, 2]}),
                "2 elements of data for shape [3]",
            ),
            (
                serde_json::json!({"name": "input", "shape": [-1], "datatype": "FP32",
                "data": [1]}),
                "negative size",
            ),
            (
                serde_json::json!({"name": "input", "shape": [1], "datatype": "INT8",
                "data": [1]}),
                "datatype INT8 is not supported",
            ),
            (
                serde_json::json!({"name": "image", "shape": [1], "datatype": "BYTES",
                "data": ["not base64!"]}),
                "base64",
            ),
            (
                serde_json::json!({"name": "image", "shape": [1], "datatype": "BYTES",
                "parameters": {"binary_data_size": 9}}),
                "within the 4 bytes",
            ),
            (
                serde_json::json!({"name": "image", "shape": [1], "datatype": "BYTES"}),
                "either \"data\"",
            ),
        ];
        for (json, want) in cases {
            let Err(ApiError::Malformed(message)) =
                contents(&[input(json.clone())], Bytes::from_static(&[9, 0, 0, 0]))
            else {
                panic!("{json} was taken");
            };
            assert!(message.contains(want), "{json}: {message}");
        }
    }
}
