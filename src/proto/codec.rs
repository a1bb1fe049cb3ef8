//! The service's codec: prost's, with a look at a `ModelInferRequest`'s wire format before it is
//! decoded. protobuf lets a message claim many elements for few bytes (an empty input tensor is
//! 2 bytes on the wire and hundreds in memory), so a message within the size limit could still
//! decode into gigabytes. The scan counts the repeated fields that can multiply like that and
//! refuses a message with more of them than any request of this model needs, or with contents
//! of a type the model does not take, before anything is allocated for it.

use crate::proto::inference::ModelInferRequest;
use bytes::Buf;
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Most input tensors, requested outputs and raw contents in one request (the model takes one
/// input and has six outputs: more is refused later anyway, with the reason).
const MAX_TENSORS: usize = 16;
/// Most parameters of a request, a tensor or an output.
const MAX_PARAMETERS: usize = 64;
/// Most dimensions of a tensor's shape.
const MAX_DIMENSIONS: usize = 8;
/// Most BYTES elements (images) in typed contents.
const MAX_ELEMENTS: usize = 1024;

/// prost's codec, whose decoder checks a `ModelInferRequest` first.
pub struct Checked<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Checked<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for Checked<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default + 'static> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() != TypeId::of::<ModelInferRequest>() {
            return self.0.decode(buf);
        }
        // The message's own buffer (split off, not copied); its byte fields stay slices of it.
        let bytes = buf.copy_to_bytes(buf.remaining());
        infer_request(&bytes).map_err(Status::invalid_argument)?;
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// One field of a message: its number and, for a length-delimited field, its bytes.
struct Field<'a> {
    number: u64,
    /// The payload of a length-delimited field (wire type 2); `None` for the others.
    bytes: Option<&'a [u8]>,
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("a varint runs past the message's end")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// Every field of a message, in order; an error for a malformed one.
fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        let bytes = match wire {
            0 => {
                varint(b, &mut at)?;
                None
            }
            1 | 5 => {
                at += if wire == 1 { 8 } else { 4 };
                None
            }
            2 => {
                let len = usize::try_from(varint(b, &mut at)?).map_err(|_| "a huge length")?;
                let end = at.checked_add(len).filter(|&e| e <= b.len());
                let end = end.ok_or("a length-delimited field runs past the message's end")?;
                let field = &b[at..end];
                at = end;
                Some(field)
            }
            other => return Err(format!("wire type {other} is not one this protocol uses")),
        };
        if at > b.len() {
            return Err("a field runs past the message's end".into());
        }
        out.push(Field { number, bytes });
        // The list itself is bounded: a field takes at least two bytes of the message, and the
        // counts below stop long before the list grows large.
        if out.len() > 4 * (MAX_TENSORS + MAX_PARAMETERS + MAX_ELEMENTS) {
            return Err("more fields than any request of this model has".into());
        }
    }
    Ok(out)
}

/// Refuses `what` when `fields` holds more than `most` of field `number`.
fn at_most(fields: &[Field<'_>], number: u64, most: usize, what: &str) -> Result<(), String> {
    let n = fields.iter().filter(|f| f.number == number).count();
    if n > most {
        return Err(format!(
            "{n} {what} in one request; allowed: at most {most}"
        ));
    }
    Ok(())
}

/// The payloads of the length-delimited fields numbered `number`.
fn nested<'a>(fields: &'a [Field<'a>], number: u64) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |f| f.number == number)
        .filter_map(|f| f.bytes)
}

/// Checks a `ModelInferRequest`'s counts (field numbers as in proto/inference.proto).
pub fn infer_request(b: &[u8]) -> Result<(), String> {
    let top = fields(b)?;
    at_most(&top, 4, MAX_PARAMETERS, "parameters")?;
    at_most(&top, 5, MAX_TENSORS, "input tensors")?;
    at_most(&top, 6, MAX_TENSORS, "requested outputs")?;
    at_most(&top, 7, MAX_TENSORS, "raw_input_contents entries")?;
    for input in nested(&top, 5) {
        let f = fields(input)?;
        // The shape: packed (one field of varints) or one field per dimension.
        let mut dims = f
            .iter()
            .filter(|x| x.number == 3 && x.bytes.is_none())
            .count();
        for packed in nested(&f, 3) {
            let mut at = 0;
            while at < packed.len() {
                varint(packed, &mut at)?;
                dims += 1;
            }
        }
        if dims > MAX_DIMENSIONS {
            return Err(format!(
                "a shape of {dims} dimensions; allowed: at most {MAX_DIMENSIONS}"
            ));
        }
        at_most(&f, 4, MAX_PARAMETERS, "parameters of an input")?;
        for contents in nested(&f, 5) {
            let c = fields(contents)?;
            if let Some(other) = c.iter().find(|x| ![6, 8].contains(&x.number)) {
                return Err(format!(
                    "contents field {} is not read; allowed: fp32_contents (input) and \
                     bytes_contents (image)",
                    other.number
                ));
            }
            at_most(&c, 8, MAX_ELEMENTS, "bytes_contents elements")?;
        }
    }
    for output in nested(&top, 6) {
        at_most(
            &fields(output)?,
            2,
            MAX_PARAMETERS,
            "parameters of an output",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use crate::proto::inference::{InferTensorContents, ModelInferRequest};
    use prost::Message;

    fn wire(m: &ModelInferRequest) -> Vec<u8> {
        m.encode_to_vec()
    }

    fn image(shape: Vec<i64>) -> InferInputTensor {
        InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape,
            ..Default::default()
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        let m = ModelInferRequest {
            model_name: "resnet50".into(),
            inputs: vec![image(vec![2])],
            outputs: vec![InferRequestedOutputTensor {
                name: "heatmap".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![vec![1, 0, 0, 0, 7].into()],
            ..Default::default()
        };
        assert_eq!(infer_request(&wire(&m)), Ok(()));
        let mut typed = image(vec![1, 3, 224, 224]);
        typed.contents = Some(InferTensorContents {
            fp32_contents: vec![0.5; 12],
            bytes_contents: vec![vec![1, 2].into()],
            ..Default::default()
        });
        let m = ModelInferRequest {
            inputs: vec![typed],
            ..Default::default()
        };
        assert_eq!(infer_request(&wire(&m)), Ok(()));
    }

    #[test]
    fn requests_that_would_decode_into_much_more_than_they_weigh_are_refused() {
        let many_inputs = ModelInferRequest {
            inputs: vec![InferInputTensor::default(); MAX_TENSORS + 1],
            ..Default::default()
        };
        let e = infer_request(&wire(&many_inputs)).unwrap_err();
        assert!(
            e.contains("input tensors") && e.contains("at most 16"),
            "{e}"
        );
        let many_outputs = ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor::default(); 17],
            ..Default::default()
        };
        assert!(infer_request(&wire(&many_outputs)).is_err());
        let many_raw = ModelInferRequest {
            raw_input_contents: vec![Default::default(); 17],
            ..Default::default()
        };
        assert!(infer_request(&wire(&many_raw)).is_err());
        let deep = ModelInferRequest {
            inputs: vec![image(vec![1; 9])],
            ..Default::default()
        };
        let e = infer_request(&wire(&deep)).unwrap_err();
        assert!(e.contains("9 dimensions"), "{e}");
        let mut elements = image(vec![2000]);
        elements.contents = Some(InferTensorContents {
            bytes_contents: vec![Default::default(); 2000],
            ..Default::default()
        });
        let e = infer_request(&wire(&ModelInferRequest {
            inputs: vec![elements],
            ..Default::default()
        }))
        .unwrap_err();
        assert!(e.contains("bytes_contents"), "{e}");
        let mut ints = image(vec![3]);
        ints.contents = Some(InferTensorContents {
            int64_contents: vec![1, 2, 3],
            ..Default::default()
        });
        let e = infer_request(&wire(&ModelInferRequest {
            inputs: vec![ints],
            ..Default::default()
        }))
        .unwrap_err();
        assert!(e.contains("field 3 is not read"), "{e}");
    }

    #[test]
    fn malformed_wire_data_is_refused_not_read_past_its_end() {
        for bad in [
            &[0x2a, 0x05, 0x01][..],
            &[0x08],
            &[0x0f],
            &[
                0x2a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(infer_request(bad).is_err(), "{bad:?}");
        }
    }
}
