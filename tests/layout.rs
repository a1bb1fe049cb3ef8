//! The source tree keeps its shape: no import cycle between the top-level modules of `src/`
//! (read from the `crate::` paths, test modules excluded), the command line at the top with
//! nothing depending on it, the HTTP layer never reaching the libtorch model, and no source file
//! over 500 lines.

#![allow(clippy::unwrap_used)] // a test fails on an unexpected error by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Top-level modules a file names through `crate::a` or `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    // Unit tests sit in a `mod tests` at the end of a file; they may use anything.
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut refs = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of a grouped import: those at brace depth 0.
            let mut depth = 0;
            let mut name = String::new();
            let mut at_start = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 && is_ident(c) && at_start {
                    name.push(c);
                } else if !name.is_empty() {
                    refs.insert(std::mem::take(&mut name));
                    at_start = false;
                }
                if depth == 0 && c == ',' {
                    at_start = true;
                }
            }
            if !name.is_empty() {
                refs.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            refs.insert(name);
        }
    }
    refs
}

/// Module -> the modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The graph of `src/`'s top-level modules (`lib` and `main` left out), and every source
/// file's length in lines.
fn graph() -> (Graph, Vec<(PathBuf, usize)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = Graph::new();
    let mut sizes = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        sizes.push((file.clone(), text.lines().count()));
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let refs = crate_refs(&text);
        edges
            .entry(top.clone())
            .or_default()
            .extend(refs.into_iter().filter(|r| *r != top));
    }
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for targets in edges.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    (edges, sizes)
}

/// Every module reachable from `from`.
fn reachable(edges: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for next in edges.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn grouped_and_plain_crate_paths_are_read() {
    let refs = crate_refs(
        "use crate::backend::{self, Layer};\nuse crate::{cam, input::{self, X}, render};\n\
         fn f() { crate::metrics::Metrics::new(); }\n#[cfg(test)]\nmod tests { use crate::http; }",
    );
    let want = ["backend", "cam", "input", "metrics", "render"];
    assert_eq!(refs, want.iter().map(|s| s.to_string()).collect());
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (edges, _) = graph();
    assert!(edges.len() >= 10, "too few modules found: {edges:?}");
    for module in edges.keys() {
        assert!(
            !reachable(&edges, module).contains(module),
            "{module} depends on itself through {:?}; graph: {edges:#?}",
            edges[module]
        );
    }
}

#[test]
fn layers_depend_only_downwards() {
    let (edges, _) = graph();
    for (module, targets) in &edges {
        assert!(
            !targets.contains("cli"),
            "{module} depends on the command line"
        );
    }
    let http = reachable(&edges, "http");
    assert!(
        !http.contains("model"),
        "http reaches the libtorch model: {http:?}"
    );
    for lower in [
        "config", "fetch", "input", "cam", "render", "backend", "model",
    ] {
        let below = reachable(&edges, lower);
        for upper in ["http", "service", "engine", "offline"] {
            assert!(!below.contains(upper), "{lower} reaches {upper}: {below:?}");
        }
    }
    let fetch = reachable(&edges, "fetch");
    assert!(fetch.is_empty(), "fetch must stand alone: {fetch:?}");
}

#[test]
fn no_source_file_is_over_500_lines() {
    let (_, sizes) = graph();
    let long: Vec<_> = sizes.iter().filter(|(_, n)| *n > 500).collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}
