//! A `torch.save` archive: one directory holding `data.pkl`, `byteorder` and one entry per
//! storage, `data/<key>`. The pickle says which tensors view which storages; the state dict is
//! found at its top level or under the key training code keeps it in.

use super::pickle::unpickle;
use super::value::{Heap, Id, Value};
use super::view::{self, Dtype};
use super::zip::{self, Entry};
use super::{MAX_DIMS, MAX_PICKLE_BYTES, Plan, Planned, Refusal, Source, Span, escape};
use std::collections::HashMap;

/// Keys under which training code keeps the model's weights, in the order they are tried.
pub const STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

pub fn plan<S: Source + ?Sized>(src: &S) -> Result<Plan, Refusal> {
    let entries = zip::entries(src)?;
    if entries.iter().any(|e| e.name.ends_with("/constants.pkl")) {
        return Err(Refusal::Malformed(
            "it is a TorchScript archive (torch.jit.save), which holds code, not a state dict; \
             save model.state_dict() with torch.save instead"
                .into(),
        ));
    }
    let pickles: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1)
        .collect();
    let pkl = match pickles.as_slice() {
        [one] => *one,
        [] => {
            let names: Vec<String> = entries.iter().take(5).map(|e| escape(&e.name)).collect();
            return Err(Refusal::Malformed(format!(
                "a zip archive without data.pkl, so not written by torch.save (entries: {})",
                names.join(", ")
            )));
        }
        several => {
            let names: Vec<String> = several.iter().map(|e| escape(&e.name)).collect();
            return Err(Refusal::Malformed(format!(
                "the zip holds {} archives ({}), which is ambiguous: torch.save writes one",
                several.len(),
                names.join(", ")
            )));
        }
    };
    let prefix = pkl.name.trim_end_matches("data.pkl");
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let big_endian = byteorder(
        src,
        by_name.get(format!("{prefix}byteorder").as_str()).copied(),
    )?;

    if pkl.len > MAX_PICKLE_BYTES {
        return Err(Refusal::Malformed(format!(
            "data.pkl is {} bytes; the limit is {MAX_PICKLE_BYTES}",
            pkl.len
        )));
    }
    let mut data = vec![0u8; pkl.len as usize];
    src.read_at(pkl.offset, &mut data)?;
    if crc32fast::hash(&data) != pkl.crc {
        return Err(Refusal::Malformed(
            "data.pkl fails the archive's CRC-32 check: the file is damaged".into(),
        ));
    }
    let mut heap = Heap::default();
    let root = unpickle(&data, &mut heap).map_err(|e| e.to_string())?;
    drop(data);
    let (location, named) = find_state_dict(&heap, root).map_err(Refusal::NoStateDict)?;

    let mut storages: Vec<Span> = Vec::new();
    let mut by_key: HashMap<u32, usize> = HashMap::new();
    let mut tensors = Vec::with_capacity(named.len());
    for (name, id) in named {
        let shown = escape(&name);
        let fail = |why: String| Refusal::Malformed(format!("tensor {shown}: {why}"));
        let &Value::Tensor {
            storage,
            offset,
            size,
            stride,
        } = heap.get(id)
        else {
            unreachable_kind()?
        };
        let &Value::Storage { key, class } = heap.get(storage) else {
            unreachable_kind()?
        };
        let class = heap.global_name(class).unwrap_or_default();
        let dtype = Dtype::of_storage(&class)
            .ok_or_else(|| fail(format!("unsupported storage type {}", escape(&class))))?;
        let index = match by_key.get(&key) {
            Some(&i) if storages[i].dtype != dtype => {
                return Err(fail(format!(
                    "storage {} is read as two element types",
                    escape(heap.text(key))
                )));
            }
            Some(&i) => i,
            None => {
                let entry_name = format!("{prefix}data/{}", heap.text(key));
                let entry = by_name.get(entry_name.as_str()).ok_or_else(|| {
                    fail(format!(
                        "its storage has no entry {} in the zip",
                        escape(&entry_name)
                    ))
                })?;
                if entry.len % dtype.width() as u64 != 0 {
                    return Err(fail(format!(
                        "storage {} has {} bytes, not a whole number of {}-byte elements",
                        escape(&entry_name),
                        entry.len,
                        dtype.width()
                    )));
                }
                storages.push(Span {
                    name: escape(&entry_name),
                    offset: entry.offset,
                    len: entry.len,
                    dtype,
                    crc: Some(entry.crc),
                    big_endian,
                });
                by_key.insert(key, storages.len() - 1);
                storages.len() - 1
            }
        };
        let size =
            ints(&heap, size).ok_or_else(|| fail("its size is not a tuple of integers".into()))?;
        let stride = ints(&heap, stride)
            .ok_or_else(|| fail("its stride is not a tuple of integers".into()))?;
        view::check(&size, &stride, offset, storages[index].numel()).map_err(fail)?;
        tensors.push(Planned {
            name,
            storage: index,
            size,
            stride,
            offset,
        });
    }
    Ok(Plan {
        format: "PyTorch zip",
        location,
        storages,
        tensors,
    })
}

/// A value that `find_state_dict` already proved to be of another kind.
fn unreachable_kind<T>() -> Result<T, Refusal> {
    Err(Refusal::Malformed(
        "a tensor changed kind: this is a bug".into(),
    ))
}

/// Whether the storages are big-endian, from the `byteorder` entry (little when absent).
fn byteorder<S: Source + ?Sized>(src: &S, entry: Option<&Entry>) -> Result<bool, Refusal> {
    let Some(e) = entry else {
        return Ok(false);
    };
    let mut text = vec![0u8; e.len.min(16) as usize];
    src.read_at(e.offset, &mut text)?;
    match String::from_utf8_lossy(&text).trim() {
        "little" => Ok(false),
        "big" => Ok(true),
        other => Err(Refusal::Malformed(format!(
            "the byteorder entry says {:?}; allowed: little, big",
            escape(other)
        ))),
    }
}

/// A tuple or list of at most [`MAX_DIMS`] integers.
fn ints(heap: &Heap, id: Id) -> Option<Vec<i64>> {
    let (Value::Tuple(items) | Value::List(items)) = heap.get(id) else {
        return None;
    };
    if items.len() > MAX_DIMS {
        // Long enough for view::check to name the count, without copying the rest.
        return Some(vec![1; MAX_DIMS + 1]);
    }
    items
        .iter()
        .map(|&i| match heap.get(i) {
            Value::Int(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Where a state dict was found, and its tensors by name.
type Found = (String, Vec<(String, Id)>);

/// The state dict inside a checkpoint's pickle, or a description of what is there instead.
fn find_state_dict(heap: &Heap, root: Id) -> Result<Found, String> {
    let tensors = |id: Id| -> Option<Vec<(String, Id)>> {
        let Value::Dict(d) = heap.get(id) else {
            return None;
        };
        let out: Option<Vec<_>> = d
            .entries
            .iter()
            .map(|&(k, v)| match (heap.as_str(k), heap.get(v)) {
                (Some(k), Value::Tensor { .. }) => Some((k.to_string(), v)),
                _ => None,
            })
            .collect();
        out.filter(|o| !o.is_empty())
    };
    if let Some(t) = tensors(root) {
        return Ok(("top level".into(), t));
    }
    match heap.get(root) {
        Value::Dict(d) if d.entries.is_empty() => Err("an empty dict".into()),
        Value::Dict(d) => {
            for key in STATE_DICT_KEYS {
                let found = d
                    .entries
                    .iter()
                    .find(|&&(k, _)| heap.as_str(k) == Some(key))
                    .and_then(|&(_, v)| tensors(v));
                if let Some(t) = found {
                    return Ok((key.to_string(), t));
                }
            }
            let keys: Vec<String> = d
                .entries
                .iter()
                .take(12)
                .map(|&(k, v)| match heap.as_str(k) {
                    Some(k) => format!("{} ({})", escape(k), heap.kind(v)),
                    None => heap.kind(k),
                })
                .collect();
            Err(format!(
                "a dict whose entries are {}{}, with no state dict (a dict of tensors) at the \
                 top level or under {}",
                keys.join(", "),
                if d.entries.len() > 12 { ", ..." } else { "" },
                STATE_DICT_KEYS.join(", ")
            ))
        }
        Value::Object { .. } => Err(format!(
            "a pickled {}, not a state dict (a whole model saved with torch.save(model) is \
             one: save model.state_dict() instead)",
            heap.kind(root)
        )),
        _ => Err(format!("a {}", heap.kind(root))),
    }
}
