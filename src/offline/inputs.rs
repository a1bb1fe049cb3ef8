//! What `explain` is asked to explain: files, directories (searched recursively, image files
//! told by their first bytes), glob patterns and lists of paths, each picture with the name its
//! outputs take under `--out`.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Component, Path, PathBuf};

/// One picture to explain.
#[derive(Debug, Clone)]
pub struct Picture {
    /// The file, as found.
    pub path: PathBuf,
    /// Where its outputs go, relative to `--out` and without extension: `a/b/cat` gives
    /// `a/b/cat.png`, `a/b/cat.1.png`, `a/b/cat.json`.
    pub stem: PathBuf,
}

/// The pictures in order, and the files of directories that are not images (not explained,
/// only counted).
pub struct Found {
    pub pictures: Vec<Picture>,
    pub not_images: usize,
}

/// Expands the arguments and the list file (`-`: standard input) into pictures.
///
/// - A directory contributes every image file below it (symbolic links to directories are not
///   followed), named by its path relative to the directory.
/// - A glob pattern (`*`, `?`, `[`) contributes its matching files, named by their path below
///   the pattern's last directory without wildcards (`photos/**/*.jpg`: below `photos`).
/// - A file, named or listed, is taken as it is (a file that is not an image is reported when
///   it is explained, like a corrupt one) and named by its file name.
///
/// A name is the relative path without its extension; where two pictures share one (`cat.jpg`
/// and `cat.png`), each keeps its extension (`cat.jpg.png`, `cat.png.png`). Two pictures that
/// would still write the same files stop the run before anything is explained.
///
/// A run's own outputs never become the next run's inputs: a directory or pattern root that
/// is the output directory `out` itself is refused, files below `out` where it lies inside a
/// directory or pattern root are left out, and so is the summary file `summary`.
pub fn find(
    args: &[PathBuf],
    list: Option<&Path>,
    out: &Path,
    summary: Option<&Path>,
) -> Result<Found> {
    let root_of = |root: &Path| -> Result<Option<PathBuf>> {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        if root == out {
            bail!(
                "{} is also the output directory: its outputs would be read as pictures by the \
                 next run; choose another --out",
                root.display()
            );
        }
        Ok(out.starts_with(&root).then(|| out.to_path_buf()))
    };
    let skipped = |p: &Path, inner_out: &Option<PathBuf>| {
        p.canonicalize().is_ok_and(|c| {
            inner_out.as_ref().is_some_and(|o| c.starts_with(o)) || Some(c.as_path()) == summary
        })
    };
    let mut named: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut not_images = 0;
    let mut listed = Vec::new();
    if let Some(list) = list {
        listed = read_list(list)?;
    }
    for arg in args.iter().chain(&listed) {
        let text = arg.to_string_lossy();
        if text.contains(['*', '?', '[']) && !arg.exists() {
            let root = glob_root(arg);
            let inner_out = root_of(if root.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &root
            })?;
            let mut matched = 0;
            for entry in glob::glob(&text).with_context(|| format!("pattern {text}"))? {
                let path = entry.with_context(|| format!("pattern {text}"))?;
                if path.is_file() && !skipped(&path, &inner_out) {
                    matched += 1;
                    let rel = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
                    named.push((path, rel));
                }
            }
            if matched == 0 {
                bail!("{text}: no file matches the pattern");
            }
        } else if arg.is_dir() {
            let inner_out = root_of(arg)?;
            let mut files = Vec::new();
            walk(arg, &mut files).with_context(|| format!("reading {}", arg.display()))?;
            for path in files.into_iter().filter(|p| !skipped(p, &inner_out)) {
                if is_image(&path) {
                    let rel = path.strip_prefix(arg).unwrap_or(&path).to_path_buf();
                    named.push((path, rel));
                } else {
                    not_images += 1;
                }
            }
        } else {
            let name = arg.file_name().map_or_else(|| arg.clone(), PathBuf::from);
            named.push((arg.clone(), name));
        }
    }
    Ok(Found {
        pictures: name_outputs(named)?,
        not_images,
    })
}

fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let reader: Box<dyn BufRead> = if list == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(list).with_context(|| format!("reading {}", list.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut paths = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {}", list.display()))?;
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            paths.push(PathBuf::from(line));
        }
    }
    Ok(paths)
}

/// The leading components of a pattern that hold no wildcard.
fn glob_root(pattern: &Path) -> PathBuf {
    pattern
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect()
}

/// Every file below `dir`, sorted, without following links to directories.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// True when the file starts like an image we decode.
fn is_image(path: &Path) -> bool {
    let mut head = [0u8; 32];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    crate::input::sniff_format(&head[..n]).is_ok()
}

/// Output names: the relative path without extension, or with it where two share one.
fn name_outputs(named: Vec<(PathBuf, PathBuf)>) -> Result<Vec<Picture>> {
    let clean = |rel: &Path| -> PathBuf {
        rel.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect()
    };
    let mut by_stem: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (_, rel) in &named {
        *by_stem.entry(clean(rel).with_extension("")).or_default() += 1;
    }
    let pictures: Vec<Picture> = named
        .into_iter()
        .map(|(path, rel)| {
            let rel = clean(&rel);
            let stem = rel.with_extension("");
            let stem = if by_stem[&stem] > 1 { rel } else { stem };
            Picture { path, stem }
        })
        .collect();
    Ok(pictures)
}

/// Refuses a run in which two pictures would write the same file (`files` gives a picture's
/// files): `x.jpg` explained for two classes writes `x.1.png`, as `x.1.jpg` does.
pub fn check_clashes(pictures: &[Picture], files: impl Fn(&Picture) -> Vec<PathBuf>) -> Result<()> {
    let mut seen: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    for p in pictures {
        for f in files(p) {
            if let Some(first) = seen.insert(f.clone(), &p.path) {
                bail!(
                    "{} and {} would both write {}; explain them in separate runs or with \
                     different --out directories",
                    first.display(),
                    p.path.display(),
                    f.display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pairs: &[(&str, &str)]) -> Result<Vec<String>> {
        let named = pairs
            .iter()
            .map(|(p, r)| (PathBuf::from(p), PathBuf::from(r)))
            .collect();
        Ok(name_outputs(named)?
            .into_iter()
            .map(|p| p.stem.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn names_drop_the_extension_unless_two_pictures_share_one() {
        assert_eq!(
            names(&[
                ("d/a/cat.jpg", "a/cat.jpg"),
                ("d/b/cat.jpg", "b/cat.jpg"),
                ("d/dog.jpg", "dog.jpg"),
                ("d/dog.png", "dog.png"),
            ])
            .unwrap(),
            ["a/cat", "b/cat", "dog.jpg", "dog.png"]
        );
        let pictures = |pairs: &[(&str, &str)]| {
            name_outputs(
                pairs
                    .iter()
                    .map(|(p, r)| (PathBuf::from(p), PathBuf::from(r)))
                    .collect(),
            )
            .unwrap()
        };
        let two = |p: &Picture| crate::offline::outputs::files(&p.stem, 2, true, true);
        let same = pictures(&[("x/cat.jpg", "cat.jpg"), ("y/cat.jpg", "cat.jpg")]);
        let e = check_clashes(&same, two).unwrap_err();
        assert!(
            e.to_string().contains("would both write cat.jpg.png"),
            "{e}"
        );
        // x.jpg's second overlay is x.1.png, which x.1.jpg's first overlay also is.
        let ranks = pictures(&[("d/x.jpg", "x.jpg"), ("d/x.1.jpg", "x.1.jpg")]);
        let e = check_clashes(&ranks, two).unwrap_err();
        assert!(e.to_string().contains("would both write x.1.png"), "{e}");
        let one = |p: &Picture| crate::offline::outputs::files(&p.stem, 1, true, true);
        check_clashes(&ranks, one).unwrap();
    }

    #[test]
    fn names_never_leave_the_output_directory() {
        assert_eq!(
            names(&[("/tmp/../x.jpg", "/tmp/../x.jpg")]).unwrap(),
            ["tmp/x"]
        );
    }

    #[test]
    fn a_pattern_is_rooted_at_its_last_plain_directory() {
        assert_eq!(
            glob_root(Path::new("photos/2024/**/*.jpg")),
            Path::new("photos/2024")
        );
        assert_eq!(glob_root(Path::new("*.png")), Path::new(""));
    }
}
