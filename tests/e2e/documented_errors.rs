//! The error contract in three places agrees: the server's one table of errors
//! (`ApiError::parts`), README.md's error table and openapi.yaml's problem types and responses.
//! And every documented status and type is produced by some test: each must appear as an
//! expected answer (the type's string next to its status) in the tests of the real binary or
//! of the in-process HTTP layer. Bare 400/431 answers of the HTTP parser are documented apart
//! from the table (they never reach the service).

use gradcam_serve::http::problem::ApiError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// (status, type) from the server's table.
fn code_table() -> BTreeSet<(u16, String)> {
    ApiError::examples()
        .iter()
        .map(|e| {
            let (status, kind, _) = e.parts();
            (status.as_u16(), kind.to_string())
        })
        .collect()
}

/// (status, type) from README.md's table under "### Errors".
fn readme_table() -> BTreeSet<(u16, String)> {
    let readme = read("README.md");
    let section = readme
        .split("### Errors")
        .nth(1)
        .expect("README.md has an Errors section");
    let mut rows = BTreeSet::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(status) = cells[1].parse::<u16>() else {
            continue;
        };
        for kind in cells[2].split(',') {
            rows.insert((status, kind.trim().trim_matches('`').to_string()));
        }
    }
    rows
}

/// The problem types openapi.yaml lists, and the statuses `/explain` documents.
fn openapi() -> (BTreeSet<String>, BTreeSet<u16>) {
    let doc = read("openapi.yaml");
    let enum_start = doc
        .find("enum: [malformed_request")
        .expect("openapi.yaml lists the problem types");
    let list = &doc[enum_start + "enum: [".len()..];
    let list = &list[..list.find(']').unwrap()];
    let types = list
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let explain = doc.split("  /explain:").nth(1).unwrap();
    let explain = &explain[..explain.find("\n  /predict:").unwrap()];
    let statuses = explain
        .lines()
        .filter_map(|l| l.trim().strip_prefix('\''))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect();
    (types, statuses)
}

fn test_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            test_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path
                .file_name()
                .is_some_and(|n| n != "documented_errors.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn readme_openapi_and_the_server_list_the_same_errors() {
    let code = code_table();
    let readme = readme_table();
    assert_eq!(
        readme, code,
        "README.md's error table differs from the server's"
    );
    let (types, explain_statuses) = openapi();
    let code_types: BTreeSet<String> = code.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(
        types, code_types,
        "openapi.yaml's problem types differ from the server's"
    );
    // Every status `/explain` can answer is in its responses (405 belongs to other methods).
    for (status, kind) in &code {
        if *status != 405 {
            assert!(
                explain_statuses.contains(status),
                "openapi.yaml's /explain does not list {status} ({kind})"
            );
        }
    }
}

#[test]
fn every_documented_error_is_produced_by_some_test() {
    let mut files = Vec::new();
    test_sources(&root().join("tests"), &mut files);
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    let mut missing = Vec::new();
    for (status, kind) in readme_table() {
        let literal = format!("\"{kind}\"");
        // The type expected within a few lines of its status, in one test file.
        let found = sources.iter().any(|(_, text)| {
            let lines: Vec<&str> = text.lines().collect();
            lines.iter().enumerate().any(|(i, l)| {
                l.contains(&literal)
                    && lines[i.saturating_sub(4)..(i + 5).min(lines.len())]
                        .iter()
                        .any(|near| near.contains(&status.to_string()))
            })
        });
        if !found {
            missing.push(format!("{status} {kind}"));
        }
    }
    assert!(
        missing.is_empty(),
        "documented but produced by no test: {missing:?}"
    );
}
