//! Hostile and damaged weights files (tests/hostile_weights.py makes about a hundred: pickles
//! that nest, share or flood, lying zip and safetensors sizes, compressed and overlapping
//! entries, views that overflow or repeat, degenerate heads, code-execution attempts) given to
//! the real binary's `--weights`: each must end in exit status 1 with a one-line message that
//! names what was wrong, without a panic, a signal or a code-execution marker, in bounded memory.

use gradcam_serve::backend::Backend;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run of the binary came to.
struct Outcome {
    /// Exit status, or `None` when a signal ended it.
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    peak_rss_mib: f64,
    seconds: f64,
}

/// Runs the binary with `args`; peak memory from `wait4`. A run past two minutes is killed (a
/// hang is a failure; no figure here is a speed limit).
fn run(args: &[&str]) -> Outcome {
    let started = Instant::now();
    #[allow(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which gives its rusage"
    )]
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradcam-serve"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped; both pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gradcam-serve {args:?} still runs after two minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let signalled = libc::WIFSIGNALED(status);
    Outcome {
        code: (!signalled).then(|| libc::WEXITSTATUS(status)),
        signal: signalled.then(|| libc::WTERMSIG(status)),
        stderr: reader.join().expect("stderr reader"),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Runs tests/hostile_weights.py with `args`.
fn generator(args: &[&std::ffi::OsStr]) {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile_weights.py"))
        .args(args)
        .output()
        .expect("python3 runs tests/hostile_weights.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the hostile files into `dir`; their manifest.
fn generate(dir: &Path, marker: &Path) -> Vec<serde_json::Value> {
    generator(&[dir.as_os_str(), "--marker".as_ref(), marker.as_os_str()]);
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The refusal line of a run that must have refused `file`, checked as the module says.
fn refusal<'a>(o: &'a Outcome, file: &Path, what: &str) -> &'a str {
    assert_eq!(
        (o.code, o.signal),
        (Some(1), None),
        "{what}: exit status 1 expected; stderr:\n{}",
        o.stderr
    );
    for bad in [
        "panicked",
        "fatal runtime error",
        "stack backtrace",
        "RUST_BACKTRACE",
    ] {
        assert!(!o.stderr.contains(bad), "{what}: {bad}:\n{}", o.stderr);
    }
    let line = o
        .stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{what}: no error line:\n{}", o.stderr));
    assert!(
        line.contains(&file.display().to_string()),
        "{what}: the message names the file: {line}"
    );
    assert!(
        !line.chars().any(char::is_control),
        "{what}: names are escaped: {line:?}"
    );
    line
}

#[test]
fn hostile_weights_files_are_refused_cleanly_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("gradcam-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = dir.join("files");
    let marker = dir.join("code-ran");
    let manifest = generate(&files, &marker);
    assert!(manifest.len() >= 40, "{} files", manifest.len());
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coffee.jpg");
    let out = dir.join("out");
    let explain = |file: &Path| {
        run(&[
            "explain",
            "--device",
            "cpu",
            "--weights",
            file.to_str().unwrap(),
            photo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // What the process costs before it reads any weights: an empty file, refused at once.
    let empty = dir.join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let base = explain(&empty);
    refusal(&base, &empty, "empty file");
    const ALLOWANCE_MIB: f64 = 256.0;

    // Every file through `explain`; one file of each class through `serve` and `bench` too,
    // which read weights the same way. Two at a time: each run's figures are its own (wait4).
    let mut jobs: Vec<(usize, Vec<String>)> = Vec::new();
    let mut classes_seen = std::collections::HashSet::new();
    for (i, entry) in manifest.iter().enumerate() {
        let file = files.join(entry["file"].as_str().unwrap());
        let file = file.to_str().unwrap().to_string();
        let photo = photo.to_str().unwrap().to_string();
        let out = out.to_str().unwrap().to_string();
        let weights = ["--device", "cpu", "--weights", file.as_str()].map(String::from);
        jobs.push((
            i,
            [
                &["explain".into()][..],
                &weights,
                &[photo, "--out".into(), out],
            ]
            .concat(),
        ));
        if classes_seen.insert(entry["class"].as_str().unwrap()) {
            jobs.push((
                i,
                [&["serve".into(), "--port".into(), "0".into()][..], &weights].concat(),
            ));
            let quick = ["bench", "--seconds", "0.1"].map(String::from);
            jobs.push((i, [&quick[..], &weights].concat()));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((i, args)) = jobs.get(j) else { break };
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let o = run(&args);
                    done.lock().unwrap().push((j, *i, args[0].to_string(), o));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|d| d.0);

    println!(
        "{:<34} {:<16} {:<8} {:>7} {:>9}  message",
        "file", "class", "command", "ms", "peak MiB"
    );
    // Messages that do not say what was wrong, reported together at the end.
    let mut unexplained = Vec::new();
    for (_, i, command, o) in &done {
        let entry = &manifest[*i];
        let name = entry["file"].as_str().unwrap();
        let class = entry["class"].as_str().unwrap();
        let file = files.join(name);
        let line = refusal(o, &file, &format!("{command} {name}"));
        let said = line.to_lowercase();
        let expect: Vec<&str> = entry["expect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        if !expect.iter().any(|e| said.contains(e)) {
            unexplained.push(format!(
                "{command} {name} ({}): the message says none of {expect:?}: {line}",
                entry["what"]
            ));
        }
        let size_mib = std::fs::metadata(&file).unwrap().len() as f64 / (1 << 20) as f64;
        assert!(
            o.peak_rss_mib <= base.peak_rss_mib + ALLOWANCE_MIB + size_mib,
            "{command} {name}: peak {:.0} MiB, against {:.0} MiB for an empty file and a \
             {size_mib:.1} MiB file",
            o.peak_rss_mib,
            base.peak_rss_mib
        );
        let shown = line.rsplit(": ").next().unwrap_or(line);
        println!(
            "{name:<34} {class:<16} {command:<8} {:>7.0} {:>9.0}  {}",
            o.seconds * 1000.0,
            o.peak_rss_mib,
            shown.chars().take(80).collect::<String>()
        );
    }
    println!(
        "baseline (empty file): {:.0} ms, {:.0} MiB",
        base.seconds * 1000.0,
        base.peak_rss_mib
    );
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
    assert!(
        !marker.exists(),
        "a pickle ran code: {} exists",
        marker.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `byteorder` says how the storages are stored: a big-endian copy of a checkpoint loads to the
/// same weights as the original.
#[test]
fn a_big_endian_checkpoint_loads_to_the_same_weights() {
    let src = super::ckpt("dataparallel.pth");
    let dst: PathBuf =
        std::env::temp_dir().join(format!("gradcam-big-endian-{}.pth", std::process::id()));
    generator(&["--big-endian".as_ref(), src.as_os_str(), dst.as_os_str()]);
    let spec = gradcam_serve::model::LoadSpec::default();
    let x = super::chelsea();
    let little = super::load(&src, &spec).unwrap().logits(&[&x]).unwrap();
    let big = super::load(&dst, &spec).unwrap().logits(&[&x]).unwrap();
    std::fs::remove_file(&dst).unwrap();
    assert_eq!(little, big);
}
