//! `gradcam-serve explain` on a whole dataset, run as a user would: a directory of a few
//! hundred generated pictures (nested folders, duplicate base names, a corrupt file, a file
//! that is not an image), lists, patterns, `--strict`, and an interrupted run resumed.

use crate::common::{encode_jpeg, encode_png, fixture, reference_dir};
use image::RgbImage;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const GOOD: usize = 200;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradcam-dataset-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn explain() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradcam-serve"));
    c.args(["explain", "--device", "cpu", "--top-k", "2"])
        .arg("--weights")
        .arg(reference_dir().join("weights.safetensors"))
        .env_remove("GRADCAM_WEIGHTS")
        .stdout(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.stderr(Stdio::piped()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes the dataset: `GOOD` crops of the fixture photographs, JPEG and PNG, in nested
/// folders, with base names repeated across folders and one name shared by a JPEG and a PNG;
/// plus a truncated JPEG and a text file. Returns the relative paths of the good pictures.
fn dataset(dir: &Path) -> Vec<String> {
    let photos: Vec<RgbImage> = ["chelsea.png", "coffee.jpg", "rocket.jpg", "camera.png"]
        .iter()
        .map(|f| image::open(fixture(f)).unwrap().to_rgb8())
        .collect();
    let mut good = Vec::new();
    for i in 0..GOOD {
        let photo = &photos[i % 4];
        let (x, y) = ((i as u32 * 37) % 150, (i as u32 * 53) % 100);
        let crop = image::imageops::crop_imm(photo, x, y, 280, 200).to_image();
        let folder = ["", "a/", "a/b/", "c/"][i % 4];
        let png = i % 3 == 0;
        // Base names repeat in every folder: img0 .. img49.
        let rel = format!("{folder}img{}.{}", i / 4, if png { "png" } else { "jpg" });
        save(&dir.join(&rel), &crop, png);
        good.push(rel);
    }
    // One name, two formats: twin.jpg and twin.png.
    for (ext, png) in [("jpg", false), ("png", true)] {
        let rel = format!("twin.{ext}");
        save(&dir.join(&rel), &photos[0], png);
        good.push(rel);
    }
    let mut corrupt = encode_jpeg(&photos[1], 85);
    corrupt.truncate(corrupt.len() / 2);
    std::fs::write(dir.join("a/broken.jpg"), corrupt).unwrap();
    std::fs::write(dir.join("c/notes.txt"), "not a picture\n").unwrap();
    good
}

fn save(path: &Path, img: &RgbImage, png: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes = if png {
        encode_png(img)
    } else {
        encode_jpeg(img, 85)
    };
    std::fs::write(path, bytes).unwrap();
}

/// The stem outputs take: the relative path without extension, except for the twins.
fn stem(rel: &str) -> String {
    if rel.starts_with("twin.") {
        rel.to_string()
    } else {
        rel.rsplit_once('.').unwrap().0.to_string()
    }
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                // While a run is writing, a temporary file can be renamed between the
                // listing and the read: it is then listed under its final name next time.
                if let Ok(bytes) = std::fs::read(&p) {
                    out.insert(rel, bytes);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A JSON document without its timings, which differ between runs, and without file names.
fn without_timings(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    let doc = v.as_object_mut().unwrap();
    doc.remove("timings_ms");
    doc.remove("image");
    for e in doc["explanations"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("overlay");
    }
    v
}

#[test]
fn a_directory_is_explained_once_per_picture_and_an_interrupted_run_resumes_to_the_same() {
    let data = tempdir("data");
    let good = dataset(&data);
    let out = tempdir("out");

    // The whole directory in one run.
    let o = run(explain()
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--summary")
        .arg(out.join("summary.jsonl")));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "one picture skipped: {err}");
    assert!(
        err.contains("broken.jpg: skipped") && err.contains("truncated"),
        "{err}"
    );
    assert!(err.contains("1 files that are not images ignored"), "{err}");
    let total = good.len() + 1;
    assert!(
        err.contains(&format!("{total}/{total} pictures (100%)")),
        "a plain progress line when standard error is not a terminal: {err}"
    );
    let files = tree(&out);
    for rel in &good {
        let s = stem(rel);
        for f in [
            format!("{s}.png"),
            format!("{s}.1.png"),
            format!("{s}.json"),
        ] {
            assert!(files.contains_key(&f), "{f} missing");
        }
    }
    let expected_files = good.len() * 3 + 1;
    assert_eq!(files.len(), expected_files, "{:?}", files.keys());
    let summary = jsonl(&files["summary.jsonl"]);
    assert_eq!(summary.len(), good.len() + 1, "one record per picture");
    let paths: BTreeSet<&str> = summary
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), summary.len(), "each picture once");
    let broken: Vec<&Value> = summary.iter().filter(|r| r["status"] != "ok").collect();
    assert_eq!(broken.len(), 1);
    assert!(broken[0]["path"].as_str().unwrap().ends_with("broken.jpg"));
    for r in summary.iter().filter(|r| r["status"] == "ok") {
        assert_eq!(r["files"].as_array().unwrap().len(), 3, "{r}");
        assert_eq!(r["predictions"][0]["index"], r["class_index"], "{r}");
    }

    // The same numbers as a run on one picture, for pictures in nested folders and the twins.
    for rel in ["a/b/img3.jpg", "c/img7.jpg", "img0.png", "twin.jpg"] {
        let one = tempdir("one");
        let o = run(explain().arg(data.join(rel)).arg("--out").arg(&one));
        assert!(o.status.success(), "{}", stderr(&o));
        let name = Path::new(rel).file_stem().unwrap().to_string_lossy();
        let alone = std::fs::read(one.join(format!("{name}.json"))).unwrap();
        let batched = &files[&format!("{}.json", stem(rel))];
        assert_close(&without_timings(&alone), &without_timings(batched), rel);
        let _ = std::fs::remove_dir_all(&one);
    }

    // Interrupted mid-run with Ctrl-C, then resumed: the same outputs.
    let again = tempdir("again");
    let summary_path = again.join("summary.jsonl");
    let mut child = explain()
        .arg(&data)
        .arg("--out")
        .arg(&again)
        .arg("--summary")
        .arg(&summary_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while count_json(&again) < 40 {
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before 40 pictures"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let partial = count_json(&again);
    assert!(
        partial < good.len(),
        "interrupted after {partial}: too late to test resuming"
    );
    let modified = |dir: &Path| -> BTreeMap<String, std::time::SystemTime> {
        tree(dir)
            .into_keys()
            .filter(|f| {
                (f.ends_with(".png") || f.ends_with(".json"))
                    && !f.split('/').any(|c| c.starts_with('.'))
            })
            .map(|f| {
                let t = std::fs::metadata(dir.join(&f)).unwrap().modified().unwrap();
                (f, t)
            })
            .collect()
    };
    let before = modified(&again);
    for (f, bytes) in tree(&again) {
        if f.ends_with(".json") && !f.starts_with('.') && !f.contains("/.") {
            serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
    let o = run(explain()
        .arg(&data)
        .arg("--out")
        .arg(&again)
        .arg("--summary")
        .arg(&summary_path)
        .arg("--resume"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{partial} of {total} pictures already done")),
        "{err}"
    );
    // What the first run finished is not written again.
    let after = modified(&again);
    for (f, t) in &before {
        assert_eq!(after.get(f), Some(t), "{f} was rewritten");
    }
    let resumed: BTreeMap<String, Vec<u8>> = tree(&again)
        .into_iter()
        .filter(|(f, _)| !f.split('/').any(|c| c.starts_with('.')))
        .collect();
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (f, bytes) in &resumed {
        if f == "summary.jsonl" {
            assert_close(
                &Value::from(jsonl(bytes)),
                &Value::from(jsonl(&files[f])),
                f,
            );
        } else if f.ends_with(".json") {
            assert_close(&without_timings(bytes), &without_timings(&files[f]), f);
        } else {
            assert!(bytes == &files[f], "{f} differs");
        }
    }
    for d in [data, out, again] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Asserts two JSON values equal, numbers within 1e-4 relative: a picture's logits depend on
/// the batch it ran in at the level of float rounding (about 1e-5 here).
fn assert_close(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

fn jsonl(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count_json(dir: &Path) -> usize {
    tree(dir)
        .keys()
        .filter(|f| f.ends_with(".json") && !f.split('/').any(|c| c.starts_with('.')))
        .count()
}

#[test]
fn lists_patterns_csv_summaries_and_strict_runs() {
    let data = tempdir("small");
    let photo = image::open(fixture("coffee.jpg")).unwrap().to_rgb8();
    for rel in ["x/one.jpg", "x/y/two.jpg", "x/y/three.png", "z/four.jpg"] {
        save(&data.join(rel), &photo, rel.ends_with(".png"));
    }
    std::fs::write(data.join("x/y/bad.jpg"), b"\xFF\xD8\xFF\xE0 not really").unwrap();

    // A pattern keeps the structure below its plain directory; a list from standard input
    // names files by their file name; only the CSV summary is written.
    let out = tempdir("small-out");
    let mut child = explain()
        .arg(data.join("x/**/*.jpg"))
        .args(["--from-list", "-", "--no-overlay", "--no-json", "--quiet"])
        .args(["--summary-format", "csv", "--summary"])
        .arg(out.join("s.csv"))
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        "{}",
        data.join("z/four.jpg").display()
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "bad.jpg matched: {}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("s.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("path,status,top1_index"), "{csv}");
    assert_eq!(rows.len(), 5, "header, three pictures, bad.jpg: {csv}");
    assert_eq!(
        rows.iter().filter(|r| r.contains(",ok,")).count(),
        3,
        "{csv}"
    );
    assert!(rows.iter().any(|r| r.contains("bad.jpg,skipped")), "{csv}");
    // Every member of the JSONL record, flattened: the top-5, the map's size, raw maximum,
    // mean and peak, the files written (none here) and the error.
    let header: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(header.len(), 28, "{csv}");
    for column in [
        "top5_label",
        "map_width",
        "map_raw_max",
        "map_empty",
        "files",
        "error",
    ] {
        assert!(header.contains(&column), "{column}: {csv}");
    }
    let ok = rows.iter().find(|r| r.contains(",ok,")).unwrap();
    let fields = csv_fields(ok);
    assert_eq!(fields.len(), 28, "{ok}");
    let at = |c: &str| fields[header.iter().position(|h| *h == c).unwrap()].as_str();
    assert!(
        !at("top5_label").is_empty() && at("map_width") == "7",
        "{ok}"
    );
    assert!(at("map_raw_max").parse::<f32>().is_ok(), "{ok}");
    assert_eq!(
        tree(&out).keys().collect::<Vec<_>>(),
        ["s.csv"],
        "nothing but the summary"
    );

    // --strict stops at the broken file with status 1 and names it.
    let o = run(explain()
        .arg(data.join("x"))
        .arg("--strict")
        .arg("--out")
        .arg(tempdir("strict")));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.jpg"), "{}", stderr(&o));

    // A run's own outputs inside an input directory are not read back as pictures, and an
    // output directory that is an input directory is refused.
    let inner = data.join("x/out");
    let twice: Vec<Output> = (0..2)
        .map(|_| {
            run(explain()
                .arg(data.join("x"))
                .arg("--resume")
                .arg("--out")
                .arg(&inner))
        })
        .collect();
    let o = &twice[1];
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    assert!(
        stderr(o).contains("3 of 4 pictures already done"),
        "{}",
        stderr(o)
    );
    let o = run(explain()
        .arg(data.join("x"))
        .arg("--out")
        .arg(data.join("x")));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("also the output directory"),
        "{}",
        stderr(&o)
    );

    // Two pictures that would write one file (x.jpg's second overlay is x.1.png, as is
    // x.1.jpg's first) stop the run before anything is written.
    let clash = tempdir("clash");
    save(&clash.join("x.jpg"), &photo, false);
    save(&clash.join("x.1.jpg"), &photo, false);
    let o = run(explain().arg(&clash).arg("--out").arg(tempdir("clash-out")));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("would both write x.1.png"),
        "{}",
        stderr(&o)
    );

    // A file name that is not UTF-8 is explained like any other.
    use std::os::unix::ffi::OsStrExt;
    let latin1 = clash.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    save(&latin1, &photo, false);
    let out = tempdir("latin1");
    let o = run(explain().arg(&latin1).arg("--out").arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = std::fs::read(out.join(std::ffi::OsStr::from_bytes(b"caf\xe9.json"))).unwrap();
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    assert!(
        doc["image"].as_str().unwrap().ends_with("caf\u{fffd}.jpg"),
        "{doc}"
    );

    // Nothing to write is refused before the model loads.
    let o = run(explain().arg(&data).args(["--no-overlay", "--no-json"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--summary"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&data);
}

/// The fields of one CSV row (RFC 4180 quoting: a quoted field may hold commas and `""`).
fn csv_fields(row: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A picture over `--max-inflight-pixels` is skipped with a reason that says what the pixels
/// are: a file whose bytes alone are over it (a third of a pixel per byte), or a picture whose
/// decoding is, with its real size; never the one counted as the other.
#[test]
fn a_budget_refusal_says_whether_reading_or_decoding_is_over_it() {
    let data = tempdir("budget");
    let photo = image::open(fixture("rocket.jpg")).unwrap().to_rgb8();
    let small = image::imageops::crop_imm(&photo, 100, 100, 224, 224).to_image();
    std::fs::write(data.join("small.jpg"), encode_jpeg(&small, 60)).unwrap();
    std::fs::copy(fixture("chelsea.png"), data.join("large.png")).unwrap();
    let small_bytes = std::fs::metadata(data.join("small.jpg")).unwrap().len();
    // Far more than the small file's third, far less than its pixels or the large file's third.
    let limit = 20_000;
    assert!(small_bytes.div_ceil(3) < limit && 240_512 / 3 > limit);
    let o = run(explain()
        .arg(&data)
        .args(["--max-inflight-pixels", &limit.to_string(), "--out"])
        .arg(tempdir("budget-out")));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "both skipped: {err}");
    let line = |name: &str| {
        err.lines()
            .find(|l| l.contains(name) && l.contains("skipped"))
            .unwrap_or_else(|| panic!("no skip line for {name}: {err}"))
            .to_string()
    };
    let large = line("large.png");
    assert!(
        large.contains("reading the file holds 80171 pixels of the budget (its 240512 bytes")
            && large.contains("more than --max-inflight-pixels 20000"),
        "{large}"
    );
    let small = line("small.jpg");
    assert!(
        small.contains("decoding this 224x224 picture holds")
            && small.contains("more than --max-inflight-pixels 20000"),
        "{small}"
    );
}
