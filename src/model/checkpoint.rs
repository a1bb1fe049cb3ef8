//! Reading a checkpoint's state dict into tensors: the file's [`format::Plan`] (every size,
//! offset and view already checked), each storage read once, each tensor a view of its
//! storage; then the prefix its names carry.

use super::format::{self, Dtype, Format, Plan, Refusal, Span, escape};
use super::weights::{WeightsError, sniff};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use tch::{Kind, Tensor};

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

/// Reads the state dict of a weights file: a bare state dict, or one held under `state_dict`,
/// `model_state_dict` or `model` (other entries, such as the epoch and the optimiser's state,
/// are ignored), in a `.safetensors` file or a `torch.save` archive (`.pth`, `.pt`, `.ckpt`;
/// told apart by content). Names lose `prefix` when it is given, or the one prefix in front of
/// a whole ResNet (`module.` from DataParallel, `model.` from Lightning) when there is exactly
/// one.
pub fn read_state_dict(path: &Path, prefix: Option<&str>) -> Result<StateDict, WeightsError> {
    let kind = sniff(path)?;
    let format = match kind {
        Format::SafeTensors => "safetensors",
        Format::TorchZip => "PyTorch zip",
    };
    let read = |reason: String| WeightsError::Read {
        path: path.to_path_buf(),
        format,
        reason,
    };
    let file = File::open(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let plan = format::plan(&file, kind).map_err(|r| match r {
        Refusal::NoStateDict(found) => WeightsError::NoStateDict {
            path: path.to_path_buf(),
            found,
        },
        Refusal::Malformed(reason) => read(reason),
    })?;
    let tensors = materialise(&file, &plan).map_err(read)?;
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
        format: plan.format,
        location: plan.location,
        prefix,
    })
}

fn kind_of(d: Dtype) -> Kind {
    match d {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::Bool => Kind::Bool,
    }
}

/// The plan's tensors, in its order: each storage read once (in pieces, into memory of its own
/// size), each tensor a view of it. The plan proved every view in bounds and free of repeated
/// elements, so no view is larger than its storage.
fn materialise(file: &File, plan: &Plan) -> Result<Vec<(String, Tensor)>, String> {
    let mut storages: Vec<Option<Tensor>> = plan.storages.iter().map(|_| None).collect();
    let mut out = Vec::with_capacity(plan.tensors.len());
    for t in &plan.tensors {
        let span = &plan.storages[t.storage];
        let kind = kind_of(span.dtype);
        let torch = |e: tch::TchError| format!("tensor {}: {}", escape(&t.name), first_line(&e));
        if t.size.contains(&0) {
            let empty = Tensor::f_zeros(t.size.as_slice(), (kind, tch::Device::Cpu));
            out.push((t.name.clone(), empty.map_err(torch)?));
            continue;
        }
        let storage = match &mut storages[t.storage] {
            Some(s) => s,
            slot => slot.insert(read_storage(file, span)?),
        };
        let view = storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
            .map_err(torch)?;
        out.push((t.name.clone(), view));
    }
    Ok(out)
}

fn first_line(e: &tch::TchError) -> String {
    super::weights::first_line(&e.to_string())
}

/// One storage as a one-dimensional tensor of its element type, read straight into its memory.
fn read_storage(file: &File, span: &Span) -> Result<Tensor, String> {
    let torch = |e: tch::TchError| format!("{}: {}", span.name, first_line(&e));
    let numel = i64::try_from(span.numel()).map_err(|_| format!("{} is too large", span.name))?;
    let len = usize::try_from(span.len).map_err(|_| format!("{} is too large", span.name))?;
    let storage =
        Tensor::f_empty([numel], (kind_of(span.dtype), tch::Device::Cpu)).map_err(torch)?;
    let ptr = storage.data_ptr().cast::<u8>();
    if len > 0 && ptr.is_null() {
        return Err(format!("{}: libtorch gave no memory", span.name));
    }
    let dst: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // SAFETY: `storage` was just allocated on the CPU as `numel` contiguous elements of
        // `span.dtype`, which is `len` bytes starting at its (non-null) data pointer; nothing
        // else refers to it yet, and `dst` is last used before `storage` is returned.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    };
    format::read_storage(file, span, dst)?;
    Ok(storage)
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
    let mut s = names
        .iter()
        .take(5)
        .map(|n| escape(n))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s
}
