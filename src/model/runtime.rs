//! Which libtorch this process really runs on, and whether it can serve.
//!
//! The binary is built against one libtorch ([`BUILT_FOR`]); at run time the dynamic loader
//! may find another (an rpath pointing elsewhere, `LD_LIBRARY_PATH`, a container's copy). The
//! C++ API between libtorch releases is not stable, so another release is refused at start-up
//! with what was found and what is needed, instead of failing deep inside the first request.
//! The library's directory comes from the dynamic loader's list of loaded objects; its version
//! from the `version.py` of the Python wheel it belongs to, or the `build-version` file of a
//! standalone libtorch archive.

use crate::backend::{LibtorchInfo, Precision};
use std::path::{Path, PathBuf};
use tch::Device;

/// The libtorch release this build links (tch 0.24's; torch-sys refuses to build against
/// another).
pub const BUILT_FOR: &str = "2.11.0";

/// The libtorch loaded into this process (found once; it cannot change while the process runs).
pub fn detect() -> LibtorchInfo {
    static FOUND: std::sync::OnceLock<LibtorchInfo> = std::sync::OnceLock::new();
    FOUND.get_or_init(find).clone()
}

fn find() -> LibtorchInfo {
    let loaded = loaded_objects();
    let directory = library_dir(loaded.iter().map(String::as_str));
    let (version, cuda) = directory
        .as_deref()
        .map(read_version)
        .unwrap_or((None, None));
    LibtorchInfo {
        version: version.unwrap_or_else(|| "unknown".into()),
        directory: directory.map_or_else(|| "unknown".into(), |d| d.display().to_string()),
        built_for: BUILT_FOR.into(),
        cuda,
    }
}

/// The path of every shared object loaded into this process, as the loader opened it.
fn loaded_objects() -> Vec<String> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid entry; `data` is the Vec handed in below, which
        // outlives the iteration, and nothing else touches it meanwhile.
        unsafe {
            let names = &mut *data.cast::<Vec<String>>();
            let name = (*info).dlpi_name;
            if !name.is_null() {
                let name = std::ffi::CStr::from_ptr(name).to_string_lossy();
                if !name.is_empty() {
                    names.push(name.into_owned());
                }
            }
        }
        0
    }
    let mut names: Vec<String> = Vec::new();
    // SAFETY: `each` only reads the entries and appends to `names`.
    unsafe {
        libc::dl_iterate_phdr(Some(each), (&raw mut names).cast());
    }
    names
}

/// The directory of the loaded `libtorch_cpu.so`.
fn library_dir<'a>(mut loaded: impl Iterator<Item = &'a str>) -> Option<PathBuf> {
    loaded
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// The version (and CUDA version) of the libtorch in `dir`: a wheel's `torch/lib` has
/// `../version.py`; a standalone archive's `libtorch/lib` has `../build-version`.
fn read_version(dir: &Path) -> (Option<String>, Option<String>) {
    let parent = dir.parent().unwrap_or(dir);
    if let Ok(text) = std::fs::read_to_string(parent.join("version.py")) {
        return parse_version_py(&text);
    }
    if let Ok(text) = std::fs::read_to_string(parent.join("build-version")) {
        let v = text.trim().to_string();
        let cuda = v.split_once("+cu").and_then(|(_, tag)| cuda_from_tag(tag));
        return (Some(v), cuda);
    }
    (None, None)
}

/// `130` (from a `+cu130` local version) is CUDA `13.0`.
fn cuda_from_tag(tag: &str) -> Option<String> {
    let split = tag.len().checked_sub(1).filter(|&i| i > 0)?;
    tag.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("{}.{}", &tag[..split], &tag[split..]))
}

/// `__version__ = '2.11.0+cu130'` and `cuda: Optional[str] = '13.0'` from torch's `version.py`.
fn parse_version_py(text: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split('\'').nth(1))
            .map(str::to_string)
    };
    (value("__version__"), value("cuda"))
}

/// Whether `found` (`2.11.0+cu130`) is the release `want` (`2.11.0`), whatever its local tag.
fn same_release(found: &str, want: &str) -> bool {
    found.split('+').next() == Some(want)
}

/// Refuses a libtorch, a device or a precision that cannot serve, with what was found and
/// what is needed.
pub fn check(info: &LibtorchInfo, device: Device, precision: Precision) -> anyhow::Result<()> {
    anyhow::ensure!(
        info.version == "unknown" || same_release(&info.version, BUILT_FOR),
        "libtorch {} was loaded from {}, but this binary was built for libtorch {BUILT_FOR}: \
         point LD_LIBRARY_PATH at the lib directory of torch=={BUILT_FOR} (scripts/setup.sh \
         installs it) or rebuild against the libtorch you have",
        info.version,
        info.directory
    );
    if info.version == "unknown" {
        tracing::warn!(
            directory = %info.directory,
            built_for = BUILT_FOR,
            "the libtorch version could not be read (no version.py or build-version beside it)"
        );
    }
    if let Device::Cuda(n) = device {
        anyhow::ensure!(
            info.cuda.is_some() || tch::utils::has_cuda(),
            "device cuda:{n} requested, but libtorch {} from {} is a CPU-only build: use a \
             CUDA build of torch=={BUILT_FOR} or --device cpu",
            info.version,
            info.directory
        );
        let count = tch::Cuda::device_count();
        anyhow::ensure!(
            (n as i64) < count,
            "device cuda:{n} requested, but libtorch {} (CUDA {}) sees {count} CUDA device(s): \
             check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use --device cpu",
            info.version,
            info.cuda.as_deref().unwrap_or("?")
        );
    }
    anyhow::ensure!(
        !(device == Device::Cpu && precision == Precision::Fp16),
        "--precision fp16 needs a CUDA device: on the CPU libtorch runs half-precision \
         convolutions far slower than fp32; use --precision bf16 (or fp32) on the CPU"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_directory_is_libtorch_cpus() {
        let loaded = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/opt/venv/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so",
        ];
        assert_eq!(
            library_dir(loaded.into_iter()).unwrap(),
            Path::new("/opt/venv/lib/python3.12/site-packages/torch/lib")
        );
        assert_eq!(library_dir(["/lib/libm.so.6"].into_iter()), None);
        assert!(
            loaded_objects()
                .iter()
                .any(|p| p.ends_with("/libtorch_cpu.so")),
            "{:?}",
            loaded_objects()
        );
    }

    #[test]
    fn versions_are_read_from_the_wheel() {
        let text = "__all__ = ['__version__']\n__version__ = '2.11.0+cu130'\ndebug = False\n\
                    cuda: Optional[str] = '13.0'\ngit_version = 'abc'\n";
        assert_eq!(
            parse_version_py(text),
            (Some("2.11.0+cu130".into()), Some("13.0".into()))
        );
        assert_eq!(cuda_from_tag("130").as_deref(), Some("13.0"));
        assert_eq!(cuda_from_tag("128").as_deref(), Some("12.8"));
        assert_eq!(cuda_from_tag("x"), None);
        let cpu = "__version__ = '2.11.0+cpu'\ncuda: Optional[str] = None\n";
        assert_eq!(parse_version_py(cpu), (Some("2.11.0+cpu".into()), None));
    }

    #[test]
    fn another_release_is_refused_with_what_was_found_and_what_is_needed() {
        assert!(same_release("2.11.0+cu130", "2.11.0"));
        assert!(same_release("2.11.0", "2.11.0"));
        assert!(!same_release("2.13.0+cu130", "2.11.0"));
        assert!(!same_release("2.11.1", "2.11.0"));
        let info = LibtorchInfo {
            version: "2.13.0+cu130".into(),
            directory: "/somewhere/torch/lib".into(),
            built_for: BUILT_FOR.into(),
            cuda: Some("13.0".into()),
        };
        let e = check(&info, Device::Cpu, Precision::Fp32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2.13.0+cu130")
                && e.contains("/somewhere/torch/lib")
                && e.contains(BUILT_FOR),
            "{e}"
        );
    }

    #[test]
    fn the_running_libtorch_is_the_one_built_for_and_fp16_on_the_cpu_is_refused() {
        let info = detect();
        assert!(same_release(&info.version, BUILT_FOR), "{info:?}");
        assert!(info.directory.ends_with("lib"), "{info:?}");
        check(&info, Device::Cpu, Precision::Bf16).unwrap();
        let e = check(&info, Device::Cpu, Precision::Fp16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16"), "{e}");
    }
}
