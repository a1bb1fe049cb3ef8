//! The container image, proven without a Docker engine (none runs where this project is built,
//! and base images cannot be pulled) and without root.
//!
//! `scripts/runtime_image.py` assembles the Dockerfile's runtime stage from the Dockerfile
//! itself: a Debian root made by debootstrap with the stage's RUN lines applied (made once by
//! scripts/setup.sh, as root, and cached), under a layer with each COPY (libtorch's libraries
//! from the cache, this test's binary with its rpath set to what the build stage's would be).
//! These tests then run it as rootless `docker run` would (`LAUNCH` in tests/common/image.rs):
//! user, mount and network namespaces of its own (`unshare`), the layers joined by a read-only
//! overlay (as Kubernetes' readOnlyRootFilesystem makes the root) with a fresh volume on each
//! VOLUME and the test weights mounted read-only, pivoted into as the image's USER, only the
//! image's environment, ENTRYPOINT + CMD. Commands "inside the container" (the HEALTHCHECK,
//! curl) join those namespaces, as `docker exec` does (scripts/container_exec.py). A network
//! namespace of its own lets the server bind the image's port 8080 exactly as configured,
//! beside other tests.
//!
//! Needs unprivileged user namespaces (Linux 5.11 or later for the overlay in one), which
//! Debian and most distributions allow; where the host forbids them the test says how to allow
//! them. Root may run it too, as CI does.

#[path = "../common/image.rs"]
mod image;

use crate::common::{REFERENCE, fixture, reference_dir};
use image::{Container, Image, seconds, text};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_runtime_stage_has_its_libraries_its_user_and_nothing_else_writable() {
    let image = Image::assemble("static");

    // The layers, largest first: what the image weighs and where (printed with --no-capture).
    let mut layers: Vec<(u64, String)> = image.spec["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["bytes"].as_u64().unwrap(),
                l["layer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let total: u64 = layers.iter().map(|l| l.0).sum();
    layers.sort_by_key(|l| std::cmp::Reverse(l.0));
    eprintln!("runtime image, {:.0} MB uncompressed:", total as f64 / 1e6);
    for (bytes, layer) in &layers {
        eprintln!(
            "  {:>7.1} MB  {}",
            *bytes as f64 / 1e6,
            &layer[..layer.len().min(110)]
        );
    }

    // The build stage's Debian release is the runtime's: the binary needs its glibc.
    let build_suite = image
        .str("build_from")
        .rsplit('-')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        build_suite,
        image.str("suite"),
        "build and runtime stages differ"
    );

    // Not root, and not a user that could become root.
    let uid = image.spec["uid"].as_u64().unwrap();
    assert_ne!(uid, 0, "the image runs as root");
    assert_ne!(
        image.spec["gid"].as_u64().unwrap(),
        0,
        "the image runs in group root"
    );

    // deploy/k8s runs the pods as this user and group, on this port, with a volume here.
    let rendered = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/k8s_manifests.py"
        ))
        .args([
            "render",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/base"),
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    let resources: Value = serde_json::from_slice(&rendered.stdout).unwrap();
    let deployment = resources
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "Deployment")
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], image.spec["uid"]);
    assert_eq!(pod["securityContext"]["runAsGroup"], image.spec["gid"]);
    let container = &pod["containers"][0];
    assert_eq!(
        container["ports"][0]["containerPort"].to_string(),
        image.strings("expose")[0].trim_end_matches("/tcp")
    );
    for mount in container["volumeMounts"].as_array().unwrap() {
        let path = mount["mountPath"].as_str().unwrap().to_string();
        assert!(
            image.strings("volumes").contains(&path),
            "the pod mounts {path}, which is no VOLUME of the image (and so not writable)"
        );
    }

    // The binary's rpath names a directory the Dockerfile copies libtorch to.
    let binary = image.entrypoint_path();
    let rpath = image.str("binary_rpath").to_string();
    assert!(
        image.strings("copies").contains(&rpath),
        "the binary's rpath {rpath} is not where the Dockerfile copies libtorch: {:?}",
        image.strings("copies")
    );
    let elf = Command::new("readelf")
        .arg("-d")
        .arg(image.host_path(&binary).unwrap())
        .output()
        .unwrap();
    assert!(
        text(&elf.stdout).contains(&format!("[{rpath}]")),
        "the image's binary does not carry the rpath {rpath}"
    );

    // ldd, in the image as its user, finds every library the binary needs, libtorch's in the
    // copied directory.
    let ldd = image.run(&["ldd", &binary]);
    let found = text(&ldd.stdout);
    assert!(ldd.status.success(), "ldd failed: {}", text(&ldd.stderr));
    let missing: Vec<_> = found.lines().filter(|l| l.contains("not found")).collect();
    assert!(
        missing.is_empty(),
        "libraries not found in the image: {missing:?}"
    );
    for lib in [
        "libtorch_cpu.so",
        "libc10.so",
        "libtorch_cuda.so",
        "libcudart",
    ] {
        let line = found
            .lines()
            .find(|l| l.trim_start().starts_with(lib))
            .unwrap_or_else(|| panic!("ldd does not list {lib}:\n{found}"));
        assert!(
            line.contains(&format!(
                "=> {}/",
                rpath.rsplit_once("/torch/lib").unwrap().0
            )),
            "{lib} does not come from the copied libraries: {line}"
        );
    }

    // The binary tells, in the image, which libtorch it loaded: the copied one, of the release
    // it was built for (from the copied version.py).
    let version = image.run(&["gradcam-serve", "--version"]);
    let version = text(&version.stdout);
    assert!(
        version.contains("libtorch 2.11.0") && version.contains("built for 2.11.0"),
        "{version}"
    );

    // Nothing the user may write, except the volumes: judged by runtime_image.py from the
    // owners and modes the image has (the base's as root made it, a COPY's root's), by the
    // kernel's rules, since without root this machine cannot make files another user owns.
    let volumes = image.strings("volumes");
    let writable = image.strings("writable");
    let outside: Vec<&String> = writable
        .iter()
        .filter(|p| {
            !volumes
                .iter()
                .any(|v| *p == v || p.starts_with(&format!("{v}/")))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "writable by {} outside the volumes {volumes:?}: {outside:?}",
        image.str("user")
    );
    for v in &volumes {
        assert!(
            writable.contains(v),
            "the volume {v} is not writable by {}",
            image.str("user")
        );
    }
}

#[test]
fn the_entrypoint_serves_as_its_user_is_healthy_and_drains_on_its_stop_signal() {
    let image = Image::assemble("run");
    assert_eq!(image.str("workdir"), "/", "the launcher starts in /");

    // A fresh named volume for each VOLUME: Docker fills it from the image, owner included.
    let mut volumes = Vec::new();
    // Here the copy is the caller's, whom the launcher makes the image's user.
    for (i, v) in image.strings("volumes").iter().enumerate() {
        let host = image.dir.join(format!("volume{i}"));
        assert!(
            Command::new("cp")
                .args(["-r", "--preserve=mode,timestamps"])
                .arg(image.host_path(v).unwrap())
                .arg(&host)
                .status()
                .unwrap()
                .success()
        );
        volumes.push(format!("{}:{v}", host.display()));
    }
    // The test weights, readable by anyone, mounted read-only: `-v weights:/weights:ro`.
    let weights = image.dir.join("weights");
    std::fs::create_dir(&weights).unwrap();
    std::fs::copy(
        reference_dir().join("weights.safetensors"),
        weights.join("weights.safetensors"),
    )
    .unwrap();
    for (path, mode) in [
        (weights.clone(), "755"),
        (weights.join("weights.safetensors"), "644"),
    ] {
        assert!(
            Command::new("chmod")
                .arg(mode)
                .arg(path)
                .status()
                .unwrap()
                .success()
        );
    }
    image.mount_point("/weights");

    let log = image.dir.join("server.log");
    let output = std::fs::File::create(&log).unwrap();
    let mut env = image.env();
    env.push((
        "GRADCAM_WEIGHTS".into(),
        "/weights/weights.safetensors".into(),
    ));
    let child = image
        .launch(
            &volumes,
            &[format!("{}:/weights", weights.display())],
            env,
            &image.strings("command"),
        )
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();
    let mut container = Container { child, log };

    // The HEALTHCHECK, run as Docker runs it, until it passes: within the start period plus
    // the retries Docker would allow before calling the container unhealthy.
    let check = &image.spec["healthcheck"];
    let test: Vec<String> = check["test"]
        .as_array()
        .expect("the image has a HEALTHCHECK")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let options = &check["options"];
    let allowed = seconds(options["start-period"].as_str().unwrap_or("0s"))
        + seconds(options["interval"].as_str().unwrap_or("30s"))
            * options["retries"]
                .as_str()
                .unwrap_or("3")
                .parse::<f64>()
                .unwrap();
    let started = Instant::now();
    loop {
        if container.exec(&image, &test, None).status.success() {
            break;
        }
        assert!(
            !container.exited(),
            "the entrypoint exited:\n{}",
            container.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs_f64(allowed),
            "the HEALTHCHECK did not pass in {allowed} s:\n{}",
            container.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The process is the image's user, every id of it, and has no capabilities, as the
    // container sees it; it may write its volume and nothing of the root.
    let status = container.exec(
        &image,
        &["cat".into(), format!("/proc/{}/status", container.pid())],
        None,
    );
    assert!(status.status.success(), "{}", text(&status.stderr));
    let status = text(&status.stdout);
    for (field, want) in [("Uid:", &image.spec["uid"]), ("Gid:", &image.spec["gid"])] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        let ids: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(ids, vec![want.to_string(); 4], "{line}");
    }
    for field in ["CapPrm:", "CapEff:", "CapAmb:"] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    let volume = image.strings("volumes")[0].clone();
    for (dir, allowed) in [(volume.as_str(), true), ("/", false), ("/tmp", false)] {
        let touch = format!("{}/written-by-the-test", dir.trim_end_matches('/'));
        let wrote = container.exec(&image, &["touch".into(), touch], None);
        assert_eq!(
            wrote.status.success(),
            allowed,
            "writing in {dir}: {}",
            text(&wrote.stderr)
        );
    }

    // A photograph explained, over HTTP inside the container, with the image's own curl.
    let port = image.strings("expose")[0]
        .trim_end_matches("/tcp")
        .to_string();
    let photo = REFERENCE
        .meta
        .photos
        .iter()
        .find(|p| p.file == "chelsea.png")
        .unwrap();
    let curl = |path: &str| -> Vec<String> {
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: image/png",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--data-binary".into(),
            "@-".into(),
            format!("http://127.0.0.1:{port}{path}"),
        ])
        .collect()
    };
    let answer = container.exec(
        &image,
        &curl("/explain?top_k=2"),
        Some(&fixture(&photo.file)),
    );
    let body = text(&answer.stdout);
    let (json, code) = body.rsplit_once('\n').expect("curl printed the status");
    assert_eq!(code, "200", "/explain: {json}\n{}", text(&answer.stderr));
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        v["predictions"][0]["index"], photo.top3[0],
        "{}",
        photo.name
    );
    assert_eq!(v["explanations"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["explanations"][0]["heatmap"]["data"]
            .as_array()
            .unwrap()
            .len(),
        49
    );
    assert!(v["explanations"][0]["overlay_png"].as_str().unwrap().len() > 100);

    // The stop signal: readiness (and so the HEALTHCHECK) fails while the server drains, and
    // the process exits 0.
    let signal = image
        .str("stopsignal")
        .trim_start_matches("SIG")
        .to_string();
    assert!(
        Command::new("kill")
            .args(["-s", &signal, &container.pid()])
            .status()
            .unwrap()
            .success()
    );
    loop {
        assert!(
            !container.exited(),
            "the server exited before the HEALTHCHECK saw it draining:\n{}",
            container.log()
        );
        if !container.exec(&image, &test, None).status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = container.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no exit after {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        exit.code(),
        Some(0),
        "exit after {signal}:\n{}",
        container.log()
    );
    let log = container.log();
    assert!(
        log.contains("\"stopped\""),
        "no \"stopped\" in the log:\n{log}"
    );
}
