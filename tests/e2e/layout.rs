//! The source tree keeps its shape: no import cycle between the top-level modules of `src/`
//! (read from the `crate::` paths, test modules excluded), none between the files and folders
//! of any one folder either (read from `crate::`, `super::` and `self::` paths), the command
//! line at the top with nothing depending on it, the HTTP layer never reaching the libtorch
//! model, and no source file over 500 lines.

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

/// The paths of a use tree starting at `text` (just after `crate::`, `super::` or `self::`):
/// `a::b`, `a::{b, c::{self, d}}` and `a::*` give every path they name, each as its segments.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let chars: Vec<char> = text.chars().collect();
    fn tree(c: &[char], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.to_vec();
        loop {
            while c.get(i).is_some_and(|c| c.is_whitespace()) {
                i += 1;
            }
            match c.get(i) {
                Some('{') => {
                    i += 1;
                    loop {
                        i = tree(c, i, &path, out);
                        while c.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                            i += 1;
                        }
                        match c.get(i) {
                            Some('}') => return i + 1,
                            None => return i,
                            _ => {}
                        }
                    }
                }
                Some('*') => {
                    out.push(path);
                    return i + 1;
                }
                Some(ch) if is_ident(*ch) => {
                    let start = i;
                    while c.get(i).is_some_and(|c| is_ident(*c)) {
                        i += 1;
                    }
                    let name: String = c[start..i].iter().collect();
                    if name != "self" {
                        path.push(name);
                    }
                    if c.get(i) == Some(&':') && c.get(i + 1) == Some(&':') {
                        i += 2;
                        continue;
                    }
                    out.push(path);
                    return i;
                }
                _ => {
                    out.push(path);
                    return i;
                }
            }
        }
    }
    let mut out = Vec::new();
    let end = tree(&chars, 0, &[], &mut out);
    (out, end)
}

/// The module paths a file names, made absolute: `crate::` from the root, `super::` (repeated)
/// from the file's parent module, `self::` from its own. Test modules and comments are left
/// out; a path may go on past a module into its items (resolved against the modules later).
fn module_refs(text: &str, me: &[String]) -> Vec<Vec<String>> {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let before_ok = i == 0 || !(is_ident(bytes[i - 1] as char) || bytes[i - 1] == b':');
        let rest = &text[i..];
        let start = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|p| before_ok && rest.starts_with(p));
        let Some(start) = start else {
            i += 1;
            continue;
        };
        let mut base: Vec<String> = match start {
            "crate::" => Vec::new(),
            "super::" => me[..me.len().saturating_sub(1)].to_vec(),
            _ => me.to_vec(),
        };
        let mut at = i + start.len();
        while text[at..].starts_with("super::") {
            base.pop();
            at += "super::".len();
        }
        let (paths, used) = use_tree(&text[at..]);
        for p in paths {
            refs.push(base.iter().cloned().chain(p).collect());
        }
        i = at + used.max(1);
    }
    refs
}

/// Every library source file of `src/` (the binaries in `src/bin` and `main.rs` are crates of
/// their own) with its module path: `src/http/auth.rs` is `http::auth`, `src/http/mod.rs` is
/// `http`.
fn library_files() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter_map(|file| {
            let rel = file.strip_prefix(&src).unwrap().to_path_buf();
            let mut path: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if path.first().is_some_and(|p| p == "bin") || path == ["main"] {
                return None;
            }
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            Some((path, std::fs::read_to_string(&file).unwrap()))
        })
        .collect()
}

/// For every folder of `src/`, the graph between its members (its files and sub-folders, by
/// name; its `mod.rs` left out): A -> B when something in A names something in B.
fn folder_graphs(files: &[(Vec<String>, String)]) -> BTreeMap<Vec<String>, Graph> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graphs: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for (me, text) in files {
        for target in module_refs(text, me) {
            // The module named: the longest prefix of the path that is one.
            let Some(target) = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|t| modules.contains(t))
            else {
                continue;
            };
            // Where `me` and the target part, they are members of one folder.
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < me.len() && common < target.len() {
                graphs
                    .entry(me[..common].to_vec())
                    .or_default()
                    .entry(me[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    graphs
}

#[test]
fn use_trees_and_relative_paths_are_read() {
    let me = ["http".to_string(), "auth".to_string()];
    let text = "use super::{problem::{self, ApiError}, AppState};\nuse self::inner::x;\n\
                fn f() { crate::engine::Engine::new(); super::super::metrics::M; }\n\
                // super::commented::out\nuse crate::render::*;\n\
                #[cfg(test)]\nmod tests { use super::tested; }";
    let got: BTreeSet<String> = module_refs(text, &me)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let want = [
        "http::problem",
        "http::problem::ApiError",
        "http::AppState",
        "http::auth::inner::x",
        "engine::Engine::new",
        "metrics::M",
        "render",
    ];
    assert_eq!(got, want.iter().map(|s| s.to_string()).collect());

    // A two-file cycle through `super::` and a three-file one through `crate::` are both seen.
    let files = [
        (vec!["m".into(), "a".into()], "use super::b::X;".into()),
        (
            vec!["m".into(), "b".into()],
            "fn f() { super::a::y(); }".into(),
        ),
        (vec!["m".into()], "mod a; mod b;".into()),
        (vec!["p".into(), "x".into()], "use crate::p::y::Y;".into()),
        (vec!["p".into(), "y".into()], "use crate::p::z::Z;".into()),
        (
            vec!["p".into(), "z".into()],
            "use self::w::W; use crate::p::x::X;".into(),
        ),
    ];
    let graphs = folder_graphs(&files);
    assert!(reachable(&graphs[&vec!["m".to_string()]], "a").contains("a"));
    assert!(reachable(&graphs[&vec!["p".to_string()]], "x").contains("x"));
}

#[test]
fn no_import_cycle_between_the_files_of_a_folder() {
    let files = library_files();
    assert!(
        files.len() > 40,
        "too few source files found: {}",
        files.len()
    );
    let graphs = folder_graphs(&files);
    assert!(
        graphs.contains_key(&vec!["http".to_string()]),
        "no graph for src/http: {graphs:?}"
    );
    for (folder, graph) in &graphs {
        for member in graph.keys() {
            assert!(
                !reachable(graph, member).contains(member),
                "in src/{}: {member} depends on itself through {:?}; graph: {graph:#?}",
                folder.join("/"),
                graph[member]
            );
        }
    }
}
