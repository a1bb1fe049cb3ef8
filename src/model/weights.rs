//! Where the weights come from and how they are read.
//!
//! A weights source is a local file or an http(s) URL. URLs are downloaded once into the cache
//! directory, with a progress bar, and checked against the sha256 prefix that torchvision puts
//! in its checkpoint names (`resnet50-11ad3fa6.pth`). The file format is told by content:
//! safetensors (an 8-byte header length, then JSON) or PyTorch's `torch.save` zip archive.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "could not download weights from {url}: {reason}. Without internet access, fetch the \
         file elsewhere and pass it with --weights /path/to/{file} (or GRADCAM_WEIGHTS)"
    )]
    Download {
        url: String,
        file: String,
        reason: String,
    },
    #[error(
        "downloaded weights from {url} have sha256 {actual}, which does not start with {expected}"
    )]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{path}: unrecognised weights format ({found}); expected a .safetensors file or a \
         PyTorch zip archive written by torch.save (.pth, .pt, .ckpt)"
    )]
    UnknownFormat { path: PathBuf, found: String },
    #[error("{path}: could not read {format} weights: {reason}")]
    Read {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path} does not hold {arch} weights in torchvision's layout: {problems}")]
    Layout {
        path: PathBuf,
        arch: String,
        problems: String,
    },
    #[error("{path} does not hold a ResNet: {why}")]
    Architecture { path: PathBuf, why: String },
    #[error("{path} holds no state dict: it is {found}")]
    NoStateDict { path: PathBuf, found: String },
    #[error("{path}: {why}")]
    Prefix { path: PathBuf, why: String },
}

/// The file the weights were read from, with its identity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WeightsFile {
    /// What the user asked for: a path or a URL.
    pub source: String,
    /// The local file (for a URL, the cached download).
    pub path: PathBuf,
    pub sha256: String,
}

/// Turns a weights source into a local file, downloading (once) when it is a URL.
pub fn resolve(source: &str, cache_dir: &Path) -> Result<WeightsFile, WeightsError> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        let path = PathBuf::from(source);
        let sha256 = sha256_file(&path)?;
        return Ok(WeightsFile {
            source: source.to_string(),
            path,
            sha256,
        });
    }
    let file = source
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty())
        .unwrap_or("weights.pth")
        .split(['?', '#'])
        .next()
        .unwrap_or("weights.pth")
        .to_string();
    let expected = torchvision_hash_prefix(&file);
    let path = cache_dir.join("weights").join(&file);
    if path.exists() {
        let sha256 = sha256_file(&path)?;
        if expected
            .as_ref()
            .is_none_or(|e| sha256.starts_with(e.as_str()))
        {
            return Ok(WeightsFile {
                source: source.to_string(),
                path,
                sha256,
            });
        }
        tracing::warn!(path = %path.display(), "cached weights fail their hash check; downloading again");
    }
    let sha256 = download(source, &file, &path)?;
    if let Some(expected) = expected
        && !sha256.starts_with(&expected)
    {
        let _ = std::fs::remove_file(&path);
        return Err(WeightsError::HashMismatch {
            url: source.to_string(),
            expected,
            actual: sha256,
        });
    }
    Ok(WeightsFile {
        source: source.to_string(),
        path,
        sha256,
    })
}

/// torchvision names checkpoints `name-<first 8+ hex digits of sha256>.ext`.
fn torchvision_hash_prefix(file: &str) -> Option<String> {
    let stem = file.split('.').next()?;
    let tail = stem.rsplit('-').next()?;
    (stem.contains('-') && tail.len() >= 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| tail.to_ascii_lowercase())
}

/// Downloads to a temporary file beside `dest`, then renames it into place; returns the sha256.
fn download(url: &str, file: &str, dest: &Path) -> Result<String, WeightsError> {
    let fail = |reason: String| WeightsError::Download {
        url: url.to_string(),
        file: file.to_string(),
        reason,
    };
    let io = |source| WeightsError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest
        .parent()
        .expect("cache path has a parent: this is a bug");
    std::fs::create_dir_all(dir).map_err(io)?;
    tracing::info!(url, dest = %dest.display(), "downloading weights");
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .timeout(std::time::Duration::from_secs(1800))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(e.to_string()))?;
    let bar = indicatif::ProgressBar::new(response.content_length().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .expect("static template: this is a bug")
            .progress_chars("=> "),
    );
    bar.set_message(file.to_string());
    let tmp = dir.join(format!(".{file}.part"));
    let mut out = File::create(&tmp).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(io)?;
    bar.finish_and_clear();
    std::fs::rename(&tmp, dest).map_err(io)?;
    Ok(hex::encode(hasher.finalize()))
}

pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The format of a weights file, told by its first bytes.
pub(super) fn sniff(path: &Path) -> Result<super::format::Format, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 16];
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let n = f.read(&mut head).map_err(io)?;
    super::format::sniff(&head[..n], len).ok_or_else(|| WeightsError::UnknownFormat {
        path: path.to_path_buf(),
        found: describe_start(&head[..n]),
    })
}

/// What a file of an unknown format starts with, for the message.
fn describe_start(head: &[u8]) -> String {
    if head.is_empty() {
        return "the file is empty".into();
    }
    // torch.save before PyTorch 1.6 wrote a bare pickle: protocol 2, then a magic number.
    if head.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return "a torch.save file from PyTorch before 1.6; load it and save it again with a \
                newer PyTorch"
            .into();
    }
    if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return format!(
            "it starts with the text {:?}",
            String::from_utf8_lossy(head)
        );
    }
    format!("it starts with the bytes {}", hex::encode(head))
}

/// libtorch errors carry a C++ backtrace after the first line; users need only the first.
pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// Checks a state dict against the expected names and shapes; the error names every missing,
/// unexpected and mis-shaped tensor (up to a limit) so a wrong file is easy to diagnose.
pub fn check_layout(
    path: &Path,
    arch: &str,
    tensors: &HashMap<String, Tensor>,
    expected: &[(String, Vec<i64>)],
    ignorable: impl Fn(&str) -> bool,
) -> Result<(), WeightsError> {
    const SHOW: usize = 8;
    let want: HashMap<&str, &[i64]> = expected
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    // In the network's order, so that the first names say where the layouts part.
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !tensors.contains_key(*n))
        .collect();
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !want.contains_key(n) && !ignorable(n))
        .collect();
    let mut misshaped: Vec<String> = Vec::new();
    let mut not_float: Vec<&str> = Vec::new();
    for (name, t) in tensors {
        if let Some(shape) = want.get(name.as_str()) {
            if t.size() != *shape {
                misshaped.push(format!("{name} is {:?}, expected {:?}", t.size(), shape));
            } else if !t.is_floating_point() {
                not_float.push(name);
            }
        }
    }
    unexpected.sort_unstable();
    misshaped.sort_unstable();
    not_float.sort_unstable();
    let list = |what: &str, items: Vec<String>| -> Option<String> {
        if items.is_empty() {
            return None;
        }
        let more = items.len().saturating_sub(SHOW);
        let mut s = format!(
            "{} {what}: {}",
            items.len(),
            items.into_iter().take(SHOW).collect::<Vec<_>>().join(", ")
        );
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        Some(s)
    };
    let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
    let problems: Vec<String> = [
        list("missing", owned(missing)),
        list(
            "unexpected",
            unexpected.into_iter().map(super::format::escape).collect(),
        ),
        list("mis-shaped", misshaped),
        list("not floating point", owned(not_float)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(WeightsError::Layout {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            problems: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_names_carry_a_hash_prefix() {
        assert_eq!(
            torchvision_hash_prefix("resnet50-11ad3fa6.pth").as_deref(),
            Some("11ad3fa6")
        );
        assert_eq!(
            torchvision_hash_prefix("resnet50-0676ba61.pth").as_deref(),
            Some("0676ba61")
        );
        assert_eq!(torchvision_hash_prefix("weights.safetensors"), None);
        assert_eq!(torchvision_hash_prefix("my-model.pth"), None);
    }

    #[test]
    fn unknown_format_is_refused_by_content() {
        let dir = std::env::temp_dir().join(format!("gradcam-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("looks-like.safetensors");
        std::fs::write(&p, b"definitely not weights").unwrap();
        assert!(matches!(
            super::super::checkpoint::read_state_dict(&p, None),
            Err(WeightsError::UnknownFormat { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn download_failure_says_how_to_pass_a_local_file() {
        // Port 9 on loopback refuses connections: the message must point at --weights.
        let dir = std::env::temp_dir().join(format!("gradcam-dl-{}", std::process::id()));
        let err = resolve("http://127.0.0.1:9/resnet50-11ad3fa6.pth", &dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--weights /path/to/resnet50-11ad3fa6.pth"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn layout_errors_name_the_tensors() {
        let tensors: HashMap<String, Tensor> = [
            (
                "a".to_string(),
                Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)),
            ),
            (
                "c".to_string(),
                Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)),
            ),
            (
                "c.num_batches_tracked".to_string(),
                Tensor::zeros([1], (tch::Kind::Int64, tch::Device::Cpu)),
            ),
        ]
        .into_iter()
        .collect();
        let expected = vec![("a".to_string(), vec![3, 2]), ("b".to_string(), vec![4])];
        let err = check_layout(Path::new("w"), "resnet50", &tensors, &expected, |n| {
            n.ends_with("num_batches_tracked")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("1 missing: b"), "{err}");
        assert!(err.contains("1 unexpected: c"), "{err}");
        assert!(err.contains("a is [2, 3], expected [3, 2]"), "{err}");
    }
}
