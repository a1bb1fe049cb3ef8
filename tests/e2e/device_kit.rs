//! The device kit, run here on the CPU so that it cannot rot between sessions with a GPU:
//! scripts/device-bundle.sh assembles a kit from this build's binaries, and the kit's
//! gpu-check.sh runs from it with `--device cpu --small` against this machine's PyTorch, as it
//! would run on a GPU machine against that machine's. Every step must finish: parity of the
//! binary's fp32 and bf16 logits and maps against PyTorch, fp16 refused on the CPU, the engine
//! figures next to PyTorch's, and the service under load over HTTP. The performance goals are
//! reported, not asserted (a shared machine's speed proves nothing).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bash(script: &Path, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .output()
        .unwrap();
    let log = format!(
        "{} {args:?}: {}\n{}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    out
}

#[test]
fn the_device_check_runs_on_the_cpu_from_a_kit_of_this_build() {
    let work = std::env::temp_dir().join(format!("gradcam-device-kit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let kit = work.join("kit");
    let report = work.join("report");
    let binaries = Path::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .parent()
        .unwrap();
    assert!(
        binaries.join("gradcam-load").is_file(),
        "gradcam-load is built beside gradcam-serve"
    );
    bash(
        &root().join("scripts/device-bundle.sh"),
        &[
            "--prebuilt",
            binaries.to_str().unwrap(),
            "--kit",
            kit.to_str().unwrap(),
        ],
        &[],
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(kit.join("manifest.json")).unwrap()).unwrap();
    let bytes: u64 = walk(&kit).iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(bytes < 60 << 20, "the kit is {bytes} bytes");
    assert!(
        manifest["binaries"]["gradcam-serve"]["sha256"].is_string(),
        "{manifest}"
    );

    // The kit's own Python is the machine's; here that is the project's environment.
    let venv = std::env::var("GRADCAM_VENV").expect("scripts/test.sh sets GRADCAM_VENV");
    let python = format!("{venv}/bin/python");
    bash(
        &kit.join("gpu-check.sh"),
        &[
            "--device",
            "cpu",
            "--small",
            // The check's clock skips measurements that would overrun its budget; here every
            // one must run, however busy the machine.
            "--budget",
            "900",
            "--out",
            report.to_str().unwrap(),
        ],
        &[("PYTHON", python.as_str())],
    );
    let r: Value =
        serde_json::from_slice(&std::fs::read(report.join("gpu-report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(report.join("gpu-report.md")).unwrap();
    assert_eq!(r["overall"], "PASS", "{md}");
    for step in ["environment", "weights", "parity", "engine", "service"] {
        assert_eq!(r["steps"][step]["status"], "ok", "{step}: {md}");
    }
    let env = &r["steps"]["environment"]["result"];
    assert!(
        env["gradcam_serve_version"]
            .as_str()
            .unwrap()
            .contains("libtorch 2.11.0"),
        "{env}"
    );

    let parity = &r["steps"]["parity"]["result"];
    assert_eq!(parity["passed"], true, "{md}");
    assert_eq!(
        parity["checks"]["fp16_refused_on_cpu"]["passed"], true,
        "{md}"
    );
    let fp32 = parity["binary"]["fp32"]["pictures"].as_object().unwrap();
    assert!(fp32.len() >= 3, "{md}");
    for (name, p) in fp32 {
        assert_eq!(p["top1"], p["ref_top1"], "{name}");
        assert!(p["logit_diff"].as_f64().unwrap() <= 1e-5, "{name}: {p}");
    }
    let bf16 = &parity["binary"]["bf16"];
    assert_eq!(bf16["passed"], true, "{md}");
    assert!(bf16["map_max"].as_f64().unwrap() <= 0.1, "{bf16}");

    let engine = &r["steps"]["engine"]["result"]["precisions"];
    for precision in ["fp32", "bf16"] {
        let results = engine[precision]["engine"]["results"].as_array().unwrap();
        let batches: Vec<u64> = results
            .iter()
            .map(|x| x["batch"].as_u64().unwrap())
            .collect();
        assert_eq!(batches, [1, 8], "{precision}: {md}");
        assert!(
            results
                .iter()
                .all(|x| x["images_per_s"].as_f64().unwrap() > 0.0)
        );
        assert_eq!(engine[precision]["engine"]["precision"], precision);
    }

    let service = &r["steps"]["service"]["result"]["precisions"];
    for precision in ["fp32", "bf16"] {
        let runs = service[precision]["runs"].as_array().unwrap();
        assert!(runs.len() >= 2, "{precision}: {md}");
        for run in runs {
            let load = &run["load"];
            // On a busy machine a run's answers may all come after its short window: they
            // are counted apart, and some must have come.
            let ok = |part: &str| load[part]["200"].as_u64().unwrap_or(0);
            assert!(ok("status") + ok("late") > 0, "{run}");
            assert_eq!(load["transport_errors"], 0, "{run}");
            assert!(run["batch_sizes"]["mean"].as_f64().unwrap() >= 1.0, "{run}");
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}
