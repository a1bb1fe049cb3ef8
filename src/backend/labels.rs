//! Class names: ImageNet's for the default model, or a model's own from a labels file.

use serde::{Serialize, Serializer};
use std::sync::Arc;

/// The names of a classifier's classes, by index. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels(Arc<[String]>);

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::imagenet()
    }
}

impl Labels {
    pub fn new(names: Vec<String>) -> Self {
        Labels(names.into())
    }

    /// ImageNet-1k's 1000 names, in the order of torchvision's checkpoints.
    pub fn imagenet() -> Self {
        Labels::new(super::labels().iter().map(|s| s.to_string()).collect())
    }

    /// `class_0`, `class_1`, ...: for a model whose names nobody gave.
    pub fn generic(classes: usize) -> Self {
        Labels::new((0..classes).map(|i| format!("class_{i}")).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of class `i`; a class past the list (a bug elsewhere) gets a generic name
    /// rather than a panic.
    pub fn get(&self, i: usize) -> &str {
        self.0.get(i).map_or("unknown", String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Reads a labels file: one name per line, or JSON (a list of names, or an object from
    /// index to name covering `0..n` exactly). Trailing blank lines are ignored; any other
    /// empty name is an error, since it would shift every class after it.
    pub fn parse(text: &str) -> Result<Labels, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let trimmed = text.trim_start();
        let names: Vec<String> = if trimmed.starts_with('[') {
            serde_json::from_str::<Vec<String>>(trimmed)
                .map_err(|e| format!("not a JSON list of names: {e}"))?
        } else if trimmed.starts_with('{') {
            let map = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(trimmed)
                .map_err(|e| format!("not a JSON object from index to name: {e}"))?;
            let mut names = vec![None; map.len()];
            for (k, v) in map {
                let i: usize = k
                    .parse()
                    .map_err(|_| format!("key {k:?} is not a class index"))?;
                let name = v
                    .as_str()
                    .ok_or_else(|| format!("the name of class {i} is not a string"))?;
                let count = names.len();
                let slot = names
                    .get_mut(i)
                    .ok_or_else(|| format!("class index {i} is beyond the {count} entries"))?;
                *slot = Some(name.to_string());
            }
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| n.ok_or_else(|| format!("class {i} has no name")))
                .collect::<Result<_, _>>()?
        } else {
            let mut lines: Vec<String> = text
                .lines()
                .map(|l| l.trim_end_matches('\r').trim().to_string())
                .collect();
            while lines.last().is_some_and(String::is_empty) {
                lines.pop();
            }
            lines
        };
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            return Err(format!("the name of class {i} is empty"));
        }
        if names.is_empty() {
            return Err("it names no class".into());
        }
        Ok(Labels::new(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lists_and_objects() {
        let want = Labels::new(vec!["cat".into(), "dog".into(), "red fox".into()]);
        assert_eq!(Labels::parse("cat\ndog\nred fox\n\n").unwrap(), want);
        assert_eq!(Labels::parse("cat\r\ndog\r\nred fox").unwrap(), want);
        assert_eq!(Labels::parse(r#"["cat", "dog", "red fox"]"#).unwrap(), want);
        assert_eq!(
            Labels::parse(r#"{"2": "red fox", "0": "cat", "1": "dog"}"#).unwrap(),
            want
        );
    }

    #[test]
    fn gaps_and_empty_names_are_refused() {
        let e = Labels::parse("cat\n\ndog").unwrap_err();
        assert!(e.contains("class 1 is empty"), "{e}");
        let e = Labels::parse(r#"{"0": "cat", "2": "dog"}"#).unwrap_err();
        assert!(e.contains("beyond"), "{e}");
        let e = Labels::parse(r#"{"0": "cat", "x": "dog"}"#).unwrap_err();
        assert!(e.contains("\"x\""), "{e}");
        assert!(Labels::parse("").is_err());
        assert!(Labels::parse("[1, 2]").is_err());
    }

    #[test]
    fn generic_names_and_lookups() {
        let g = Labels::generic(3);
        assert_eq!(
            g.iter().collect::<Vec<_>>(),
            ["class_0", "class_1", "class_2"]
        );
        assert_eq!(g.get(7), "unknown");
        assert_eq!(Labels::imagenet().len(), 1000);
    }
}
