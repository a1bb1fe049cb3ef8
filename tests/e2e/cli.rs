//! The `gradcam-serve explain` command and weight-file checks, run as a user would.

use crate::common::{REFERENCE, fixture, reference_dir};
use gradcam_serve::model::{Model, weights};
use std::process::Command;
use tch::Tensor;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gradcam-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn explain_writes_overlay_and_json_and_prints_top5() {
    let out = tempdir("cli");
    let weights = reference_dir().join("weights.pth");
    let output = bin()
        .args([
            "explain",
            "--device",
            "cpu",
            "--top-k",
            "2",
            "--method",
            "gradcam++",
            "--colormap",
            "turbo",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--out")
        .arg(&out)
        .arg(fixture("chelsea.png"))
        .arg(fixture("rocket.jpg"))
        .env_remove("GRADCAM_WEIGHTS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (stem, (w, h)) in [("chelsea", (451, 300)), ("rocket", (640, 427))] {
        let photo = REFERENCE
            .meta
            .photos
            .iter()
            .find(|p| p.name == stem)
            .unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{stem}.json"))).unwrap())
                .unwrap();
        assert_eq!(doc["predictions"][0]["index"], photo.top3[0]);
        assert_eq!(doc["predictions"].as_array().unwrap().len(), 5);
        let ex = doc["explanations"].as_array().unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1]["class_index"], photo.top3[1]);
        assert_eq!(ex[0]["method"], "gradcam++");
        assert_eq!(ex[0]["heatmap"]["data"].as_array().unwrap().len(), 49);
        for (rank, name) in [(0, format!("{stem}.png")), (1, format!("{stem}.1.png"))] {
            assert_eq!(ex[rank]["overlay"], name.as_str());
            let png = image::open(out.join(&name)).unwrap();
            assert_eq!((png.width(), png.height()), (w, h), "{name}");
        }
        let line = format!("{:>3}", photo.top3[0]);
        assert!(
            stdout.contains(&line),
            "top-1 {line} not printed:\n{stdout}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--class` is checked against the loaded model: a class in range is explained, one past the
/// last is refused saying the real range.
#[test]
fn explain_explains_a_chosen_class_and_refuses_one_out_of_range() {
    let out = tempdir("class");
    let weights = reference_dir().join("weights.pth");
    let run = |class: &str| {
        bin()
            .args(["explain", "--device", "cpu", "--class", class, "--weights"])
            .arg(&weights)
            .arg("--out")
            .arg(&out)
            .arg(fixture("chelsea.png"))
            .env_remove("GRADCAM_WEIGHTS")
            .output()
            .unwrap()
    };
    let ok = run("3");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("chelsea.json")).unwrap()).unwrap();
    assert_eq!(doc["explanations"][0]["class_index"], 3);
    let refused = run("1000");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "a redirected log has no colour codes: {stderr:?}"
    );
    assert!(
        stderr.contains("class 1000 is out of range; allowed: 0..=999"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_option_is_refused_with_what_is_allowed() {
    let output = bin()
        .args(["explain", "--method", "scorecam", "x.jpg"])
        .output()
        .unwrap();
    // 1, as every error: 2 means "some pictures skipped".
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("layercam"), "{stderr}");
    for args in [&["explain", "--no-such-flag", "x.jpg"][..], &["explain"]] {
        let output = bin().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
    }
    let small = bin()
        .args(["explain", "--max-side", "5", "x.jpg"])
        .output()
        .unwrap();
    assert_eq!(small.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert!(stderr.contains("allowed: 16 and more"), "{stderr}");
    let help = bin().args(["explain", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn offline_download_error_says_how_to_pass_a_local_file() {
    let out = tempdir("offline");
    let output = bin()
        .args([
            "explain",
            "--device",
            "cpu",
            "--weights",
            "http://127.0.0.1:9/resnet50-11ad3fa6.pth",
            "--cache-dir",
        ])
        .arg(&out)
        .arg(fixture("chelsea.png"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--weights /path/to/resnet50-11ad3fa6.pth"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// Weights named by URL are downloaded once into the cache from a real HTTP origin (loopback),
/// checked against the sha256 prefix in torchvision's file name, and reused afterwards. A file
/// whose hash does not match its name is refused and not left in the cache.
#[test]
fn weights_from_a_url_are_downloaded_once_and_checked_against_their_name() {
    use crate::common::origin::Origin;
    let local = reference_dir().join("weights.pth");
    let sha = weights::sha256_file(&local).unwrap();
    let body = std::fs::read(&local).unwrap();
    let origin = Origin::ok("127.0.0.1", body, Some("application/octet-stream"));
    let cache = tempdir("download");
    let explain = |url: &str, out: &str| {
        bin()
            .args([
                "explain",
                "--device",
                "cpu",
                "--weights",
                url,
                "--cache-dir",
            ])
            .arg(&cache)
            .arg("--out")
            .arg(cache.join(out))
            .arg(fixture("chelsea.png"))
            .env_remove("GRADCAM_WEIGHTS")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .output()
            .unwrap()
    };
    let name = format!("resnet50-{}.pth", &sha[..8]);
    let url = format!("http://{}/{name}", origin.addr);
    for run in ["first", "second"] {
        let output = explain(&url, run);
        assert!(
            output.status.success(),
            "{run} run: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(origin.hits(), 1, "{run} run: downloaded once, then cached");
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cache.join(run).join("chelsea.json")).unwrap())
                .unwrap();
        assert_eq!(
            doc["predictions"][0]["index"],
            REFERENCE
                .meta
                .photos
                .iter()
                .find(|p| p.name == "chelsea")
                .unwrap()
                .top3[0],
            "{run} run"
        );
    }
    let cached = cache.join("weights").join(&name);
    assert_eq!(weights::sha256_file(&cached).unwrap(), sha);

    let wrong = format!("http://{}/resnet50-00000000.pth", origin.addr);
    let output = explain(&wrong, "wrong");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&sha) && stderr.contains("does not start with 00000000"),
        "{stderr}"
    );
    assert_eq!(origin.hits(), 2);
    let left: Vec<_> = std::fs::read_dir(cache.join("weights"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![name],
        "nothing of the refused file stays in the cache"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn incomplete_or_renamed_weights_are_refused_by_name() {
    let dir = tempdir("layout");
    let mut tensors =
        Tensor::read_safetensors(reference_dir().join("weights.safetensors")).unwrap();
    tensors.retain(|(n, _)| n != "layer2.1.bn2.running_var");
    for (n, _) in tensors.iter_mut() {
        if n == "fc.bias" {
            *n = "classifier.bias".into();
        }
    }
    let bad = dir.join("bad.safetensors");
    Tensor::write_safetensors(&tensors, &bad).unwrap();
    let w = weights::resolve(bad.to_str().unwrap(), &dir).unwrap();
    let err = Model::load(w, tch::Device::Cpu, &Default::default())
        .err()
        .expect("incomplete weights must not load")
        .to_string();
    assert!(err.contains("layer2.1.bn2.running_var"), "{err}");
    assert!(err.contains("fc.bias"), "{err}");
    assert!(err.contains("unexpected: classifier.bias"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_weights_report_their_sha256() {
    let path = reference_dir().join("weights.safetensors");
    let w = weights::resolve(path.to_str().unwrap(), &std::env::temp_dir()).unwrap();
    assert_eq!(w.sha256.len(), 64);
    assert_eq!(w.sha256, weights::sha256_file(&path).unwrap());
}

/// `serve --help` states every start-up rule, and a broken one stops the server before it loads
/// anything, naming the rule and the values.
#[test]
fn serve_help_lists_the_start_up_rules_and_a_broken_one_stops_the_server() {
    let out = bin().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for rule in gradcam_serve::config::SERVE_RULES {
        assert!(
            help.contains(rule),
            "serve --help does not state {rule:?}:\n{help}"
        );
    }
    let out = bin()
        .args([
            "serve",
            "--port",
            "0",
            "--weights",
            "/nonexistent.safetensors",
        ])
        .args(["--queue-capacity", "4", "--max-batch-size", "8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue capacity must be at least the max batch size")
            && err.contains("queue capacity 4, max batch size 8"),
        "{err}"
    );
}
