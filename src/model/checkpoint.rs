//! Finding the weights in a checkpoint: the state dict at the top level or under the key
//! training code keeps it in, and the prefix its names carry.

use super::pickle::{TensorRef, Value};
use super::weights::{Format, WeightsError, first_line, sniff};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use tch::Tensor;

/// The tensors of a checkpoint's state dict, on the CPU, by name (prefix removed), and where
/// they were found.
pub struct StateDict {
    pub tensors: HashMap<String, Tensor>,
    /// `safetensors` or `PyTorch zip`.
    pub format: &'static str,
    /// Where in the checkpoint: `top level`, or the key the state dict was found under.
    pub location: String,
    /// The prefix removed from every name (`module.`, `model.`, ...), possibly empty.
    pub prefix: String,
}

/// Keys under which training code keeps the model's weights, in the order they are tried.
const STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// Reads the state dict of a weights file: a bare state dict, or one held under `state_dict`
/// or `model` (other entries, such as the epoch and the optimiser's state, are ignored), in a
/// `.safetensors` file or a `torch.save` archive (`.pth`, `.pt`, `.ckpt`; told apart by
/// content). Names lose `prefix` when it is given, or the one prefix in front of a whole
/// ResNet (`module.` from DataParallel, `model.` from Lightning) when there is exactly one.
pub fn read_state_dict(path: &Path, prefix: Option<&str>) -> Result<StateDict, WeightsError> {
    let read = |format: &'static str, reason: String| WeightsError::Read {
        path: path.to_path_buf(),
        format,
        reason,
    };
    let (format, location, tensors) = match sniff(path)? {
        Format::SafeTensors => {
            let t = Tensor::read_safetensors(path)
                .map_err(|e| read("safetensors", first_line(&e.to_string())))?;
            ("safetensors", "top level".to_string(), t)
        }
        Format::TorchZip => {
            let format = "PyTorch zip";
            let file = File::open(path).map_err(|source| WeightsError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let mut archive = super::archive::Archive::new(std::io::BufReader::new(file))
                .map_err(|e| read(format, e))?;
            let root = archive.root().map_err(|e| read(format, e))?;
            let (location, entries) =
                find_state_dict(&root).map_err(|found| WeightsError::NoStateDict {
                    path: path.to_path_buf(),
                    found,
                })?;
            let mut storages = HashMap::new();
            let mut tensors = Vec::with_capacity(entries.len());
            for (name, t) in entries {
                let tensor = archive
                    .tensor(t, &mut storages)
                    .map_err(|e| read(format, format!("{name}: {e}")))?;
                tensors.push((name.to_string(), tensor));
            }
            (format, location, tensors)
        }
    };
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let prefix = match prefix {
        Some(p) => {
            if !names.iter().any(|n| n.starts_with(p)) {
                return Err(WeightsError::Prefix {
                    path: path.to_path_buf(),
                    why: format!(
                        "no tensor name starts with {p:?}; names: {}",
                        sample(&names)
                    ),
                });
            }
            p.to_string()
        }
        None => detect_prefix(&names).map_err(|why| WeightsError::Prefix {
            path: path.to_path_buf(),
            why,
        })?,
    };
    let tensors = tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix.as_str()).map(|s| (s.to_string(), t)))
        .collect();
    Ok(StateDict {
        tensors,
        format,
        location,
        prefix,
    })
}

/// Where a state dict was found, and its tensors by name.
type Found<'a> = (String, Vec<(&'a str, &'a TensorRef)>);

/// The state dict inside a checkpoint's pickle, or a description of what is there instead.
fn find_state_dict(root: &Value) -> Result<Found<'_>, String> {
    fn tensors(v: &Value) -> Option<Vec<(&str, &TensorRef)>> {
        let Value::Dict(entries) = v else {
            return None;
        };
        let out: Option<Vec<_>> = entries
            .iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => Some((k.as_str(), t)),
                _ => None,
            })
            .collect();
        out.filter(|o| !o.is_empty())
    }
    if let Some(t) = tensors(root) {
        return Ok(("top level".into(), t));
    }
    if let Value::Dict(entries) = root {
        for key in STATE_DICT_KEYS {
            let found = entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .and_then(|(_, v)| tensors(v));
            if let Some(t) = found {
                return Ok((key.to_string(), t));
            }
        }
        let keys: Vec<String> = entries
            .iter()
            .take(12)
            .map(|(k, v)| match k.as_str() {
                Some(k) => format!("{k} ({})", v.kind()),
                None => k.kind(),
            })
            .collect();
        return Err(format!(
            "a dict whose entries are {}{}, with no state dict (a dict of tensors) at the top \
             level or under {}",
            keys.join(", "),
            if entries.len() > 12 { ", ..." } else { "" },
            STATE_DICT_KEYS.join(", ")
        ));
    }
    Err(match root {
        Value::Object(class) => format!(
            "a pickled {class} object (a whole model, saved with torch.save(model)); save \
             model.state_dict() instead"
        ),
        other => format!("a {}", other.kind()),
    })
}

/// The prefix in front of a whole ResNet's names: the `P` for which `P conv1.weight`,
/// `P bn1.weight` and `P fc.weight` all exist. An error when there are several.
fn detect_prefix(names: &[&str]) -> Result<String, String> {
    let set: std::collections::HashSet<&str> = names.iter().copied().collect();
    let mut found: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("conv1.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .filter(|p| set.contains(format!("{p}bn1.weight").as_str()))
        .filter(|p| set.contains(format!("{p}fc.weight").as_str()))
        .collect();
    found.sort_unstable();
    match found.as_slice() {
        [] => Ok(String::new()),
        [one] => Ok(one.to_string()),
        several => Err(format!(
            "it holds {} networks (names starting with {}); choose one with --weights-prefix",
            several.len(),
            several
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A few names, for messages.
pub fn sample(names: &[&str]) -> String {
    let mut s = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s
}
