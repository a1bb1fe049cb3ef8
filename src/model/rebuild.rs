//! The few callables of a `torch.save` pickle that [`super::pickle`] interprets: ordered
//! dicts, tensors rebuilt from storages, parameters; and the persistent ids that name storages.

use super::pickle::{StorageRef, TensorRef, Value};

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Applies one of the callables this reader understands; anything else becomes opaque.
pub(super) fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Ok(Value::Object(callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return Ok(Value::Object(name));
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => return Err(format!("{name} without a storage")),
            };
            let offset = match args.get(1) {
                Some(Value::Int(o)) if *o >= 0 => *o,
                _ => return Err(format!("{name} without a storage offset")),
            };
            let size = args
                .get(2)
                .and_then(ints)
                .ok_or_else(|| format!("{name} without a size"))?;
            let stride = args
                .get(3)
                .and_then(ints)
                .ok_or_else(|| format!("{name} without a stride"))?;
            if size.len() != stride.len() || size.iter().chain(&stride).any(|&d| d < 0) {
                return Err(format!("{name} with size {size:?} and stride {stride:?}"));
            }
            Ok(Value::Tensor(TensorRef {
                storage,
                offset,
                size,
                stride,
            }))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(format!("{name} without a tensor")),
            }
        }
        _ => Ok(Value::Object(name)),
    }
}

/// `torch.save`'s persistent ids: `('storage', torch.FloatStorage, key, location, numel)`.
pub(super) fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(class), Value::Str(key), ..] if tag == "storage" => {
            let dtype = class
                .strip_prefix("torch.")
                .unwrap_or(class)
                .trim_end_matches("Storage")
                .to_string();
            Ok(Value::Storage(StorageRef {
                key: key.clone(),
                dtype,
            }))
        }
        _ => Err("persistent id is not a storage".into()),
    }
}
