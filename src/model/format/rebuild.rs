//! The few callables of a `torch.save` pickle that [`super::pickle`] interprets: ordered
//! dicts, tensors rebuilt from storages, parameters; and the persistent ids that name storages.
//! Everything else a pickle calls becomes an opaque object; nothing is ever called.

use super::value::{Heap, Id, Value};

/// Applies `callable` to `args`: the value made, or an opaque object.
pub(super) fn reduce(heap: &mut Heap, callable: Id, args: Id) -> Result<Id, String> {
    let Some(name) = heap.global_name(callable) else {
        return heap.add(Value::Object { class: callable });
    };
    let Value::Tuple(items) = heap.get(args) else {
        return heap.add(Value::Object { class: callable });
    };
    let arg = |i: usize| items.get(i).map(|&id| heap.get(id));
    match name.as_str() {
        "collections.OrderedDict" => heap.dict(Vec::new()),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let storage = match (items.first(), arg(0)) {
                (Some(&id), Some(Value::Storage { .. })) => id,
                _ => return Err(format!("{name} without a storage")),
            };
            let offset = match arg(1) {
                Some(&Value::Int(o)) => o,
                _ => return Err(format!("{name} without a storage offset that fits 64 bits")),
            };
            let (size, stride) = match (items.get(2), items.get(3)) {
                (Some(&size), Some(&stride)) => (size, stride),
                _ => return Err(format!("{name} without a size and a stride")),
            };
            heap.add(Value::Tensor {
                storage,
                offset,
                size,
                stride,
            })
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match (items.first(), arg(0)) {
                // The parameter is its tensor, shared.
                (Some(&id), Some(Value::Tensor { .. })) => Ok(id),
                _ => Err(format!("{name} without a tensor")),
            }
        }
        _ => heap.add(Value::Object { class: callable }),
    }
}

/// `torch.save`'s persistent ids: `('storage', torch.FloatStorage, key, location, numel)`.
pub(super) fn persistent(heap: &Heap, pid: Id) -> Result<Value, String> {
    let Value::Tuple(items) = heap.get(pid) else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.as_slice() {
        [tag, class, key, ..] if heap.as_str(*tag) == Some("storage") => {
            match (heap.get(*class), heap.get(*key)) {
                (Value::Global { .. }, &Value::Str(key)) => {
                    Ok(Value::Storage { key, class: *class })
                }
                _ => Err("a storage id without its type and key".into()),
            }
        }
        _ => Err("a persistent id that is not a storage".into()),
    }
}
