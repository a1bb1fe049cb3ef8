//! A `torch.save` zip archive: `data.pkl` (read by [`super::pickle`]) and one entry per storage,
//! turned into tensors on demand, checked against the storage they view.

use super::pickle::{TensorRef, Value, unpickle};
use std::collections::HashMap;
use std::io::{Read, Seek};

/// The bytes of one element of a storage type (`Float`, `Half`, ...), and libtorch's kind.
pub fn element(dtype: &str) -> Option<(usize, tch::Kind)> {
    use tch::Kind::*;
    Some(match dtype {
        "Float" => (4, Float),
        "Double" => (8, Double),
        "Half" => (2, Half),
        "BFloat16" => (2, BFloat16),
        "Long" => (8, Int64),
        "Int" => (4, Int),
        "Short" => (2, Int16),
        "Char" => (1, Int8),
        "Byte" => (1, Uint8),
        "Bool" => (1, Bool),
        _ => return None,
    })
}

/// A `torch.save` zip archive: its pickle, and its storages read on demand.
pub struct Archive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    /// The directory every entry sits in (`archive/` or the file's stem).
    prefix: String,
}

impl<R: Read + Seek> Archive<R> {
    pub fn new(reader: R) -> Result<Self, String> {
        let zip = zip::ZipArchive::new(reader).map_err(|e| format!("not a zip archive: {e}"))?;
        if zip.file_names().any(|n| n.ends_with("/constants.pkl")) {
            return Err(
                "it is a TorchScript archive (torch.jit.save), which holds code, not a \
                        state dict; save model.state_dict() with torch.save instead"
                    .into(),
            );
        }
        let pkl = zip
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string);
        let Some(pkl) = pkl else {
            let names: Vec<&str> = zip.file_names().take(5).collect();
            return Err(format!(
                "a zip archive without data.pkl, so not written by torch.save (entries: {})",
                names.join(", ")
            ));
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        Ok(Self { zip, prefix })
    }

    /// The archive's pickle, as plain values.
    pub fn root(&mut self) -> Result<Value, String> {
        let data = self.entry("data.pkl")?;
        unpickle(&data).map_err(|e| e.to_string())
    }

    fn entry(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let full = format!("{}{name}", self.prefix);
        let mut f = self
            .zip
            .by_name(&full)
            .map_err(|e| format!("entry {full}: {e}"))?;
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out)
            .map_err(|e| format!("entry {full}: {e}"))?;
        Ok(out)
    }

    /// Materialises a tensor on the CPU, in its stored element type.
    pub fn tensor(
        &mut self,
        t: &TensorRef,
        cache: &mut HashMap<String, tch::Tensor>,
    ) -> Result<tch::Tensor, String> {
        let (width, kind) = element(&t.storage.dtype)
            .ok_or_else(|| format!("unsupported storage type {}", t.storage.dtype))?;
        if !cache.contains_key(&t.storage.key) {
            let bytes = self.entry(&format!("data/{}", t.storage.key))?;
            if bytes.len() % width != 0 {
                return Err(format!(
                    "storage {} has {} bytes, not a whole number of {}-byte elements",
                    t.storage.key,
                    bytes.len(),
                    width
                ));
            }
            let n = (bytes.len() / width) as i64;
            let storage =
                tch::Tensor::f_from_data_size(&bytes, &[n], kind).map_err(|e| e.to_string())?;
            cache.insert(t.storage.key.clone(), storage);
        }
        let storage = &cache[&t.storage.key];
        let numel = storage.size()[0];
        // The furthest element the view reaches must lie inside the storage.
        let last: i64 = t.offset
            + t.size
                .iter()
                .zip(&t.stride)
                .map(|(&d, &s)| if d == 0 { 0 } else { (d - 1) * s })
                .sum::<i64>();
        if t.size.contains(&0) {
            return tch::Tensor::f_zeros(t.size.as_slice(), (kind, tch::Device::Cpu))
                .map_err(|e| e.to_string());
        }
        if last >= numel {
            return Err(format!(
                "a tensor of size {:?} reaches element {last} of storage {}, which has {numel}",
                t.size, t.storage.key
            ));
        }
        storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
            .and_then(|v| v.f_contiguous())
            .map_err(|e| e.to_string())
    }
}
