//! The libtorch and the precision the real binary runs with: named by `--version`, the
//! start-up log, `/info` and every answer; and a libtorch, device or precision that cannot
//! serve refused at start-up with what was found and what is needed.

use crate::common::server::{Server, client, post_fixture};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradcam-serve"));
    c.env_remove("GRADCAM_WEIGHTS")
        .env_remove("GRADCAM_DEVICE")
        .env_remove("GRADCAM_PRECISION");
    c
}

fn weights() -> PathBuf {
    crate::common::reference_dir().join("weights.safetensors")
}

/// Starts `serve` with `args`, expecting it to stop before serving; its standard error.
fn refused(args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = bin()
        .args(["serve", "--port", "0", "--weights"])
        .arg(weights())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} started: {stderr}");
    stderr
}

/// The torch/lib directory the binary loads by default (its rpath), from `--version`.
fn libtorch_dir() -> PathBuf {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(concat!("gradcam-serve ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("libtorch 2.11.0"), "{text}");
    assert!(text.contains("built for 2.11.0"), "{text}");
    let dir = text
        .split(" from ")
        .nth(1)
        .and_then(|s| s.split(" (built for").next())
        .unwrap_or_else(|| panic!("no directory in {text}"));
    let dir = PathBuf::from(dir);
    assert!(dir.join("libtorch_cpu.so").is_file(), "{text}");
    dir
}

#[test]
fn version_names_the_libtorch_loaded_at_run_time() {
    libtorch_dir();
}

#[test]
fn info_and_answers_say_which_libtorch_and_precision_served() {
    let server = Server::start(&["--precision", "bf16"]);
    let info: Value = client()
        .get(server.url("/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["precision"], "bf16", "{info}");
    let lib = &info["versions"]["libtorch_detail"];
    assert_eq!(lib["built_for"], "2.11.0", "{info}");
    assert!(
        info["versions"]["libtorch"]
            .as_str()
            .unwrap()
            .starts_with("2.11.0"),
        "{info}"
    );
    assert_eq!(
        Path::new(lib["directory"].as_str().unwrap()),
        libtorch_dir(),
        "{info}"
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("\"built_for\":\"2.11.0\"") && log.contains("bf16"),
        "{log}"
    );

    let answer: Value = post_fixture(server.url("/explain?overlay=false"), "chelsea.png")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["precision"], "bf16", "{answer}");
    assert_eq!(answer["explanations"][0]["heatmap"]["width"], 7);
}

#[test]
fn what_cannot_serve_is_refused_at_start_up() {
    let e = refused(&["--device", "cpu", "--precision", "fp16"], &[]);
    assert!(
        e.contains("--precision fp16 needs a CUDA device") && e.contains("bf16"),
        "{e}"
    );
    let e = refused(&["--device", "cuda:99"], &[]);
    assert!(e.contains("cuda:99") && e.contains("CUDA device(s)"), "{e}");
    let e = refused(&["--precision", "fp8"], &[]);
    assert!(e.contains("fp32, bf16, fp16"), "{e}");
}

/// Another libtorch release on the library path (here: this one's libraries under a
/// directory whose torch says it is 2.13.0) is refused before the model loads, naming the
/// version and directory found and the one needed.
#[test]
fn another_libtorch_release_is_refused_with_what_was_found() {
    let real = libtorch_dir();
    let fake = std::env::temp_dir().join(format!("gradcam-other-torch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    let lib = fake.join("site-packages/torch/lib");
    std::fs::create_dir_all(&lib).unwrap();
    // Hard links (the loader reports the path a library was opened by; a symbolic link would
    // resolve to the real directory), where the file system allows; copies otherwise.
    for entry in std::fs::read_dir(&real).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let to = lib.join(p.file_name().unwrap());
            std::fs::hard_link(&p, &to)
                .or_else(|_| std::fs::copy(&p, &to).map(drop))
                .unwrap();
        }
    }
    // The CUDA libraries that libtorch finds relative to itself.
    let nvidia = real.join("../../nvidia");
    if nvidia.is_dir() {
        std::os::unix::fs::symlink(
            nvidia.canonicalize().unwrap(),
            fake.join("site-packages/nvidia"),
        )
        .unwrap();
    }
    std::fs::write(
        fake.join("site-packages/torch/version.py"),
        "__version__ = '2.13.0+cu130'\ncuda: Optional[str] = '13.0'\n",
    )
    .unwrap();
    let e = refused(&["--device", "cpu"], &[("LD_LIBRARY_PATH", &lib)]);
    let _ = std::fs::remove_dir_all(&fake);
    assert!(
        e.contains("libtorch 2.13.0+cu130 was loaded from")
            && e.contains(lib.to_str().unwrap())
            && e.contains("built for libtorch 2.11.0"),
        "{e}"
    );
}
