//! A safetensors file: an 8-byte header length, a JSON header naming each tensor's type, shape
//! and byte range, then one buffer. Read by this module rather than a library so that every
//! length and offset is checked, without overflow, against the file before anything is read;
//! the rules are the format's own: ranges in bounds, sized exactly by shape and type, covering
//! the buffer without overlap or holes, and each name once.

use super::view::{self, Dtype};
use super::{MAX_DIMS, MAX_HEADER_BYTES, Plan, Planned, Source, Span, escape};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use std::collections::HashSet;

#[derive(serde::Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's tensors in the order written, every name kept so duplicates can be refused.
struct Header(Vec<(String, Info)>);

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        out.push((name, map.next_value::<Info>()?));
                    }
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(V)
    }
}

pub fn plan<S: Source + ?Sized>(src: &S) -> Result<Plan, String> {
    let size = src.size();
    let mut head = [0u8; 8];
    src.read_at(0, &mut head)?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER_BYTES || n.checked_add(8).is_none_or(|end| end > size) {
        return Err(format!(
            "the safetensors header claims {n} bytes; the file has {size} and the limit is \
             {MAX_HEADER_BYTES}"
        ));
    }
    let mut text = vec![0u8; n as usize];
    src.read_at(8, &mut text)?;
    let Header(infos) = serde_json::from_slice(&text)
        .map_err(|e| format!("the safetensors header is not valid: {e}"))?;
    drop(text);
    let start = 8 + n;
    let buffer = size - start;

    let mut seen = HashSet::new();
    let mut storages = Vec::with_capacity(infos.len());
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, info) in infos {
        let shown = escape(&name);
        if !seen.insert(name.clone()) {
            return Err(format!("the safetensors header names tensor {shown} twice"));
        }
        let fail = |why: String| format!("tensor {shown}: {why}");
        let dtype = Dtype::of_safetensors(&info.dtype).ok_or_else(|| {
            fail(format!(
                "unsupported dtype {}; allowed: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL",
                escape(&info.dtype)
            ))
        })?;
        if info.shape.len() > MAX_DIMS {
            return Err(fail(format!(
                "its shape has more than {MAX_DIMS} dimensions"
            )));
        }
        let shape: Option<Vec<i64>> = info.shape.iter().map(|&d| i64::try_from(d).ok()).collect();
        let bytes = shape
            .as_deref()
            .and_then(view::numel)
            .and_then(|n| u64::try_from(n).ok()?.checked_mul(dtype.width() as u64));
        let (shape, bytes) = match (shape, bytes) {
            (Some(s), Some(b)) => (s, b),
            _ => return Err(fail(format!("its shape {:?} is too large", info.shape))),
        };
        let (begin, end) = info.data_offsets;
        if begin > end || end > buffer {
            return Err(fail(format!(
                "its data_offsets [{begin}, {end}] do not lie in the {buffer}-byte buffer"
            )));
        }
        if end - begin != bytes {
            return Err(fail(format!(
                "its data_offsets [{begin}, {end}] hold {} bytes, but its shape {shape:?} of \
                 {} needs {bytes}",
                end - begin,
                info.dtype
            )));
        }
        let mut stride = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].saturating_mul(shape[i + 1].max(1));
        }
        storages.push(Span {
            name: shown,
            offset: start + begin,
            len: bytes,
            dtype,
            crc: None,
            big_endian: false,
        });
        tensors.push(Planned {
            name,
            storage: storages.len() - 1,
            size: shape,
            stride,
            offset: 0,
        });
    }
    // The ranges, in order, must tile the buffer exactly.
    let mut ranges: Vec<(u64, u64, &str)> = storages
        .iter()
        .map(|s| (s.offset - start, s.offset - start + s.len, s.name.as_str()))
        .collect();
    ranges.sort_unstable();
    let mut reached = 0;
    for &(b, e, name) in &ranges {
        if b < reached {
            return Err(format!("tensor {name} overlaps another in the buffer"));
        }
        if b > reached {
            return Err(format!(
                "the buffer has a hole before tensor {name} (bytes {reached} to {b})"
            ));
        }
        reached = e;
    }
    if reached != buffer {
        return Err(format!(
            "the buffer has {} bytes after its last tensor",
            buffer - reached
        ));
    }
    Ok(Plan {
        format: "safetensors",
        location: "top level".into(),
        storages,
        tensors,
    })
}
